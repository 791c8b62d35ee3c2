"""Per-endpoint views (built on :mod:`flashevolve.events.endpoints`): requests each endpoint
answered over time, and a small table of what each did.  They appear in the report and the
dashboard's charts for runs whose requests went to more than one endpoint (a router)."""

from __future__ import annotations

import html

import altair as alt
import polars as pl

from flashevolve.events import frames as fr
from flashevolve.events.endpoints import endpoint_table, served_over_time
from flashevolve.views.charts import AnyChart, _no_data, _title, _values, auto_window


def several_endpoints(df: pl.DataFrame) -> bool:
    """True when the run's requests ended at more than one endpoint."""
    return endpoint_table(df).height > 1


def endpoints_chart(df: pl.DataFrame, window_s: float | None = None) -> AnyChart:
    """Requests answered per minute by each endpoint (stacked): where the traffic went, and
    how it moved when one was taken out and came back."""
    sim = fr.is_simulated(df)
    window_s = window_s or auto_window(df)
    data = served_over_time(df, window_s)
    if data.is_empty():
        return _no_data("Requests per endpoint", sim)
    data = data.with_columns((pl.col("requests") * 60.0 / window_s).alias("per_min"))
    chart: alt.Chart = (  # altair types its mark_*/encode chain as Any
        alt.Chart(
            _values(data),
            title=_title(
                "Requests per endpoint", sim, f"answered per minute ({window_s:g} s bins)"
            ),
        )
        .mark_area(interpolate="step-after")
        .encode(
            x=alt.X("t_start:Q", title="run time (s)"),
            y=alt.Y("per_min:Q", title="requests / min", stack="zero"),
            color=alt.Color("endpoint:N", title="endpoint"),
            tooltip=[
                alt.Tooltip("t_start:Q", title="from (s)", format=".0f"),
                alt.Tooltip("endpoint:N"),
                alt.Tooltip("requests:Q", title="answered"),
            ],
        )
    )
    return chart.properties(width=560, height=200).interactive(bind_y=False)


def endpoints_table_html(df: pl.DataFrame) -> str:
    """The per-endpoint table of one run as HTML (empty when there is nothing to show)."""
    table = endpoint_table(df)
    if table.is_empty():
        return ""
    head = (
        "<tr><th>endpoint</th><th>answered</th><th>failed</th><th>cancelled</th>"
        "<th>moved away</th><th>taken out</th><th>tokens</th><th>mean latency (s)</th></tr>"
    )
    rows = []
    for r in table.iter_rows(named=True):
        latency = "–" if r["mean_latency_s"] is None else f"{r['mean_latency_s']:.2f}"
        rows.append(
            f"<tr><td>{html.escape(r['endpoint'])}</td><td>{r['requests']}</td>"
            f"<td>{r['failed']}</td><td>{r['cancelled']}</td><td>{r['moved_away']}</td>"
            f"<td>{r['downs']}</td><td>{r['prompt_tokens'] + r['completion_tokens']}</td>"
            f"<td>{latency}</td></tr>"
        )
    return f'<table class="summary">{head}{"".join(rows)}</table>'
