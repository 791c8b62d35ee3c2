#!/usr/bin/env python
"""Open a flashevolve HTML report in headless Chromium and check that every chart drew marks.

    python scripts/check_report.py REPORT.html [--screenshot OUT.png] [--json]

Chromium loads the file offline, runs its JavaScript under a virtual-time budget, and dumps the
resulting DOM.  Each chart placeholder (``div.chart[data-spec]``) must end with
``data-status="ok"`` and contain at least one drawn mark: an SVG element inside a Vega group of
role "mark" (axes, legends and titles do not count).  Prints one line per chart with its mark
count, writes a full-page screenshot, and exits 0 when all charts drew, 1 when one did not, 2
when Chromium is missing or failed.  Set FLASHEVOLVE_CHROMIUM to use a browser binary that is
not on PATH as ``chromium``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path

# Debian's Chromium, run as root in a closed network: no sandbox, and no background networking
# (otherwise it keeps dialling Google hosts and logs refused connections).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
             "track", "wbr"}  # fmt: skip
SHAPE_TAGS = {"path", "rect", "circle", "line", "text", "polygon", "polyline", "ellipse", "image"}


@dataclass
class ChartCheck:
    index: int
    chart: str
    run: str
    status: str
    marks: int

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.marks > 0


def find_chromium() -> str | None:
    override = os.environ.get("FLASHEVOLVE_CHROMIUM")
    if override:
        return override
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _MarkCounter(HTMLParser):
    """Walks the dumped DOM; counts shapes under Vega ``role-mark`` groups per chart div."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, int | None, bool]] = []  # tag, chart index, inside role-mark
        self.charts: list[ChartCheck] = []

    def _top(self) -> tuple[int | None, bool]:
        if not self.stack:
            return None, False
        _, chart, marked = self.stack[-1]
        return chart, marked

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        chart, marked = self._top()
        classes = a.get("class", "").split()
        if tag == "div" and "chart" in classes and "data-spec" in a:
            chart = len(self.charts)
            self.charts.append(
                ChartCheck(
                    chart,
                    a.get("data-chart", "?"),
                    a.get("data-run", "?"),
                    a.get("data-status", "pending"),
                    0,
                )  # fmt: skip
            )
        if tag == "g" and any(c.startswith("role-") for c in classes):
            # the innermost role decides: a data mark group, or an axis/legend/title group
            marked = "role-mark" in classes
        if tag in SHAPE_TAGS and marked and chart is not None:
            self.charts[chart].marks += 1
        if tag not in VOID_TAGS:
            self.stack.append((tag, chart, marked))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS and self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        # pop to the matching open tag; tolerate stray end tags
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return


def count_marks(dom: str) -> list[ChartCheck]:
    parser = _MarkCounter()
    parser.feed(dom)
    parser.close()
    return parser.charts


def _run_chromium(chromium: str, args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="fe-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def check_report(
    report: Path,
    screenshot: Path | None = None,
    *,
    budget_ms: int = 15000,
    timeout_s: float = 120.0,
    chromium: str | None = None,
) -> list[ChartCheck]:
    """Render ``report`` in headless Chromium; return one :class:`ChartCheck` per chart."""
    browser = chromium or find_chromium()
    if browser is None:
        raise FileNotFoundError("chromium not found (apt-get install -y chromium)")
    url = report.resolve().as_uri()
    budget = f"--virtual-time-budget={budget_ms}"
    dumped = _run_chromium(browser, [budget, "--dump-dom", url], timeout_s)
    if dumped.returncode != 0 or "<html" not in dumped.stdout:
        raise RuntimeError(
            f"chromium --dump-dom failed ({dumped.returncode}): {dumped.stderr[-2000:]}"
        )
    checks = count_marks(dumped.stdout)
    if screenshot is not None:
        height = 700 + 420 * max(1, len(checks))  # tall enough for the whole page
        shot = _run_chromium(
            browser,
            [budget, f"--screenshot={screenshot.resolve()}", f"--window-size=1400,{height}", url],
            timeout_s,
        )
        if shot.returncode != 0 or not screenshot.exists():
            raise RuntimeError(f"chromium --screenshot failed: {shot.stderr[-2000:]}")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the HTML report to check")
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="where to write a full-page PNG (default: REPORT.png)")  # fmt: skip
    parser.add_argument("--no-screenshot", action="store_true", help="skip the screenshot")
    parser.add_argument("--budget-ms", type=int, default=15000, help="virtual time for scripts")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"error: report {str(args.report)!r} does not exist", file=sys.stderr)
        return 2
    shot = None if args.no_screenshot else (args.screenshot or args.report.with_suffix(".png"))
    try:
        checks = check_report(args.report, shot, budget_ms=args.budget_ms)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ok = bool(checks) and all(c.ok for c in checks)
    if args.json:
        out = {"ok": ok, "screenshot": str(shot) if shot else None}
        out["charts"] = [asdict(c) for c in checks]
        print(json.dumps(out, indent=2))
    else:
        for c in checks:
            flag = "ok  " if c.ok else "FAIL"
            print(
                f"{flag} #{c.index:<2} {c.run:<20} {c.chart:<16} status={c.status:<8} marks={c.marks}"
            )
        print(f"{sum(c.ok for c in checks)}/{len(checks)} charts drew marks")
        if shot:
            print(f"screenshot: {shot}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
