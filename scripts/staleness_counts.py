#!/usr/bin/env python
"""Count what a run's staleness policy did, from its event log, and check the run's summary.

    python scripts/staleness_counts.py RUN_DIR/MODE [--summary RUN_DIR/summary.json]
        [--command "..."] [--wall-s S] [--out result.json]

Reads ``events.jsonl`` with polars and counts: stale items per decision (accept / discard / patch
/ merged), ``patch_made`` events with their ``patched_from`` item ids, review calls (``request_*``
events of stage ``patch``), unusable review answers (``data.malformed``) with their reasons,
proposals, admissions and the best validation score.  With ``--summary`` (the ``summary.json``
that ``flashevolve run`` writes) it checks that the summary's counts equal the ones recounted
here and exits 1 if not.  Prints the result as JSON; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import polars as pl

from flashevolve.events.log import EventLog, events_to_frame

DECISIONS = {"accept": "accepted", "patch": "patched", "discard": "discarded", "merged": "merged"}


def count(run: Path) -> dict[str, Any]:
    df = events_to_frame(EventLog.read(run / "events.jsonl"))
    kind = pl.col("kind")
    data = pl.col("data").fill_null("{}")
    stale = df.filter(kind == "stale_detected").with_columns(
        malformed=data.str.json_path_match("$.malformed").fill_null("false") == "true",
        batch=data.str.json_path_match("$.batch"),
    )
    admitted = df.filter(kind == "admitted")
    seed = admitted.filter(data.str.json_path_match("$.origin") == "seed")
    patches = [
        {
            "artifact_id": row["artifact_id"],
            "parent_id": row["parent_id"],
            **{k: v for k, v in json.loads(row["data"]).items() if k != "texts"},
            "texts": json.loads(row["data"]).get("texts"),
        }
        for row in df.filter(kind == "patch_made").iter_rows(named=True)
    ]
    gates = df.filter(kind.is_in(["gate_passed", "gate_failed"]))
    gate_of = dict(zip(gates["artifact_id"], gates["kind"], strict=True))
    for p in patches:
        p["gate"] = gate_of.get(p["artifact_id"], "not gated").removeprefix("gate_")
    stale_ids = set(stale["item_id"])
    folded = set(stale.filter(pl.col("decision").is_in(["patch", "merged"]))["item_id"])
    reviews = df.filter((kind == "request_finished") & (pl.col("stage") == "patch"))
    malformed = stale.filter(pl.col("malformed")).unique("batch", maintain_order=True)
    run_start = df.filter(kind == "run_started").row(0, named=True)
    info = json.loads(run_start["data"])
    out: dict[str, Any] = {
        "task": info.get("task"),
        "model": info["backend"]["model"],
        "endpoint": info["backend"]["endpoint"],
        "staleness": info.get("staleness"),
        "run_clock_s": float(df["ts"].max()),
        "proposals": df.filter(kind == "proposal_made").height,
        "admissions": admitted.height - seed.height,
        "seed_val": None if seed.is_empty() else float(seed["score"][0]),
        "best_val": float(admitted["score"].max()) if admitted.height else None,
        "stale_seen": stale.height,
        **{f"stale_{name}": int((stale["decision"] == d).sum()) for d, name in DECISIONS.items()},
        "review_calls": reviews.height,
        "review_calls_failed": df.filter(
            (kind == "request_failed") & (pl.col("stage") == "patch")
        ).height,
        "unusable_review_answers": malformed.height,
        "unusable_reasons": malformed["reason"].to_list(),
        "patch_made": patches,
        "patched_artifacts_admitted": admitted.filter(
            pl.col("artifact_id").is_in([p["artifact_id"] for p in patches])
        ).height,
        "stale_items": stale.select(
            "item_id", "lag", "decision", "reason", "artifact_id", "malformed", "batch"
        ).to_dicts(),
        "checks": {
            "every_stale_item_has_a_decision": stale["decision"].null_count() == 0,
            "malformed_answers_never_patched": bool(
                (stale.filter(pl.col("malformed"))["decision"] == "discard").all()
            ),
            "patched_from_names_stale_items": all(
                set(p["patched_from"]) <= folded <= stale_ids for p in patches
            ),
        },
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a mode's run directory (holds events.jsonl)")
    ap.add_argument("--summary", type=Path, default=None, help="flashevolve run's summary.json")
    ap.add_argument("--command", default=None, help="the command that made the run (recorded)")
    ap.add_argument("--wall-s", type=float, default=None, help="wall time of the command")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = count(args.run)
    if args.command:
        result = {"command": args.command, **result}
    if args.wall_s is not None:
        result["wall_time_s"] = args.wall_s
    ok = all(result["checks"].values())
    if args.summary:
        summary = json.loads(args.summary.read_text())[args.run.name]
        keys = ["proposals", "stale_seen"] + [f"stale_{n}" for n in DECISIONS.values()]
        diff = {k: (summary[k], result[k]) for k in keys if summary[k] != result[k]}
        if summary["accepted"] != result["admissions"]:
            diff["accepted"] = (summary["accepted"], result["admissions"])
        if summary["best_score"] != result["best_val"]:
            diff["best_score"] = (summary["best_score"], result["best_val"])
        result["checks"]["summary_matches_events"] = not diff
        if diff:
            result["summary_mismatch"] = diff
            ok = False
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
