"""Frames of what admissions changed: the artifact's size, and the edit operations it carried.

Workflows whose artifacts grow and shrink by operations (ACE: a playbook edited by ADD / UPDATE
/ MERGE / DELETE) record them on their events; these frames read them for any workflow:

- ``admitted.data.size`` (and ``size_unit``): the artifact's size after the admission (ACE:
  bullets; GEPA: characters);
- ``admitted.data.operations`` and ``proposal_rejected.data.operations``: one dict per operation
  with at least ``type`` and ``status`` ("applied" / "rejected"); ``operation_rejected`` events
  are operations of a proposal that went on without them.

A workflow that records neither gives empty frames (and the charts say "no data yet").
"""

from __future__ import annotations

import polars as pl

from flashevolve.events.schema import Kind

SIZES_SCHEMA = pl.Schema(
    {
        "ts": pl.Float64(),
        "artifact_id": pl.Utf8(),
        "size": pl.Float64(),
        "size_unit": pl.Utf8(),
    }
)

OPERATIONS_SCHEMA = pl.Schema(
    {
        "ts": pl.Float64(),
        "type": pl.Utf8(),
        "status": pl.Utf8(),
    }
)

_OPERATION = pl.Struct({"type": pl.Utf8, "status": pl.Utf8})


def artifact_sizes(df: pl.DataFrame) -> pl.DataFrame:
    """One row per admission that reported its artifact's size (in admission order)."""
    adm = df.filter(pl.col("kind") == str(Kind.ADMITTED))
    if adm.is_empty():
        return pl.DataFrame(schema=SIZES_SCHEMA)
    data = pl.col("data").fill_null("{}")
    out = adm.select(
        "ts",
        "artifact_id",
        data.str.json_path_match("$.size").cast(pl.Float64, strict=False).alias("size"),
        data.str.json_path_match("$.size_unit").alias("size_unit"),
    ).filter(pl.col("size").is_not_null())
    return out.cast(SIZES_SCHEMA)


def operations(df: pl.DataFrame) -> pl.DataFrame:
    """One row per edit operation a proposal carried, with its type and what became of it."""
    carried = df.filter(
        pl.col("kind").is_in([str(Kind.ADMITTED), str(Kind.PROPOSAL_REJECTED)])
        & pl.col("data").fill_null("").str.contains('"operations"')
    )
    parts = []
    if not carried.is_empty():
        parts.append(
            carried.select(
                "ts",
                pl.col("data")
                .str.json_path_match("$.operations")
                .str.json_decode(pl.List(_OPERATION))
                .alias("op"),
            )
            .explode("op")
            .drop_nulls("op")
            .unnest("op")
        )
    if not parts:
        return pl.DataFrame(schema=OPERATIONS_SCHEMA)
    return pl.concat(parts).select(list(OPERATIONS_SCHEMA)).cast(OPERATIONS_SCHEMA)
