"""Calibration of the simulated *workload* against the paper's synchronous GEPA step.

Run: ``python -m flashevolve.backends.sim.calibrate [--profile P] [--minutes M] [--seed S]
[--n-val N] [--eval-concurrency C]``

The server side of the simulator is fitted to public serving measurements (:mod:`.fit`); what is
calibrated here is the workload: output lengths per stage, the validation set's size and the
sync loop's evaluation concurrency (32 threads, what GEPA/DSPy users run).  The run is the real
GEPA workflow, ``mode="sync"``, through :class:`flashevolve.Evolver` on virtual time -- the same
code as ``flashevolve bench`` -- and the report is read from its event log:

- per stage, the median time of one item (``item_done`` latencies): rollout (the parent on its
  minibatch), propose (one reflection), gate (the child on the minibatch), validate (the full
  validation set);
- the median *full* step (parent selected -> next parent selected, for steps that ran all four
  stages) and its split rollout / propose / evaluate (gate + validate), from the medians;
- steps that skipped reflection (a perfect minibatch) or stopped at the gate are counted apart.

Target (paper, one H100, Qwen3-8B, vLLM): about 2 minutes per synchronous step, ~9 s rollout /
~11 s propose / ~96 s evaluate (8% / 10% / 82%), backend concurrency in single digits.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import polars as pl

from flashevolve.events.schema import Kind

STAGES = ("rollout", "propose", "gate", "validate")
#: The GEPA workload's calibrated defaults (docs/simulator.md, "Calibration").
N_TRAIN, N_VAL, EVAL_CONCURRENCY = 150, 300, 32


def sync_step_profile(
    profile: str = "vllm-h100-qwen3-8b",
    *,
    minutes: float = 60.0,
    seed: int = 0,
    n_train: int = N_TRAIN,
    n_val: int = N_VAL,
    eval_concurrency: int = EVAL_CONCURRENCY,
) -> dict[str, Any]:
    """Run synchronous GEPA on the simulator for ``minutes`` of virtual time; its step profile."""
    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask, simulated

    llm = simulated(profile, seed=seed)
    evolver = Evolver(
        SimulatedTask(n_train=n_train, n_val=n_val, seed=seed),
        llm,
        mode="sync",
        budget={"seconds": minutes * 60},
        seed=seed,
        name="calibrate",
        eval_concurrency=eval_concurrency,
    )
    summary = evolver.run_virtual()
    report = step_report(evolver.events)
    report["tokens_by_stage"] = tokens_by_stage(evolver.events).to_dicts()
    report.update(
        profile=profile,
        seed=seed,
        n_val=n_val,
        eval_concurrency=eval_concurrency,
        sim_minutes=round(summary["duration_s"] / 60, 1),
        mean_concurrency=round(llm.stats().get("mean_concurrency", 0.0), 2),
        peak_concurrency=summary["peak_concurrency"],
        proposals=summary["proposals"],
        accepted=summary["accepted"],
        best_score=summary["best_score"],
    )
    return report


def step_report(events: pl.DataFrame) -> dict[str, Any]:
    """Stage and step times of a synchronous run, read from its event log."""
    starts = events.filter(pl.col("kind") == Kind.PARENT_SELECTED)["ts"].to_list()
    done = events.filter((pl.col("kind") == Kind.ITEM_DONE) & pl.col("stage").is_in(STAGES))
    items = list(zip(done["ts"].to_list(), done["stage"].to_list(), strict=True))
    latency = {
        s: done.filter(pl.col("stage") == s)["latency_s"].drop_nulls().to_list() for s in STAGES
    }
    full_steps: list[float] = []
    short_steps = 0
    for begin, end in zip(starts, starts[1:], strict=False):  # the last step may be cut off
        stages = {stage for ts, stage in items if begin < ts <= end}
        if stages >= set(STAGES):
            full_steps.append(end - begin)
        else:
            short_steps += 1
    med = {s: statistics.median(v) if v else 0.0 for s, v in latency.items()}
    evaluate = med["gate"] + med["validate"]
    total = med["rollout"] + med["propose"] + evaluate
    return {
        "median_item_s": {s: round(v, 1) for s, v in med.items()},
        "median_full_step_s": round(statistics.median(full_steps), 1) if full_steps else None,
        "full_steps": len(full_steps),
        "short_steps": short_steps,
        "split_of_medians": {
            "rollout": round(med["rollout"] / total, 3) if total else 0.0,
            "propose": round(med["propose"] / total, 3) if total else 0.0,
            "evaluate": round(evaluate / total, 3) if total else 0.0,
        },
    }


def tokens_by_stage(events: pl.DataFrame) -> pl.DataFrame:
    """Prompt and completion tokens of the finished requests, per stage (percentiles)."""
    done = events.filter(pl.col("kind") == Kind.REQUEST_FINISHED)
    prompt = pl.col("prompt_tokens")
    return (
        done.group_by("stage")
        .agg(
            pl.len().alias("requests"),
            prompt.quantile(0.05).alias("prompt_p5"),
            prompt.median().alias("prompt_p50"),
            prompt.quantile(0.95).alias("prompt_p95"),
            prompt.max().alias("prompt_max"),
            pl.col("completion_tokens").mean().round(0).alias("completion_mean"),
        )
        .sort("stage")
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="vllm-h100-qwen3-8b")
    parser.add_argument("--minutes", type=float, default=60.0, help="simulated minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-val", type=int, default=N_VAL)
    parser.add_argument("--eval-concurrency", type=int, default=EVAL_CONCURRENCY)
    args = parser.parse_args(argv)
    report = sync_step_profile(
        args.profile,
        minutes=args.minutes,
        seed=args.seed,
        n_val=args.n_val,
        eval_concurrency=args.eval_concurrency,
    )
    tokens = pl.DataFrame(report.pop("tokens_by_stage"))
    print(report)
    with pl.Config(tbl_rows=20, tbl_hide_dataframe_shape=True):
        print("tokens per request, by stage (simulated):")
        print(tokens)


if __name__ == "__main__":
    main()
