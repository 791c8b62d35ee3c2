"""Derived Polars frames: the event log reshaped into tables that charts and metrics read.

Every function here is a pure function of the event frame (``EventLog.frame()`` or a frame read
back from a JSON-lines log).  None of them computes summary scalars -- those live in
:mod:`flashevolve.events.metrics` and are built on these series.  Every function accepts an empty
frame (a run that has not emitted anything yet) and then returns an empty frame with the same
columns it would have otherwise, so a chart or a dashboard can be drawn before the first event.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import polars as pl

from flashevolve.events.frame_schemas import (
    ARTIFACTS_SCHEMA,
    BACKEND_LOAD_SCHEMA,
    BEST_SCHEMA,
    BREAKDOWN_SCHEMA,
    CONCURRENCY_SCHEMA,
    REQUESTS_SCHEMA,
    STALENESS_SCHEMA,
    THROUGHPUT_SCHEMA,
)
from flashevolve.events.schema import SCHEMA, Kind

REQUEST_TERMINAL = {
    str(Kind.REQUEST_FINISHED): "finished",
    str(Kind.REQUEST_FAILED): "failed",
    str(Kind.REQUEST_CANCELLED): "cancelled",
}

PIPELINE_SERIES = {
    str(Kind.PROPOSAL_MADE): "proposals",
    str(Kind.ADMITTED): "accepted",
    str(Kind.VALIDATION_FINISHED): "validations",
}


# -- helpers ---------------------------------------------------------------------------------
def empty_events() -> pl.DataFrame:
    """An empty event frame with the canonical schema."""
    return pl.DataFrame(schema=SCHEMA)


def _empty(schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def _of(df: pl.DataFrame, *kinds: str) -> pl.DataFrame:
    wanted = [str(k) for k in kinds]
    return df.filter(pl.col("kind").is_in(wanted))


def _data(raw: str | None) -> dict[str, Any]:
    """Decode one ``data`` cell; a malformed cell reads as empty rather than failing a chart."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _str_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def run_info(df: pl.DataFrame) -> dict[str, Any]:
    """The ``data`` of the first ``run_started`` event (mode, workflow, task, seed, simulated)."""
    started = _of(df, Kind.RUN_STARTED)
    if started.is_empty():
        return {}
    return _data(started["data"][0])


def is_simulated(df: pl.DataFrame) -> bool:
    """True when the run was driven by the serving simulator (``run_started`` says so)."""
    return bool(run_info(df).get("simulated", False))


def run_end(df: pl.DataFrame) -> float:
    """Run-clock time of the last event (0.0 for an empty frame)."""
    if df.is_empty():
        return 0.0
    value = df["ts"].max()
    return float(value) if value is not None else 0.0  # type: ignore[arg-type]


def stage_order(df: pl.DataFrame) -> list[str]:
    """The run's stages in flow order: as the workflow declared them in ``run_started``; for a
    log without that, in order of first appearance."""
    declared = run_info(df).get("stages")
    known = [str(s) for s in declared] if isinstance(declared, list) else []
    seen = df.filter(pl.col("stage").is_not_null())["stage"].unique(maintain_order=True)
    return known + [s for s in seen.to_list() if s not in known]


def _rank(df: pl.DataFrame) -> dict[str, int]:
    return {s: i for i, s in enumerate(stage_order(df))}


