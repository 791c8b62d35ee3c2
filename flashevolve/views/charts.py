"""Altair charts of a run (or of several runs side by side), built on :mod:`flashevolve.events.frames`.

Each function takes an event frame -- or a ``{run name: event frame}`` dict where runs are
compared -- and returns an Altair chart whose data is embedded inline (no URLs), so the chart
renders in a notebook, in the offline HTML report, and through vl-convert to PNG/SVG.  A chart
with nothing to show yet still renders: one text mark and a title ending in "no data yet".
Runs driven by the serving simulator say "(simulated)" in their titles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import altair as alt
import polars as pl

from flashevolve.events import frames as fr
from flashevolve.events.schema import Kind
from flashevolve.views.renderer import use_offline_charts

use_offline_charts()  # in a notebook, charts draw without a CDN (see views/renderer.py)

#: Most points embedded for one series; longer step series are reduced to per-bucket peaks so
#: a long run's report stays a few MB (the reduction is named in the chart's subtitle).
MAX_POINTS = 4000

Runs = Mapping[str, pl.DataFrame] | pl.DataFrame
#: alt.layer() is typed as LayerChart | FacetChart (it facets when every layer has the same facet
#: encoding; ours never do), so a chart function's result is any of the three to a type checker
AnyChart = alt.Chart | alt.LayerChart | alt.FacetChart

STALE_COLORS = {
    "accept": "#4c78a8",
    "patch": "#f58518",
    "merged": "#54a24b",
    "discard": "#e45756",
}
EDGE_DASH = {
    "parent": [1, 0],
    "patch": [6, 3],
    "merge": [2, 2],
    "patched_from": [1, 3],
}


# -- shared pieces ---------------------------------------------------------------------------
def _values(df: pl.DataFrame) -> alt.Data:
    """Inline data: rows as plain dicts, so no URL and no max-rows transformer gets involved."""
    # altair generates its schema classes without annotations
    return alt.Data(values=df.to_dicts())  # type: ignore[no-untyped-call]


def _title(text: str, simulated: bool, subtitle: str | None = None) -> alt.TitleParams:
    label = f"{text} (simulated)" if simulated else text
    if subtitle:
        return alt.TitleParams(label, subtitle=subtitle, anchor="start")
    return alt.TitleParams(label, anchor="start")


def _no_data(text: str, simulated: bool = False, width: int = 560, height: int = 200) -> alt.Chart:
    """A chart that renders with no data: a single centred message and a 'no data yet' title."""
    msg = pl.DataFrame({"message": ["no data yet"]})
    chart: alt.Chart = (  # altair types its mark_*/encode chain as Any
        alt.Chart(_values(msg), title=_title(f"{text} — no data yet", simulated))
        .mark_text(size=16, color="#888")
        .encode(text=alt.Text("message:N"))
    )
    return chart.properties(width=width, height=height)


def _as_runs(runs: Runs, default: str = "run") -> dict[str, pl.DataFrame]:
    if isinstance(runs, pl.DataFrame):
        return {default: runs}
    return dict(runs)


def _any_simulated(runs: Mapping[str, pl.DataFrame]) -> bool:
    return any(fr.is_simulated(df) for df in runs.values())


def _thin_steps(series: pl.DataFrame, value: str, limit: int = MAX_POINTS) -> pl.DataFrame:
    """Reduce a long step series to at most ``limit`` points, keeping each bucket's peak."""
    if series.height <= limit:
        return series
    lo, hi = float(series["ts"].min()), float(series["ts"].max())  # type: ignore[arg-type]
    width = (hi - lo) / limit or 1.0
    return (
        series.with_columns(((pl.col("ts") - lo) / width).floor().alias("_b"))
        .group_by("_b", maintain_order=True)
        .agg(pl.col("ts").first(), pl.col(value).max())
        .drop("_b")
    )


# -- charts ----------------------------------------------------------------------------------
#: Bucket widths the throughput chart picks from when none is given.
WINDOW_CHOICES = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def auto_window(df: pl.DataFrame, max_buckets: int = 20) -> float:
    """The smallest round bucket width that splits the run into at most ``max_buckets``."""
    end = fr.run_end(df)
    for width in WINDOW_CHOICES:
        if end / width <= max_buckets:
            return width
    return WINDOW_CHOICES[-1]


