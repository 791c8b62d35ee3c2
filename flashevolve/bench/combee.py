"""Combee bench rows: synchronous GEPA with Combee reflection over 10 and 40 examples (the
paper's baseline settings), and Combee inside an asynchronous run.

Every number is from the serving *simulator* on virtual time, labelled ``simulated``.  Combee's
reduce calls (stage ``reduce``) are answered by GEPA's simulator workload
(:func:`~flashevolve.workflows.gepa.combee_sim.reduce_answer`); ``python -m
flashevolve.bench.combee`` runs the rows on their own::

    python -m flashevolve.bench.combee --profile vllm-h100-qwen3-8b --minutes 30 \\
        --json combee-vllm.json

The rows also register in the generic bench (``flashevolve bench combee-k10 ...``) once
:mod:`flashevolve.bench.throughput` loads this module and its simulator answers ``reduce``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from flashevolve.bench import throughput
from flashevolve.bench.throughput import BenchConfig, get_config, register

COMBEE_ROWS = ("combee-k10", "combee-k40")


def _options(k: int, eval_concurrency: int | None = None) -> Any:
    def extras() -> dict[str, Any]:
        out: dict[str, Any] = {"combee": k}
        if eval_concurrency is not None:
            out["eval_concurrency"] = eval_concurrency
        return out

    return extras


for _k in (10, 40):
    register(
        BenchConfig(
            f"combee-k{_k}",
            mode="sync",
            extras=_options(_k),  # the workflow's evaluation concurrency, as the sync row
            description=f"sync GEPA with Combee reflection over {_k} examples "
            f"(k={int(_k**0.5)} map calls + reduce, each level a barrier)",
        )
    )
    register(
        BenchConfig(
            f"combee-k{_k}-async",
            workers={"rollout": 8, "propose": 8, "evaluate": 8},
            extras=_options(_k),
            description=f"async (8/8/8, 64 in flight) with Combee over {_k} examples",
        )
    )


def combee_llm(profile: str, seed: int) -> Any:
    """A simulated server that also answers Combee's reduce calls."""
    from flashevolve.backends.sim import simulated

    return simulated(profile, seed=seed)  # GEPA's workload answers reduce calls too


def run_row(name: str, *, profile: str, minutes: float, seed: int = 0) -> dict[str, Any]:
    """One bench row on a fresh Combee-aware simulated server (virtual time)."""
    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask

    config = get_config(name)
    llm = combee_llm(profile, seed)
    kwargs: dict[str, Any] = dict(config.extras() if config.extras else {})
    if config.mode == "async":
        kwargs.setdefault("workers", config.workers)
        kwargs.setdefault("max_in_flight", config.max_in_flight)
    evolver = Evolver(
        SimulatedTask(seed=seed),
        llm,
        mode=config.mode,
        budget={"seconds": minutes * 60, "wind_down": config.wind_down},
        seed=seed,
        staleness=config.staleness,
        name=config.name,
        load_every_s=None,
        **kwargs,
    )
    t0 = time.perf_counter()
    summary = evolver.run_virtual()
    server = llm.stats()
    generated = server.get("generated_tokens", summary["completion_tokens"])
    return {
        "config": name,
        "profile": profile,
        "seed": seed,
        "simulated": True,
        **summary,
        "utilization": (generated / max(summary["duration_s"], 1e-9))
        / llm.profile.attainable_tokens_per_s,
        "wall_s": time.perf_counter() - t0,
    }


def run_combee_bench(
    configs: list[str], *, profile: str, minutes: float, seeds: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for name in configs:
        runs = [run_row(name, profile=profile, minutes=minutes, seed=s) for s in seeds]
        rows.append(runs[0] if len(runs) == 1 else throughput.mean_row(runs))
    base = next((r for r in rows if r["config"] == "sync"), None)
    for r in rows:
        r["accepted_speedup"] = (
            r["accepted_per_min"] / base["accepted_per_min"]
            if base and base["accepted_per_min"]
            else None
        )
    return rows


COLUMNS = [
    ("config", "config", ""),
    ("proposals_per_min", "proposals/min", ".2f"),
    ("accepted_per_min", "accepted/min", ".3f"),
    ("validations_per_min", "val sweeps/min", ".2f"),
    ("utilization", "utilization", ".1%"),
    ("best_score", "best val", ".3f"),
    ("accepted_speedup", "accepted/min vs sync", ".2f"),
]


def main(argv: list[str] | None = None) -> None:
    from flashevolve.commands.common import format_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="vllm-h100-qwen3-8b")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--configs", nargs="+", default=["sync", *COMBEE_ROWS, "combee-k10-async", "async"]
    )
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    rows = run_combee_bench(
        args.configs, profile=args.profile, minutes=args.minutes, seeds=args.seeds
    )
    print(f"simulated, profile {args.profile}, {args.minutes:g} min, seeds {args.seeds}")
    print(format_table(rows, COLUMNS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
