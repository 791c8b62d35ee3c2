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
from collections.abc import Callable
from typing import Any

from flashevolve.bench import workflow_bench
from flashevolve.bench.throughput import BenchConfig
from flashevolve.bench.workflow_bench import WorkflowBench, run_workflow_bench

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


BENCH = WorkflowBench(
    WORKFLOW,
    CONFIGS,
    make_task=lambda seed: _intent_lite(),
    profile_stages=("propose", "validate", "evaluate"),
)


def _intent_lite() -> Any:
    from flashevolve.tasks.intent_lite import intent_lite

    return intent_lite()


def get_config(name: str) -> BenchConfig:
    return BENCH.config(name)


def build_evolver(name: str, *, profile: str, minutes: float, seed: int = 0) -> tuple[Any, Any]:
    """(evolver, simulated server) of one configuration, ready for ``run_virtual()``."""
    return workflow_bench.build_evolver(BENCH, name, profile=profile, minutes=minutes, seed=seed)


def row_of(evolver: Any, llm: Any, *, profile: str, seed: int) -> dict[str, Any]:
    """The bench row of a finished run."""
    return workflow_bench.row_of(BENCH, evolver, llm, profile=profile, seed=seed)


def run_row(name: str, *, profile: str, minutes: float, seed: int = 0) -> dict[str, Any]:
    """One configuration on a fresh simulated server (virtual time)."""
    return workflow_bench.run_row(BENCH, name, profile=profile, minutes=minutes, seed=seed)


def run_meta_harness_bench(
    configs: list[str],
    *,
    profile: str,
    minutes: float,
    seeds: list[int],
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    return run_workflow_bench(
        BENCH, configs, profile=profile, minutes=minutes, seeds=seeds, progress=progress
    )


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