def throughput_chart(df: pl.DataFrame, window_s: float | None = None) -> AnyChart:
    """Items finished per minute by each stage, plus proposals / accepted / validations per
    minute, in buckets of ``window_s`` seconds (default: picked by :func:`auto_window` so a
    short run still has a line).  Zoom and pan on the time axis."""
    sim = fr.is_simulated(df)
    window_s = window_s or auto_window(df)
    data = fr.throughput(df, window_s=window_s)
    if data.is_empty():
        return _no_data("Throughput per minute", sim)
    data = data.with_columns(
        ((pl.col("t_start") + pl.col("t_end")) / 2).alias("t_mid"),
        pl.when(pl.col("group") == "stage")
        .then(pl.concat_str(pl.col("series"), pl.lit(" done")))
        .otherwise(pl.col("series"))
        .alias("label"),
    )
    legend = alt.selection_point(fields=["label"], bind="legend")
    base = alt.Chart(
        _values(data),
        title=_title(
            "Throughput per minute",
            sim,
            f"stage items done and pipeline events, {window_s:g}-second buckets "
            "(click the legend to highlight)",
        ),
    ).encode(
        x=alt.X("t_mid:Q", title="run time (s)"),
        y=alt.Y("per_min:Q", title="per minute"),
        color=alt.Color("label:N", title="series"),
        strokeDash=alt.StrokeDash("group:N", title="kind"),
        opacity=alt.condition(legend, alt.value(1.0), alt.value(0.15)),
        tooltip=[
            alt.Tooltip("label:N", title="series"),
            alt.Tooltip("t_start:Q", title="from (s)", format=".1f"),
            alt.Tooltip("t_end:Q", title="to (s)", format=".1f"),
            alt.Tooltip("count:Q", title="count"),
            alt.Tooltip("per_min:Q", title="per minute", format=".2f"),
        ],
    )
    chart = alt.layer(base.mark_line(), base.mark_point(filled=True, size=30)).add_params(legend)
    return chart.properties(width=560, height=240).interactive(bind_y=False)


def concurrency_chart(df: pl.DataFrame) -> AnyChart:
    """Backend requests over run time (step lines): at the server, and waiting in the client
    (held back by its cap on requests in flight, or in a retry's backoff; zero for a client that
    sends everything at once); zoom and pan on time."""
    sim = fr.is_simulated(df)
    data = fr.concurrency(df)
    if data.is_empty():
        return _no_data("Backend requests", sim)
    end = fr.run_end(df)
    last = data.tail(1)
    if end > float(last["ts"][0]):
        # carry the last value to the end of the run so the step line covers the whole run
        data = pl.concat([data, last.with_columns(pl.lit(end).alias("ts"))])
    subtitle = "value holds until the next request event"
    waiting_peak = data["in_client"].max()
    waiting = isinstance(waiting_peak, int) and waiting_peak != 0
    series = ["at_server"] + (["in_client"] if waiting else [])
    long = data.unpivot(index="ts", on=series, variable_name="series", value_name="requests")
    if data.height > MAX_POINTS:
        long = pl.concat(
            _thin_steps(long.filter(pl.col("series") == s), "requests").with_columns(
                pl.lit(s).alias("series")
            )
            for s in series
        ).select("ts", "series", "requests")
        subtitle = f"peak per time slice ({MAX_POINTS} slices)"
    names = {"at_server": "at the server", "in_client": "waiting in the client"}
    long = long.with_columns(pl.col("series").replace_strict(names, default=pl.col("series")))
    chart: alt.Chart = (  # altair types its mark_*/encode chain as Any
        alt.Chart(_values(long), title=_title("Backend requests", sim, subtitle))
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("ts:Q", title="run time (s)"),
            y=alt.Y("requests:Q", title="requests"),
            color=alt.Color("series:N", title=None, sort=list(names.values())),
            tooltip=[
                alt.Tooltip("ts:Q", title="time (s)", format=".2f"),
                alt.Tooltip("series:N"),
                alt.Tooltip("requests:Q"),
            ],
        )
    )
    return chart.properties(width=560, height=200).interactive(bind_y=False)


