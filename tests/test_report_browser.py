"""The HTML report renders offline in a real browser: every chart draws SVG marks.

Runs ``scripts/check_report.py`` (headless Debian Chromium) on a report of two synthetic runs
and one empty run.  Skipped when no Chromium binary is installed (apt-get install -y chromium).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flashevolve.events import frames as fr
from flashevolve.examples import example_events
from flashevolve.views.report import write_report

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_report.py"

sys.path.insert(0, str(SCRIPT.parent))
from check_report import count_marks, find_chromium  # noqa: E402

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium is not installed (apt-get install -y chromium); browser check skipped",
)


@needs_chromium
def test_report_charts_draw_marks_in_headless_chromium(tmp_path):
    runs = {
        "sync baseline": example_events("sync", seed=3),
        "async": example_events("async", seed=3),
        "not started": fr.empty_events(),
    }
    report = write_report(tmp_path / "report.html", runs, title="browser check")
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(report), "--screenshot", str(shot), "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    charts = result["charts"]
    # the comparison; per run whose server reported its load and whose admissions reported the
    # artifact's size, seven charts; five for the empty one
    assert len(charts) == 1 + 7 + 7 + 5
    for chart in charts:
        assert chart["status"] == "ok", chart
        assert chart["marks"] > 0, chart
    by_key = {(c["run"], c["chart"]): c["marks"] for c in charts}
    # the empty run draws exactly its "no data yet" text mark per chart
    assert all(by_key[("not started", name)] == 1 for name in ("throughput", "lineage"))
    # a real run draws far more than a placeholder
    assert by_key[("async", "lineage")] > 5
    assert by_key[("all", "score_vs_time")] > 5
    assert by_key[("async", "server_load")] >= 2  # a line for running, one for waiting
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mark_counter_ignores_axes_and_counts_marks():
    dom = (
        '<html><body><div class="chart" data-spec="spec-0" data-chart="c" data-run="r" '
        'data-status="ok"><svg><g class="mark-group role-axis"><g class="mark-text '
        'role-axis-label"><text>1</text><text>2</text></g></g>'
        '<g class="mark-symbol role-mark"><path d="M0"></path><path d="M1"/></g></svg></div>'
        '<div class="chart" data-spec="spec-1" data-chart="d" data-run="r"><br></div>'
        "</body></html>"
    )
    first, second = count_marks(dom)
    assert (first.chart, first.status, first.marks, first.ok) == ("c", "ok", 2, True)
    assert (second.status, second.marks, second.ok) == ("pending", 0, False)
