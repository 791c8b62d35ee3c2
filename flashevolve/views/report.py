"""The offline HTML report and chart export.

:func:`write_report` writes ONE self-contained HTML file: the Vega, Vega-Lite and Vega-Embed
JavaScript is inlined (bundled by vl-convert, no CDN), and every chart's data is embedded in its
spec, so the file opens on a machine with no network.  :func:`save_chart` exports a chart to
PNG, SVG or PDF through vl-convert's embedded JavaScript engine, also offline.
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import json
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import altair as alt
import polars as pl

from flashevolve.errors import UserError
from flashevolve.events import frames as fr
from flashevolve.events import metrics
from flashevolve.views import charts as ch
from flashevolve.views.endpoint_charts import endpoints_table_html

EXPORT_SUFFIXES = (".png", ".svg", ".pdf", ".html")

#: The titles of the per-run report sections, in page order.
SECTIONS = {
    "throughput": "Throughput",
    "concurrency": "Backend concurrency",
    "server_load": "Server load",
    "endpoints": "Endpoints",
    "stage_breakdown": "Where the time went",
    "staleness": "Stale work",
    "lineage": "Candidate lineage",
    "artifact_size": "Artifact size",
    "operations": "Edit operations",
}


def _vl_convert() -> ModuleType:
    try:
        import vl_convert
    except ImportError as exc:  # a core dependency; only a trimmed install lacks it
        raise UserError(
            "exporting charts or writing the offline report needs vl-convert: "
            "pip install vl-convert-python"
        ) from exc
    return vl_convert


def vegalite_version() -> str | None:
    """The Vega-Lite version Altair writes specs for, as vl-convert names it ("6.4"), if known."""
    major_minor = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return major_minor if major_minor in _vl_convert().get_vegalite_versions() else None


@functools.cache
def javascript_bundle() -> str:
    """Vega + Vega-Lite + Vega-Embed as one script that defines ``window.vegaEmbed``."""
    vlc = _vl_convert()
    bundle: str = vlc.javascript_bundle(vl_version=vegalite_version())
    # an inline script ends at the first "</script", wherever it is, so never let one through
    return bundle.replace("</script", "<\\/script")


def _json_for_script(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def _summary_rows(runs: Mapping[str, pl.DataFrame]) -> str:
    """A small fact table per run: the objective (accepted per minute, best score) first, then
    what the server saw -- requests at the server apart from requests the client held back, and
    utilization (achieved over attainable throughput, when the backend declares the latter)."""
    rows = []
    for name, df in runs.items():
        info = fr.run_info(df)
        facts = metrics.summary(df)
        best = facts["best_score"]
        util = facts["utilization"]
        cells = [
            html.escape(name),
            html.escape(str(info.get("mode", "–"))),
            "yes" if info.get("simulated") else "no",
            f"{fr.run_end(df):.1f}",
            f"{facts['accepted_per_min']:.3f}",
            "–" if best is None else f"{best:.4f}",
            str(facts["accepted"]),
            str(facts["requests"]),
            f"{facts['mean_concurrency']:.1f} / {facts['peak_concurrency']}",
            f"{facts['mean_in_client']:.1f} / {facts['peak_in_client']}",
            "–" if util is None else f"{util:.1%}",
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(rows)


_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px;
       color: #222; max-width: 1280px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
table.summary { border-collapse: collapse; margin: 1em 0; }
table.summary td, table.summary th { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
table.summary td:first-child, table.summary th:first-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 24px; }
.chart { min-height: 120px; }
.chart[data-status="error"] { color: #b00; }
"""

_EMBED = """
(function () {
  var opts = {renderer: "svg", actions: {export: true, source: false, compiled: false,
              editor: false}};
  document.querySelectorAll("div.chart[data-spec]").forEach(function (el) {
    var spec = JSON.parse(document.getElementById(el.dataset.spec).textContent);
    vegaEmbed(el, spec, opts).then(function () { el.dataset.status = "ok"; })
      .catch(function (err) {
        el.dataset.status = "error";
        el.textContent = "This chart failed to render: " + err;
      });
  });
})();
"""