# -- frames ----------------------------------------------------------------------------------
def requests(df: pl.DataFrame) -> pl.DataFrame:
    """One row per backend request: when it started and ended, tokens, stage, role, outcome.

    ``endpoint`` is where the request ended (behind a router: the endpoint that answered it, or
    the last one it was sent to), else where it started.

    A request with a start and no terminal event is ``in_flight`` (end and latency null).  The
    latency is the one the backend wrapper measured when present, else end - start.
    """
    started = _of(df, Kind.REQUEST_STARTED).filter(pl.col("request_id").is_not_null())
    ended = _of(df, *REQUEST_TERMINAL).filter(pl.col("request_id").is_not_null())
    if started.is_empty() and ended.is_empty():
        return _empty(REQUESTS_SCHEMA)
    starts = started.group_by("request_id", maintain_order=True).agg(
        pl.col("ts").first().alias("start"),
        pl.col("stage").first().alias("s_stage"),
        pl.col("item_id").first().alias("s_item"),
        pl.col("role").first().alias("s_role"),
        pl.col("endpoint").first().alias("s_endpoint"),
    )
    wasted = [_data(raw).get("wasted_tokens") for raw in ended["data"].to_list()]
    ends = (
        ended.with_columns(
            pl.col("kind").replace_strict(REQUEST_TERMINAL, return_dtype=pl.Utf8).alias("outcome"),
            pl.Series("wasted_tokens", wasted, dtype=pl.Int64),
        )
        .group_by("request_id", maintain_order=True)
        .last()
        .select(
            "request_id",
            pl.col("ts").alias("end"),
            "stage",
            "item_id",
            "role",
            "endpoint",
            "latency_s",
            "prompt_tokens",
            "completion_tokens",
            "outcome",
            "reason",
            "wasted_tokens",
        )
    )
    joined = starts.join(ends, on="request_id", how="full", coalesce=True)
    out = joined.select(
        "request_id",
        pl.coalesce("s_stage", "stage").alias("stage"),
        pl.coalesce("s_item", "item_id").alias("item_id"),
        pl.coalesce("s_role", "role").alias("role"),
        # where it ended: a router's request_finished names the endpoint that answered it
        pl.coalesce("endpoint", "s_endpoint").alias("endpoint"),
        "start",
        "end",
        pl.coalesce("latency_s", pl.col("end") - pl.col("start")).alias("latency_s"),
        "prompt_tokens",
        "completion_tokens",
        pl.col("outcome").fill_null("in_flight"),
        "reason",
        "wasted_tokens",
    )
    return out.cast(REQUESTS_SCHEMA).sort("start", nulls_last=True, maintain_order=True)


def artifacts(df: pl.DataFrame) -> pl.DataFrame:
    """Lineage: one row per artifact that was admitted or speculatively admitted.

    ``parents`` lists every parent (several for merges and patches); ``parent_id`` is the main
    one.  Flags come from the speculation events: ``speculative`` (was admitted before its
    validation finished), ``confirmed`` and ``tombstoned`` (the speculation was rolled back).
    ``score`` is the latest validation score known for it (at admission, confirmation, or a
    later ``scored`` event).
    """
    events = df.filter(pl.col("kind").is_in(_ARTIFACT_KINDS) & pl.col("artifact_id").is_not_null())
    if events.is_empty():
        return _empty(ARTIFACTS_SCHEMA)
    out = _with_parents(_artifact_rows(events), df)
    return (
        out.select(list(ARTIFACTS_SCHEMA))
        .cast(ARTIFACTS_SCHEMA)
        .sort("admitted_ts", nulls_last=True, maintain_order=True)
    )


#: The kinds that say something about an admitted (or speculatively admitted) artifact.
_ARTIFACT_KINDS = [
    str(k)
    for k in (
        Kind.ADMITTED,
        Kind.SPECULATIVE_ADMITTED,
        Kind.SPECULATION_CONFIRMED,
        Kind.SPECULATION_ROLLED_BACK,
        Kind.SCORED,
    )
]


def _artifact_rows(events: pl.DataFrame) -> pl.DataFrame:
    """One row per artifact from its own events: what its admission said, its latest score,
    and the speculation flags."""
    is_ = {k: pl.col("kind") == str(k) for k in _ARTIFACT_KINDS}
    admitted = is_[str(Kind.ADMITTED)]
    data = pl.col("data").fill_null("{}")

    def json_list(path: str) -> pl.Expr:
        return data.str.json_path_match(path).str.json_decode(pl.List(pl.Utf8))

    rows = events.with_columns(
        data.str.json_path_match("$.origin").alias("_origin"),
        json_list("$.parents").alias("_parents"),
        json_list("$.patched_from").alias("_patched_from"),
        # a rolled-back sweep's score is not the artifact's standing score
        pl.when(~is_[str(Kind.SPECULATION_ROLLED_BACK)]).then(pl.col("score")).alias("_score"),
    )
    return rows.group_by("artifact_id", maintain_order=True).agg(
        pl.col("parent_id").filter(admitted).last().alias("parent_id"),
        pl.col("_parents").filter(admitted).last().alias("parents"),
        pl.col("_origin").filter(admitted).last().alias("origin"),
        pl.col("pool_version").filter(admitted).last(),
        pl.col("frontier_version").filter(admitted).last(),
        pl.col("_score").drop_nulls().last().alias("score"),
        pl.coalesce(
            pl.col("ts").filter(admitted).last(),
            pl.col("ts").filter(is_[str(Kind.SPECULATIVE_ADMITTED)]).first(),
        ).alias("admitted_ts"),
        admitted.any().alias("admitted"),
        is_[str(Kind.SPECULATIVE_ADMITTED)].any().alias("speculative"),
        is_[str(Kind.SPECULATION_CONFIRMED)].any().alias("confirmed"),
        is_[str(Kind.SPECULATION_ROLLED_BACK)].any().alias("tombstoned"),
        pl.col("_patched_from").filter(admitted).last().alias("patched_from"),
    )


