"""The columns of every derived frame (the contract charts, views and notebooks rely on).

Kept apart from the builders in :mod:`flashevolve.events.frames`, which re-exports them.
"""

from __future__ import annotations

import polars as pl

REQUESTS_SCHEMA = pl.Schema(
    {
        "request_id": pl.Utf8(),
        "stage": pl.Utf8(),
        "item_id": pl.Utf8(),
        "role": pl.Utf8(),
        "endpoint": pl.Utf8(),
        "start": pl.Float64(),
        "end": pl.Float64(),
        "latency_s": pl.Float64(),
        "prompt_tokens": pl.Int64(),
        "completion_tokens": pl.Int64(),
        "outcome": pl.Utf8(),  # finished | failed | cancelled | in_flight
        "reason": pl.Utf8(),
        "wasted_tokens": pl.Int64(),
    }
)

ARTIFACTS_SCHEMA = pl.Schema(
    {
        "artifact_id": pl.Utf8(),
        "parent_id": pl.Utf8(),
        "parents": pl.List(pl.Utf8()),
        "origin": pl.Utf8(),
        "pool_version": pl.Int64(),
        "frontier_version": pl.Int64(),
        "score": pl.Float64(),
        "admitted_ts": pl.Float64(),
        "admitted": pl.Boolean(),  # an ``admitted`` event exists (not only a speculative one)
        "speculative": pl.Boolean(),
        "confirmed": pl.Boolean(),
        "tombstoned": pl.Boolean(),  # speculation rolled back
        "patched_from": pl.List(pl.Utf8()),
    }
)

STALENESS_SCHEMA = pl.Schema(
    {
        "ts": pl.Float64(),
        "stage": pl.Utf8(),
        "item_id": pl.Utf8(),
        "artifact_id": pl.Utf8(),
        "lag": pl.Int64(),
        "frontier_lag": pl.Int64(),
        "decision": pl.Utf8(),
        "reason": pl.Utf8(),
    }
)

THROUGHPUT_SCHEMA = pl.Schema(
    {
        "bucket": pl.Int64(),
        "t_start": pl.Float64(),
        "t_end": pl.Float64(),
        "group": pl.Utf8(),  # "stage" (items done in that stage) | "pipeline" (proposals, ...)
        "series": pl.Utf8(),  # stage name, or proposals | accepted | validations
        "count": pl.Int64(),
        "per_min": pl.Float64(),
    }
)

CONCURRENCY_SCHEMA = pl.Schema(
    {
        "ts": pl.Float64(),
        "in_flight": pl.Int64(),  # handed to a backend and not finished
        "in_client": pl.Int64(),  # of those, waiting on the client's side (queue, backoff)
        "at_server": pl.Int64(),  # the rest: what the server sees
    }
)

BEST_SCHEMA = pl.Schema(
    {
        "ts": pl.Float64(),
        "artifact_id": pl.Utf8(),
        "score": pl.Float64(),
        "best_score": pl.Float64(),
        "is_new_best": pl.Boolean(),
    }
)

BREAKDOWN_SCHEMA = pl.Schema(
    {
        "stage": pl.Utf8(),
        "items": pl.Int64(),
        "busy_s": pl.Float64(),
        "mean_s": pl.Float64(),
        "share": pl.Float64(),  # busy_s / sum of busy_s over stages
        "wait_s": pl.Float64(),  # queue wait before the stage, from item_dequeued data.wait_s
    }
)

BACKEND_LOAD_SCHEMA = pl.Schema(
    {
        "ts": pl.Float64(),
        "endpoint": pl.Utf8(),
        "running": pl.Int64(),
        "waiting": pl.Int64(),
        "kv_usage": pl.Float64(),  # null when the server does not publish it
        "waiting_per_running": pl.Float64(),  # waiting / max(running, 1): ~0 until the server is full
    }
)
