"""Per-endpoint numbers: what each server behind a router (or each backend of a run) did.

Built on :func:`flashevolve.events.frames.requests`, whose ``endpoint`` is where each request
ended -- behind ``backends.router`` the endpoint that answered it -- and on the router's own
events (``request_routed`` moves, ``endpoint_state`` changes with ``source: "router"``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import polars as pl

from flashevolve.events.frames import requests, run_end
from flashevolve.events.schema import Kind

ENDPOINTS_SCHEMA = pl.Schema(
    {
        "endpoint": pl.Utf8(),
        "requests": pl.Int64(),  # answered there
        "failed": pl.Int64(),  # failed for good there
        "cancelled": pl.Int64(),
        "moved_away": pl.Int64(),  # sent there, then moved to another endpoint before an answer
        "prompt_tokens": pl.Int64(),
        "completion_tokens": pl.Int64(),
        "mean_latency_s": pl.Float64(),
        "downs": pl.Int64(),  # times a router took it out
    }
)

SERVED_SCHEMA = pl.Schema(
    {
        "t_start": pl.Float64(),
        "endpoint": pl.Utf8(),
        "requests": pl.Int64(),
    }
)


def _data(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _router_counts(df: pl.DataFrame) -> tuple[dict[str, int], dict[str, int]]:
    """(moved away, taken out) per endpoint, from the router's events."""
    moved: dict[str, int] = {}
    downs: dict[str, int] = {}
    kinds = [str(Kind.REQUEST_ROUTED), str(Kind.ENDPOINT_STATE)]
    rows = df.filter(pl.col("kind").is_in(kinds)).select("kind", "data")
    for kind, raw in rows.iter_rows():
        data = _data(raw)
        if kind == Kind.REQUEST_ROUTED and data.get("reason") == "moved":
            left = str(data.get("moved_from"))
            moved[left] = moved.get(left, 0) + 1
        elif data.get("source") == "router" and data.get("state") == "down":
            label = str(data.get("endpoint"))
            downs[label] = downs.get(label, 0) + 1
    return moved, downs


def endpoint_table(df: pl.DataFrame) -> pl.DataFrame:
    """One row per endpoint that had requests, in order of first use."""
    reqs = requests(df).filter(pl.col("endpoint").is_not_null())
    moved, downs = _router_counts(df)
    if reqs.is_empty() and not moved and not downs:
        return pl.DataFrame(schema=ENDPOINTS_SCHEMA)
    outcome = pl.col("outcome")
    table = reqs.group_by("endpoint", maintain_order=True).agg(
        (outcome == "finished").sum().alias("requests"),
        (outcome == "failed").sum().alias("failed"),
        (outcome == "cancelled").sum().alias("cancelled"),
        pl.col("prompt_tokens").filter(outcome == "finished").sum().alias("prompt_tokens"),
        pl.col("completion_tokens").filter(outcome == "finished").sum().alias("completion_tokens"),
        pl.col("latency_s").filter(outcome == "finished").mean().alias("mean_latency_s"),
    )
    known = set(table["endpoint"].to_list())
    extra = [e for e in list(moved) + list(downs) if e not in known]
    if extra:
        table = pl.concat(
            [table, pl.DataFrame({"endpoint": list(dict.fromkeys(extra))})], how="diagonal_relaxed"
        )
    table = table.with_columns(
        pl.col("endpoint")
        .replace_strict(moved, default=0, return_dtype=pl.Int64)
        .alias("moved_away"),
        pl.col("endpoint").replace_strict(downs, default=0, return_dtype=pl.Int64).alias("downs"),
    )
    filled = [pl.col(c).fill_null(0) for c in ("requests", "failed", "cancelled")]
    filled += [pl.col(c).fill_null(0) for c in ("prompt_tokens", "completion_tokens")]
    return table.with_columns(filled).select(list(ENDPOINTS_SCHEMA)).cast(ENDPOINTS_SCHEMA)


def endpoint_summary(df: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """``summary()["endpoints"]``: endpoint -> requests, failed, tokens, moved_away, downs."""
    out: dict[str, dict[str, Any]] = {}
    for row in endpoint_table(df).iter_rows(named=True):
        out[row["endpoint"]] = {
            "requests": row["requests"],
            "failed": row["failed"],
            "tokens": row["prompt_tokens"] + row["completion_tokens"],
            "moved_away": row["moved_away"],
            "downs": row["downs"],
        }
    return out


def served_over_time(df: pl.DataFrame, window_s: float = 60.0) -> pl.DataFrame:
    """Requests answered per endpoint per ``window_s`` bucket (zeros filled), by end time."""
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    reqs = requests(df).filter((pl.col("outcome") == "finished") & pl.col("endpoint").is_not_null())
    if reqs.is_empty():
        return pl.DataFrame(schema=SERVED_SCHEMA)
    last = max(0, math.ceil(run_end(df) / window_s) - 1)
    counts = (
        reqs.select(
            (pl.col("end") / window_s).floor().cast(pl.Int64).clip(0, last).alias("bucket"),
            "endpoint",
        )
        .group_by("bucket", "endpoint")
        .agg(pl.len().cast(pl.Int64).alias("requests"))
    )
    grid = pl.DataFrame({"bucket": list(range(last + 1))}, schema={"bucket": pl.Int64}).join(
        reqs.select("endpoint").unique(maintain_order=True), how="cross"
    )
    out = grid.join(counts, on=["bucket", "endpoint"], how="left").with_columns(
        pl.col("requests").fill_null(0), (pl.col("bucket") * window_s).alias("t_start")
    )
    return out.sort("bucket", "endpoint").select(list(SERVED_SCHEMA)).cast(SERVED_SCHEMA)


__all__ = [
    "ENDPOINTS_SCHEMA",
    "SERVED_SCHEMA",
    "endpoint_summary",
    "endpoint_table",
    "served_over_time",
]