class _Page:
    """Collects chart placeholders and their specs while the page is assembled."""

    def __init__(self) -> None:
        self.specs: list[tuple[str, dict[str, Any]]] = []

    def chart(self, chart: Any, name: str, run: str) -> str:
        idx = len(self.specs)
        spec_id = f"spec-{idx}"
        self.specs.append((spec_id, chart.to_dict()))
        return (
            f'<div class="chart" id="chart-{idx}" data-spec="{spec_id}" '
            f'data-chart="{html.escape(name)}" data-run="{html.escape(run)}"></div>'
        )

    def spec_scripts(self) -> str:
        return "\n".join(
            f'<script type="application/json" id="{sid}">{_json_for_script(spec)}</script>'
            for sid, spec in self.specs
        )


def render_report(
    runs: Mapping[str, pl.DataFrame] | pl.DataFrame,
    title: str = "flashevolve run report",
    *,
    window_s: float | None = None,
) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    named = {"run": runs} if isinstance(runs, pl.DataFrame) else dict(runs)
    page = _Page()
    simulated = any(fr.is_simulated(df) for df in named.values())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{javascript_bundle()}</script>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">generated {_dt.datetime.now().isoformat(timespec="seconds")} · '
        f"{len(named)} run(s)"
        + (" · <b>simulated</b>: timings come from the serving simulator" if simulated else "")
        + "</p>",
        '<table class="summary"><tr><th>run</th><th>mode</th><th>simulated</th>'
        "<th>duration (s)</th><th>accepted/min</th><th>best val score</th><th>accepted</th>"
        "<th>requests</th><th>at server, mean / peak</th><th>waiting in client, mean / peak</th>"
        "<th>server utilization</th></tr>",
        _summary_rows(named),
        "</table>",
        "<h2>Best score over time</h2>",
        page.chart(ch.score_vs_time_chart(named), "score_vs_time", "all"),
    ]
    for name, df in named.items():
        parts.append(f"<h2>Run: {html.escape(name)}</h2>")
        parts.append('<div class="grid">')
        for key, chart in ch.dashboard_charts(df, window_s=window_s).items():
            table = endpoints_table_html(df) if key == "endpoints" else ""
            parts.append(
                f"<section><h3>{SECTIONS[key]}</h3>{page.chart(chart, key, name)}{table}</section>"
            )
        parts.append("</div>")
    parts.append(page.spec_scripts())
    parts.append(f"<script>{_EMBED}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    path: str | Path,
    runs: Mapping[str, pl.DataFrame] | pl.DataFrame,
    title: str = "flashevolve run report",
    *,
    window_s: float | None = None,
) -> Path:
    """Write one self-contained, offline HTML report of one or more runs; returns the path.

    ``runs`` maps a run name to its event frame (``evolver.events``); a single frame is named
    "run".  The page has a fact table, the best-score-over-time comparison of all runs, then per
    run: throughput, backend concurrency, time per stage, stale-work decisions and lineage.
    """
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"report path {str(out)!r} must end in .html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(runs, title, window_s=window_s), encoding="utf-8")
    return out


def save_chart(chart: Any, path: str | Path, *, scale: float = 2.0) -> Path:
    """Export one chart offline: .png (``scale`` x pixel density), .svg, .pdf or .html."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise UserError(
            f"cannot export a chart to {str(out)!r}: use one of {', '.join(EXPORT_SUFFIXES)}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        page = _Page()
        div = page.chart(chart, "chart", "chart")
        out.write_text(
            '<!DOCTYPE html><html><head><meta charset="utf-8">'
            f"<script>{javascript_bundle()}</script></head><body>{div}"
            f"{page.spec_scripts()}<script>{_EMBED}</script></body></html>",
            encoding="utf-8",
        )
        return out
    vlc = _vl_convert()
    spec = chart.to_dict()
    version = vegalite_version()
    if suffix == ".png":
        out.write_bytes(vlc.vegalite_to_png(spec, vl_version=version, scale=scale))
    elif suffix == ".pdf":
        out.write_bytes(vlc.vegalite_to_pdf(spec, vl_version=version))
    else:
        out.write_text(vlc.vegalite_to_svg(spec, vl_version=version), encoding="utf-8")
    return out


__all__ = ["javascript_bundle", "render_report", "save_chart", "vegalite_version", "write_report"]