def server_load_chart(df: pl.DataFrame) -> AnyChart:
    """What the servers said about their load over run time: requests running and waiting (the
    knee shows where waiting leaves zero); one line per endpoint and series."""
    sim = fr.is_simulated(df)
    data = fr.backend_load(df)
    if data.is_empty():
        return _no_data("Server load", sim)
    long = data.unpivot(
        index=["ts", "endpoint"], on=["running", "waiting"], variable_name="series"
    ).rename({"value": "requests"})
    encoding: dict[str, Any] = {}
    if data["endpoint"].n_unique() > 1:
        encoding["strokeDash"] = alt.StrokeDash("endpoint:N", title="server")
    chart: alt.Chart = (  # altair types its mark_*/encode chain as Any
        alt.Chart(
            _values(long),
            title=_title("Server load", sim, "as the server reports it (requests)"),
        )
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("ts:Q", title="run time (s)"),
            y=alt.Y("requests:Q", title="requests"),
            color=alt.Color("series:N", title=None, sort=["running", "waiting"]),
            tooltip=[
                alt.Tooltip("ts:Q", title="time (s)", format=".1f"),
                alt.Tooltip("endpoint:N", title="server"),
                alt.Tooltip("series:N"),
                alt.Tooltip("requests:Q"),
            ],
            **encoding,
        )
    )
    return chart.properties(width=560, height=200).interactive(bind_y=False)


def stage_breakdown_chart(df: pl.DataFrame) -> AnyChart:
    """Share of busy time per stage (bars), with busy/wait seconds in the tooltip."""
    sim = fr.is_simulated(df)
    data = fr.stage_time_breakdown(df)
    if data.is_empty():
        return _no_data("Time per stage", sim, height=120)
    order = data["stage"].to_list()
    base = alt.Chart(
        _values(data),
        title=_title("Time per stage", sim, "share of busy time (sum of item processing times)"),
    ).encode(
        y=alt.Y("stage:N", sort=order, title="stage"),
        x=alt.X("share:Q", title="share of busy time", axis=alt.Axis(format="%")),
        tooltip=[
            alt.Tooltip("stage:N"),
            alt.Tooltip("items:Q", title="items done"),
            alt.Tooltip("busy_s:Q", title="busy (s)", format=".1f"),
            alt.Tooltip("mean_s:Q", title="mean per item (s)", format=".2f"),
            alt.Tooltip("wait_s:Q", title="queue wait (s)", format=".1f"),
            alt.Tooltip("share:Q", title="share", format=".1%"),
        ],
    )
    bars = base.mark_bar().encode(color=alt.Color("stage:N", sort=order, legend=None))
    labels = base.mark_text(align="left", dx=3).encode(text=alt.Text("share:Q", format=".0%"))
    return alt.layer(bars, labels).properties(width=480, height=max(60, 28 * len(order)))


def score_vs_time_chart(runs: Runs, *, x: str = "ts") -> AnyChart:
    """Best admitted validation score over run time, one line per run (e.g. sync vs async).

    Each line steps up at the admission that set a new best and runs on to the end of its run;
    dots mark every admission.  Click a legend entry to highlight a run; zoom on time.
    """
    named = _as_runs(runs)
    sim = _any_simulated(named)
    rows = []
    for name, df in named.items():
        best = fr.best_score_over_time(df)
        if best.is_empty():
            continue
        end = max(fr.run_end(df), float(best["ts"].max()))  # type: ignore[arg-type]
        tail = best.tail(1).with_columns(
            pl.lit(end).alias("ts"), pl.lit(None, dtype=pl.Utf8).alias("artifact_id")
        )
        tail = tail.with_columns(pl.lit(None, dtype=pl.Float64).alias("score"))
        rows.append(pl.concat([best, tail]).with_columns(pl.lit(name).alias("run")))
    if not rows:
        return _no_data("Best validation score over time", sim)
    data = pl.concat(rows)
    legend = alt.selection_point(fields=["run"], bind="legend")
    base = alt.Chart(
        _values(data),
        title=_title(
            "Best validation score over time",
            sim,
            "best admitted candidate so far; dots are admissions",
        ),
    ).encode(
        x=alt.X(f"{x}:Q", title="run time (s)"),
        color=alt.Color("run:N", title="run"),
        opacity=alt.condition(legend, alt.value(1.0), alt.value(0.15)),
    )
    line = base.mark_line(interpolate="step-after").encode(
        y=alt.Y("best_score:Q", title="validation score", scale=alt.Scale(zero=False))
    )
    dots = (
        base.transform_filter("datum.score != null")
        .mark_point(filled=True, size=40)
        .encode(
            y=alt.Y("score:Q"),
            tooltip=[
                alt.Tooltip("run:N"),
                alt.Tooltip("artifact_id:N", title="artifact"),
                alt.Tooltip("ts:Q", title="admitted at (s)", format=".1f"),
                alt.Tooltip("score:Q", title="val score", format=".4f"),
                alt.Tooltip("best_score:Q", title="best so far", format=".4f"),
            ],
        )
    )
    chart = alt.layer(line, dots).add_params(legend)
    return chart.properties(width=560, height=260).interactive(bind_y=False)