def _with_parents(out: pl.DataFrame, df: pl.DataFrame) -> pl.DataFrame:
    """``parent_id`` and ``parents`` for every row: speculative-only rows take theirs from the
    proposal that made them; ``patched_from`` is never null."""
    proposals = _of(df, Kind.PROPOSAL_MADE, Kind.GATE_PASSED, Kind.GATE_FAILED).filter(
        pl.col("artifact_id").is_not_null() & pl.col("parent_id").is_not_null()
    )
    made_from = proposals.group_by("artifact_id", maintain_order=True).agg(
        pl.col("parent_id").first().alias("_proposed_parent")
    )
    out = out.join(made_from, on="artifact_id", how="left")
    return out.with_columns(
        pl.coalesce("parent_id", pl.col("parents").list.first(), "_proposed_parent").alias(
            "parent_id"
        ),
        pl.col("patched_from").fill_null(pl.lit([], dtype=pl.List(pl.Utf8))),
    ).with_columns(
        pl.when(pl.col("parents").is_null() | (pl.col("parents").list.len() == 0))
        .then(
            pl.when(pl.col("parent_id").is_not_null())
            .then(pl.concat_list("parent_id"))
            .otherwise(pl.lit([], dtype=pl.List(pl.Utf8)))
        )
        .otherwise(pl.col("parents"))
        .alias("parents")
    )


def lineage_edges(df: pl.DataFrame) -> pl.DataFrame:
    """Parent -> child edges between artifacts of :func:`artifacts`.

    ``edge`` is "parent" for a plain reflective child, "patch" for the parents of a patched
    artifact, "merge" for the parents of a merge, and "patched_from" from a stale artifact (named
    by a ``patch_made`` event) to the patch that absorbed it.  Edges whose ends are not both in
    the lineage (a stale artifact that was never admitted) are left out.
    """
    arts = artifacts(df)
    schema = {"parent_id": pl.Utf8(), "child_id": pl.Utf8(), "edge": pl.Utf8()}
    if arts.is_empty():
        return _empty(schema)
    known = set(arts["artifact_id"].to_list())
    edges: list[tuple[str, str, str]] = []
    for art, parents, origin in arts[["artifact_id", "parents", "origin"]].iter_rows():
        style = origin if origin in ("patch", "merge") else "parent"
        for parent in parents or []:
            if parent in known and parent != art:
                edges.append((parent, art, style))
    for art, raw in _of(df, Kind.PATCH_MADE)[["artifact_id", "data"]].iter_rows():
        for stale in _str_list(_data(raw).get("stale_artifacts")):
            if art in known and stale in known and stale != art:
                edges.append((stale, art, "patched_from"))
    if not edges:
        return _empty(schema)
    return pl.DataFrame(edges, schema=schema, orient="row").unique(maintain_order=True)


def staleness(df: pl.DataFrame) -> pl.DataFrame:
    """One row per staleness decision (accept / discard / patch / merged) with both lags."""
    stale = _of(df, Kind.STALE_DETECTED)
    if stale.is_empty():
        return _empty(STALENESS_SCHEMA)
    return stale.select(list(STALENESS_SCHEMA)).cast(STALENESS_SCHEMA)


