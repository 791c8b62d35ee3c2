"""Meta-Harness bench rows: its own loop (sync) against overlapped proposers (async).

Every number is from the serving *simulator* on virtual time, labelled ``simulated``: the task is
``intent-lite``, the harnesses are evaluated by the
:class:`~flashevolve.workflows.meta_harness.SimulatedRunner` (no code runs; the harness's model
calls go to the simulated server), and the proposer's and the harness's requests follow the
Meta-Harness workload (:mod:`flashevolve.workflows.meta_harness.sim`, calibrated to the paper's
~47 s propose / ~17 s evaluate step).  Run::

    python -m flashevolve.bench.meta_harness --profile vllm-h100-qwen3-8b --minutes 30 \\
        --json meta-harness-vllm.json

It prints a table (accepted/min first) and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import polars as pl

from flashevolve.bench.throughput import BenchConfig, mean_row
from flashevolve.errors import ConfigError
from flashevolve.events.schema import Kind

WORKFLOW = "meta-harness"

#: Meta-Harness runs its benchmark jobs under a semaphore of 16 (its text-classification code).
SYNC_EVAL_CONCURRENCY = 16

CONFIGS: dict[str, BenchConfig] = {
    c.name: c
    for c in (
        BenchConfig(
            "sync",
            mode="sync",
            workflow_options={"eval_concurrency": SYNC_EVAL_CONCURRENCY},
            description="Meta-Harness's loop: propose, check, evaluate one harness at a time "
            f"({SYNC_EVAL_CONCURRENCY} examples at once)",
        ),
        BenchConfig(
            "async",
            workers={"propose": 8, "validate": 2, "evaluate": 4},
            max_in_flight=16,
            workflow_options={"eval_concurrency": SYNC_EVAL_CONCURRENCY},
            description="8 proposers, 2 checkers, 4 evaluators, up to 16 harnesses in flight",
        ),
        BenchConfig(
            "async4",
            workers={"propose": 4, "validate": 1, "evaluate": 2},
            max_in_flight=8,
            workflow_options={"eval_concurrency": SYNC_EVAL_CONCURRENCY},
            description="4 proposers, 1 checker, 2 evaluators, up to 8 harnesses in flight",
        ),
        BenchConfig(
            "async-reflective",
            workers={"propose": 8, "validate": 2, "evaluate": 4},
            max_in_flight=16,
            staleness="reflective",
            workflow_options={"eval_concurrency": SYNC_EVAL_CONCURRENCY},
            description="as async, stale harnesses reviewed and repaired (Reflective policy)",
        ),
    )
}


def get_config(name: str) -> BenchConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError(
            f"unknown meta-harness bench config {name!r}; choose from {list(CONFIGS)}"
        ) from None


def stage_medians(events: pl.DataFrame) -> dict[str, float | None]:
    """Median seconds a harness spent in each stage (the step profile of PAPER.md section 7)."""
    done = events.filter(pl.col("kind") == Kind.ITEM_DONE)
    out: dict[str, float | None] = {}
    for stage in ("propose", "validate", "evaluate"):
        sub = done.filter(pl.col("stage") == stage)["latency_s"]
        out[f"{stage}_s"] = float(sub.median()) if len(sub) else None  # type: ignore[arg-type]
    return out


def build_evolver(name: str, *, profile: str, minutes: float, seed: int = 0) -> tuple[Any, Any]:
    """(evolver, simulated server) of one configuration, ready for ``run_virtual()``."""
    from flashevolve import Evolver
    from flashevolve.backends.sim import simulated
    from flashevolve.tasks.intent_lite import intent_lite

    config = get_config(name)
    llm = simulated(profile, seed=seed, workload=WORKFLOW)
    kwargs: dict[str, Any] = dict(config.workflow_options)
    if config.mode == "async":
        kwargs.update(workers=config.workers, max_in_flight=config.max_in_flight)
    evolver = Evolver(
        intent_lite(),
        llm,
        workflow=WORKFLOW,
        mode=config.mode,
        budget={"seconds": minutes * 60},
        seed=seed,
        staleness=config.staleness,
        name=config.name,
        load_every_s=None,
        **kwargs,
    )
    return evolver, llm


def row_of(evolver: Any, llm: Any, *, profile: str, seed: int) -> dict[str, Any]:
    """The bench row of a finished run."""
    summary = evolver.summary()
    server = llm.stats()
    generated = server.get("generated_tokens", summary["completion_tokens"])
    events = evolver.events
    return {
        "config": evolver.name,
        "profile": profile,
        "seed": seed,
        "simulated": True,
        **summary,
        **stage_medians(events),
        "gate_failed": int(events.filter(pl.col("kind") == Kind.GATE_FAILED).height),
        "utilization": (generated / max(summary["duration_s"], 1e-9))
        / llm.profile.attainable_tokens_per_s,
    }


def run_row(name: str, *, profile: str, minutes: float, seed: int = 0) -> dict[str, Any]:
    """One configuration on a fresh simulated server (virtual time)."""
    evolver, llm = build_evolver(name, profile=profile, minutes=minutes, seed=seed)
    t0 = time.perf_counter()
    evolver.run_virtual()
    return {**row_of(evolver, llm, profile=profile, seed=seed), "wall_s": time.perf_counter() - t0}


def run_meta_harness_bench(
    configs: list[str],
    *,
    profile: str,
    minutes: float,
    seeds: list[int],
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for name in configs:
        runs = []
        for s in seeds:
            if progress:
                progress(f"running meta-harness {name} (seed {s}) ...")
            runs.append(run_row(name, profile=profile, minutes=minutes, seed=s))
        rows.append(runs[0] if len(runs) == 1 else mean_row(runs))
    base = next((r for r in rows if r["config"] == "sync"), None)
    for r in rows:
        for key, out in (
            ("proposals_per_min", "speedup"),
            ("accepted_per_min", "accepted_speedup"),
        ):
            r[out] = r[key] / base[key] if base and base[key] else None
    return rows


COLUMNS = [
    ("config", "config", ""),
    ("accepted_per_min", "accepted/min", ".3f"),
    ("proposals_per_min", "proposals/min", ".3f"),
    ("validations_per_min", "val sweeps/min", ".3f"),
    ("accepted_speedup", "accepted/min vs sync", ".2f"),
    ("speedup", "proposals/min vs sync", ".2f"),
    ("propose_s", "propose s (median)", ".1f"),
    ("evaluate_s", "evaluate s (median)", ".1f"),
    ("gate_failed", "failed check", ".0f"),
    ("rejected_proposals", "no code", ".0f"),
    ("stale_seen", "stale", ".0f"),
    ("mean_concurrency", "mean conc", ".1f"),
    ("peak_concurrency", "peak conc", ".0f"),
    ("utilization", "utilization", ".1%"),
    ("best_score", "best val", ".3f"),
]


def main(argv: list[str] | None = None) -> None:
    from flashevolve.backends.sim import get_profile
    from flashevolve.commands.common import format_table

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--profile", default="vllm-h100-qwen3-8b")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--configs", default="sync,async", help=f"comma list of {list(CONFIGS)}")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        raise SystemExit("--minutes must be positive")
    get_profile(args.profile)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for name in configs:
        get_config(name)
    rows = run_meta_harness_bench(
        configs,
        profile=args.profile,
        minutes=args.minutes,
        seeds=args.seeds,
        progress=lambda m: print(m, file=sys.stderr),
    )
    print(
        f"# python -m flashevolve.bench.meta_harness --profile {args.profile} "
        f"--minutes {args.minutes:g} --configs {','.join(configs)} (SIMULATED, virtual time, "
        f"seeds {args.seeds})"
    )
    print(format_table(rows, COLUMNS))
    if args.json:
        payload = {
            "workflow": WORKFLOW,
            "profile": args.profile,
            "minutes": args.minutes,
            "seeds": args.seeds,
            "simulated": True,
            "rows": rows,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=1, default=str)
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