def staleness_chart(df: pl.DataFrame, *, lag: str = "lag") -> AnyChart:
    """How stale work was handled: counts of accept / patch / merged / discard by lag.

    ``lag`` picks the axis: "lag" (pool versions behind) or "frontier_lag" (frontier versions).
    """
    if lag not in ("lag", "frontier_lag"):
        raise ValueError(f"lag must be 'lag' or 'frontier_lag', got {lag!r}")
    sim = fr.is_simulated(df)
    data = fr.staleness(df)
    if data.is_empty():
        return _no_data("Stale work decisions", sim)
    counts = (
        data.with_columns(pl.col(lag).fill_null(-1), pl.col("decision").fill_null("unknown"))
        .group_by(lag, "decision")
        .agg(pl.len().alias("count"))
        .sort(lag, "decision")
    )
    decisions = [d for d in STALE_COLORS if d in set(counts["decision"].to_list())]
    decisions += sorted(set(counts["decision"].to_list()) - set(decisions))
    palette = [STALE_COLORS.get(d, "#999999") for d in decisions]
    axis_title = "pool versions behind (lag)" if lag == "lag" else "frontier versions behind"
    chart: alt.Chart = (  # altair types its mark_*/encode chain as Any
        alt.Chart(
            _values(counts),
            title=_title("Stale work decisions", sim, "what the staleness policy did, by lag"),
        )
        .mark_bar()
        .encode(
            x=alt.X(f"{lag}:O", title=axis_title, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("count:Q", title="items"),
            color=alt.Color(
                "decision:N", title="decision", scale=alt.Scale(domain=decisions, range=palette)
            ),
            tooltip=[
                alt.Tooltip(f"{lag}:O", title="lag"),
                alt.Tooltip("decision:N"),
                alt.Tooltip("count:Q", title="items"),
            ],
        )
    )
    return chart.properties(width=420, height=220)


def lineage_chart(df: pl.DataFrame, *, x: str = "time") -> AnyChart:
    """The candidate tree: each admitted artifact at (admission time or pool version, score),
    edges parent -> child; patch, merge and patched-from edges are dashed differently.
    Rolled-back speculative candidates are drawn hollow."""
    if x not in ("time", "version"):
        raise ValueError(f"x must be 'time' or 'version', got {x!r}")
    sim = fr.is_simulated(df)
    nodes = fr.artifacts(df).filter(pl.col("score").is_not_null())
    if nodes.is_empty():
        return _no_data("Candidate lineage", sim, height=260)
    xcol, xtitle = (
        ("admitted_ts", "admitted at (s)") if x == "time" else ("pool_version", "pool version")
    )
    nodes = _lineage_nodes(nodes)
    pos = nodes.select(
        "artifact_id", pl.col(xcol).cast(pl.Float64).alias("x"), pl.col("score").alias("y")
    )
    edges = fr.lineage_edges(df)
    edges = edges.join(
        pos.rename({"artifact_id": "parent_id", "x": "x0", "y": "y0"}), on="parent_id"
    ).join(pos.rename({"artifact_id": "child_id", "x": "x1", "y": "y1"}), on="child_id")
    title = _title("Candidate lineage", sim, "parent → child; dashed: patch / merge edges")
    layers: list[alt.Chart] = []
    if not edges.is_empty():
        layers.append(_lineage_edge_layer(edges, xtitle))
    layers.append(_lineage_node_layer(nodes, xcol, xtitle))
    return alt.layer(*layers, title=title).properties(width=560, height=300)


def _lineage_nodes(nodes: pl.DataFrame) -> pl.DataFrame:
    """The artifacts frame as the chart's points: a status, and lists as tooltip text."""
    return nodes.with_columns(
        pl.col("origin").fill_null("speculative"),
        pl.col("parents").list.join(", ").alias("parents_text"),
        pl.col("patched_from").list.join(", ").alias("patched_from_text"),
        pl.when(pl.col("tombstoned"))
        .then(pl.lit("rolled back"))
        .when(pl.col("speculative") & ~pl.col("confirmed") & ~pl.col("admitted"))
        .then(pl.lit("speculative"))
        .otherwise(pl.lit("admitted"))
        .alias("status"),
    ).drop("parents", "patched_from")


def _lineage_edge_layer(edges: pl.DataFrame, xtitle: str) -> alt.Chart:
    styles = [s for s in EDGE_DASH if s in set(edges["edge"].to_list())]
    chart: alt.Chart = (
        alt.Chart(_values(edges))
        .mark_rule(color="#999", strokeWidth=1.2)
        .encode(
            x=alt.X("x0:Q", title=xtitle),
            y=alt.Y("y0:Q", title="validation score", scale=alt.Scale(zero=False)),
            x2="x1:Q",
            y2="y1:Q",
            strokeDash=alt.StrokeDash(
                "edge:N",
                title="edge",
                scale=alt.Scale(domain=styles, range=[EDGE_DASH[s] for s in styles]),
            ),
            tooltip=[
                alt.Tooltip("parent_id:N", title="parent"),
                alt.Tooltip("child_id:N", title="child"),
                alt.Tooltip("edge:N"),
            ],
        )
    )
    return chart


def _lineage_node_layer(nodes: pl.DataFrame, xcol: str, xtitle: str) -> alt.Chart:
    zoom = alt.selection_interval(bind="scales")
    chart: alt.Chart = (
        alt.Chart(_values(nodes))
        .mark_point(size=70, strokeWidth=2)
        .encode(
            x=alt.X(f"{xcol}:Q", title=xtitle, scale=alt.Scale(padding=12)),
            y=alt.Y("score:Q", title="validation score", scale=alt.Scale(zero=False, padding=12)),
            color=alt.Color("origin:N", title="origin"),
            fill=alt.condition(
                "datum.status == 'rolled back'", alt.value("transparent"), alt.Color("origin:N")
            ),
            shape=alt.Shape("status:N", title="status"),
            tooltip=[
                alt.Tooltip("artifact_id:N", title="artifact"),
                alt.Tooltip("origin:N"),
                alt.Tooltip("parents_text:N", title="parents"),
                alt.Tooltip("patched_from_text:N", title="patched from items"),
                alt.Tooltip("score:Q", title="val score", format=".4f"),
                alt.Tooltip("pool_version:Q", title="pool version"),
                alt.Tooltip("admitted_ts:Q", title="admitted at (s)", format=".1f"),
                alt.Tooltip("status:N"),
            ],
        )
        .add_params(zoom)
    )
    return chart


def dashboard_charts(df: pl.DataFrame, window_s: float | None = None) -> dict[str, AnyChart]:
    """Every single-run chart of one run, keyed by a short name (used by the report).
    ``server_load`` is there only when a server reported its load (a hosted API does not),
    ``endpoints`` only when requests went to more than one endpoint."""
    charts = {
        "throughput": throughput_chart(df, window_s=window_s),
        "concurrency": concurrency_chart(df),
        "stage_breakdown": stage_breakdown_chart(df),
        "staleness": staleness_chart(df),
        "lineage": lineage_chart(df),
    }
    if df.height and (df["kind"] == str(Kind.BACKEND_LOAD)).any():  # (not the frame twice)
        charts["server_load"] = server_load_chart(df)
    from flashevolve.views.endpoint_charts import endpoints_chart, several_endpoints

    if several_endpoints(df):  # a router spread the requests
        charts["endpoints"] = endpoints_chart(df, window_s=window_s)
    from flashevolve.events import edits
    from flashevolve.views.edit_charts import artifact_size_chart, operations_chart

    if not edits.artifact_sizes(df).is_empty():
        charts["artifact_size"] = artifact_size_chart(df)
    if not edits.operations(df).is_empty():
        charts["operations"] = operations_chart(df)
    return charts


def chart_spec(chart: Any) -> dict[str, Any]:
    """The Vega-Lite spec of a chart as a plain dict (validated by Altair)."""
    spec: dict[str, Any] = chart.to_dict()
    return spec


__all__ = [
    "MAX_POINTS",
    "auto_window",
    "chart_spec",
    "concurrency_chart",
    "dashboard_charts",
    "lineage_chart",
    "score_vs_time_chart",
    "server_load_chart",
    "stage_breakdown_chart",
    "staleness_chart",
    "throughput_chart",
]
