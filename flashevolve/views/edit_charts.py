"""Charts of what admissions changed (built on :mod:`flashevolve.events.edits`): the artifact's
size over time, and edit operations by type and outcome.  Both appear in the report and the
dashboard only for runs whose workflow records them (ACE does; GEPA records sizes)."""

from __future__ import annotations

import altair as alt
import polars as pl

from flashevolve.events import edits
from flashevolve.events import frames as fr
from flashevolve.views.charts import AnyChart, _no_data, _title, _values

STATUS_COLORS = {"applied": "#54a24b", "rejected": "#e45756"}


def artifact_size_chart(df: pl.DataFrame) -> AnyChart:
    """The admitted artifact's size after each admission (ACE: playbook bullets)."""
    sim = fr.is_simulated(df)
    data = edits.artifact_sizes(df)
    if data.is_empty():
        return _no_data("Artifact size", sim)
    unit = str(data["size_unit"].drop_nulls().first() or "size")
    chart: alt.Chart = (  # altair types its mark_*/encode chain as Any
        alt.Chart(
            _values(data), title=_title("Artifact size", sim, f"after each admission ({unit})")
        )
        .mark_line(interpolate="step-after", point=True)
        .encode(
            x=alt.X("ts:Q", title="run time (s)"),
            y=alt.Y("size:Q", title=unit),
            tooltip=[
                alt.Tooltip("ts:Q", title="time (s)", format=".1f"),
                alt.Tooltip("artifact_id:N", title="artifact"),
                alt.Tooltip("size:Q", title=unit),
            ],
        )
    )
    return chart.properties(width=560, height=200)


def operations_chart(df: pl.DataFrame) -> AnyChart:
    """Edit operations by type, split by what became of them."""
    sim = fr.is_simulated(df)
    data = edits.operations(df)
    if data.is_empty():
        return _no_data("Edit operations", sim)
    counts = data.group_by("type", "status").agg(pl.len().alias("operations"))
    chart: alt.Chart = (  # altair types its mark_*/encode chain as Any
        alt.Chart(_values(counts), title=_title("Edit operations", sim, "by type and outcome"))
        .mark_bar()
        .encode(
            x=alt.X("type:N", title="operation"),
            y=alt.Y("operations:Q", title="operations"),
            color=alt.Color(
                "status:N",
                title=None,
                scale=alt.Scale(domain=list(STATUS_COLORS), range=list(STATUS_COLORS.values())),
            ),
            tooltip=["type:N", "status:N", "operations:Q"],
        )
    )
    return chart.properties(width=360, height=200)