def throughput(df: pl.DataFrame, window_s: float = 60.0) -> pl.DataFrame:
    """Counts per time bucket of ``window_s`` seconds, in long form.

    Group "stage": items each stage finished (``item_done``).  Group "pipeline": proposals made,
    candidates accepted (admitted) and validation sweeps finished.  Buckets with no event are
    filled with zeros from bucket 0 to the run's last event, so lines do not skip idle periods.
    ``per_min`` divides by the part of the bucket the run covered (the last one may be partial).
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    done = _of(df, Kind.ITEM_DONE).filter(pl.col("stage").is_not_null())
    pipe = _of(df, *PIPELINE_SERIES)
    if done.is_empty() and pipe.is_empty():
        return _empty(THROUGHPUT_SCHEMA)
    end = run_end(df)
    last_bucket = max(0, math.ceil(end / window_s) - 1) if end > 0 else 0
    # an event exactly on the run's last instant belongs to the last (closed) bucket
    bucket_expr = (
        (pl.col("ts") / window_s).floor().cast(pl.Int64).clip(0, last_bucket).alias("bucket")
    )
    parts = []
    if not done.is_empty():
        parts.append(
            done.select(
                bucket_expr, pl.lit("stage").alias("group"), pl.col("stage").alias("series")
            )
        )
    if not pipe.is_empty():
        parts.append(
            pipe.select(
                bucket_expr,
                pl.lit("pipeline").alias("group"),
                pl.col("kind")
                .replace_strict(PIPELINE_SERIES, return_dtype=pl.Utf8)
                .alias("series"),
            )
        )
    counts = pl.concat(parts).group_by("bucket", "group", "series").agg(pl.len().alias("count"))
    series = counts.select("group", "series").unique()
    grid = series.join(
        pl.DataFrame({"bucket": list(range(last_bucket + 1))}, schema={"bucket": pl.Int64}),
        how="cross",
    )
    out = grid.join(counts, on=["bucket", "group", "series"], how="left").with_columns(
        pl.col("count").fill_null(0).cast(pl.Int64),
        (pl.col("bucket") * window_s).cast(pl.Float64).alias("t_start"),
        pl.min_horizontal((pl.col("bucket") + 1) * window_s, pl.lit(max(end, window_s)))
        .cast(pl.Float64)
        .alias("t_end"),
    )
    out = out.with_columns(
        (pl.col("count") * 60.0 / (pl.col("t_end") - pl.col("t_start"))).alias("per_min")
    )
    rank = _rank(df)
    order = (
        pl.when(pl.col("group") == "stage")
        .then(pl.col("series").replace_strict(rank, default=len(rank), return_dtype=pl.Int64))
        .otherwise(100)
        .alias("_rank")
    )
    return (
        out.with_columns(order)
        .sort("bucket", "_rank", "series")
        .select(list(THROUGHPUT_SCHEMA))
        .cast(THROUGHPUT_SCHEMA)
    )


def concurrency(df: pl.DataFrame) -> pl.DataFrame:
    """Backend requests over time, as a step series (values hold until the next row):
    ``in_flight`` (handed to a backend, not finished), ``in_client`` (of those, waiting on the
    client's side: its queue for a slot, a retry's backoff) and ``at_server`` (the rest: what
    the server sees).

    ``in_flight`` is what the runtime recorded on each request event (rebuilt as +1 per start
    and -1 per end when a log lacks it).  ``in_client`` comes from the hold intervals the
    runtime logged (``data.held_from`` on ``request_sent`` and on terminal events); a backend
    that never holds requests back leaves it at 0.  The series starts at (0, 0, 0, 0) and several
    events at one instant collapse to the values after the last of them.
    """
    reqs = _of(df, Kind.REQUEST_STARTED, *REQUEST_TERMINAL)
    if reqs.is_empty():
        return _empty(CONCURRENCY_SCHEMA)
    step = pl.when(pl.col("kind") == str(Kind.REQUEST_STARTED)).then(1).otherwise(-1)
    types = pl.Schema({"ts": pl.Float64(), "in_flight": pl.Int64(), "held_step": pl.Int64()})
    flight = reqs.select(
        "ts",
        pl.coalesce(pl.col("in_flight"), step.cum_sum().clip(lower_bound=0)).alias("in_flight"),
        pl.lit(0).alias("held_step"),
    ).cast(types)
    holds = []
    for ts, raw in _of(df, Kind.REQUEST_SENT, *REQUEST_TERMINAL)[["ts", "data"]].iter_rows():
        held_from = _data(raw).get("held_from") if raw else None
        if isinstance(held_from, int | float):
            holds += [(float(held_from), None, 1), (ts, None, -1)]
    steps = pl.DataFrame(holds, schema=types, orient="row")
    start = pl.DataFrame({"ts": [0.0], "in_flight": [0], "held_step": [0]}, schema=types)
    series = (
        pl.concat([start, flight, steps])
        .sort("ts", maintain_order=True)
        .with_columns(
            pl.col("in_flight").forward_fill().fill_null(0),
            pl.col("held_step").cum_sum().clip(lower_bound=0).alias("in_client"),
        )
        .group_by("ts", maintain_order=True)
        .last()
    )
    return series.select(
        "ts",
        "in_flight",
        pl.min_horizontal("in_client", "in_flight").alias("in_client"),
        (pl.col("in_flight") - pl.min_horizontal("in_client", "in_flight")).alias("at_server"),
    ).cast(CONCURRENCY_SCHEMA)


def backend_load(df: pl.DataFrame) -> pl.DataFrame:
    """What the servers said about their own load, one row per ``backend_load`` event (the
    runtime asks every ``load_every_s``; servers that cannot tell leave this empty)."""
    rows = []
    for ts, endpoint, raw in _of(df, Kind.BACKEND_LOAD)[["ts", "endpoint", "data"]].iter_rows():
        d = _data(raw)
        rows.append((ts, endpoint, d.get("running"), d.get("waiting"), d.get("kv_usage")))
    if not rows:
        return _empty(BACKEND_LOAD_SCHEMA)
    out = pl.DataFrame(rows, schema=list(BACKEND_LOAD_SCHEMA)[:5], orient="row")
    out = out.with_columns(
        (pl.col("waiting") / pl.max_horizontal(pl.col("running"), pl.lit(1))).alias(
            "waiting_per_running"
        )
    )
    return out.cast(BACKEND_LOAD_SCHEMA)


def best_score_over_time(df: pl.DataFrame) -> pl.DataFrame:
    """Best validation score of an admitted artifact so far, one row per score that became
    known -- at admission, or later (``scored``, for workflows that validate some admitted
    versions afterwards) -- non-decreasing."""
    adm = _of(df, Kind.ADMITTED, Kind.SCORED).filter(pl.col("score").is_not_null())
    if adm.is_empty():
        return _empty(BEST_SCHEMA)
    out = adm.select("ts", "artifact_id", "score").with_columns(
        pl.col("score").cum_max().alias("best_score")
    )
    previous = pl.col("best_score").shift(1)
    out = out.with_columns(
        (previous.is_null() | (pl.col("best_score") > previous)).alias("is_new_best")
    )
    return out.cast(BEST_SCHEMA)


def stage_time_breakdown(df: pl.DataFrame) -> pl.DataFrame:
    """Where the time went: per stage, busy seconds (sum of ``item_done`` latencies) and share.

    ``wait_s`` is the queue wait before that stage (sum of ``item_dequeued`` data.wait_s), kept
    separate because waiting is not work; ``share`` is of busy time only.
    """
    done = _of(df, Kind.ITEM_DONE).filter(pl.col("stage").is_not_null())
    if done.is_empty():
        return _empty(BREAKDOWN_SCHEMA)
    busy = done.group_by("stage").agg(
        pl.len().alias("items"),
        pl.col("latency_s").fill_null(0.0).sum().alias("busy_s"),
    )
    waits: dict[str, float] = {}
    for stage, raw in _of(df, Kind.ITEM_DEQUEUED)[["stage", "data"]].iter_rows():
        wait = _data(raw).get("wait_s")
        if stage is not None and isinstance(wait, int | float):
            waits[stage] = waits.get(stage, 0.0) + float(wait)
    total = float(busy["busy_s"].sum())
    out = busy.with_columns(
        (pl.col("busy_s") / pl.col("items")).alias("mean_s"),
        (pl.col("busy_s") / total if total > 0 else pl.lit(0.0)).alias("share"),
        pl.col("stage").replace_strict(waits, default=0.0, return_dtype=pl.Float64).alias("wait_s"),
    )
    rank = _rank(df)
    out = out.with_columns(
        pl.col("stage")
        .replace_strict(rank, default=len(rank), return_dtype=pl.Int64)
        .alias("_rank")
    )
    return out.sort("_rank", "stage").select(list(BREAKDOWN_SCHEMA)).cast(BREAKDOWN_SCHEMA)


__all__ = [
    "ARTIFACTS_SCHEMA",
    "BACKEND_LOAD_SCHEMA",
    "BEST_SCHEMA",
    "BREAKDOWN_SCHEMA",
    "CONCURRENCY_SCHEMA",
    "REQUESTS_SCHEMA",
    "STALENESS_SCHEMA",
    "THROUGHPUT_SCHEMA",
    "artifacts",
    "backend_load",
    "best_score_over_time",
    "concurrency",
    "empty_events",
    "is_simulated",
    "lineage_edges",
    "requests",
    "run_end",
    "run_info",
    "stage_order",
    "stage_time_breakdown",
    "staleness",
    "throughput",
]
