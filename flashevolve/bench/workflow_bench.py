"""Bench rows for any registered workflow on the serving *simulator* (virtual time).

A workflow's bench is a :class:`WorkflowBench`: its registry name, its named configurations
(:class:`~flashevolve.bench.throughput.BenchConfig`), the task it runs on and the stages whose
median time makes its step profile.  Every row runs on a fresh simulated server answering with the
workflow's own workload, and every number is labelled ``simulated``.  ``flashevolve bench
--workflow NAME`` and the per-workflow modules (``bench.ace``, ``bench.meta_harness``) use this.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from flashevolve.bench.throughput import BenchConfig, mean_row
from flashevolve.errors import ConfigError
from flashevolve.events.schema import Kind


@dataclass(frozen=True)
class WorkflowBench:
    workflow: str
    configs: dict[str, BenchConfig]
    #: seed -> the task (a fresh one per row)
    make_task: Callable[[int], Any]
    #: stages whose median item time goes into the row as ``<stage>_s``
    profile_stages: tuple[str, ...] = ()

    def config(self, name: str) -> BenchConfig:
        try:
            return self.configs[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.workflow} bench config {name!r}; choose from {list(self.configs)}"
            ) from None


def stage_medians(events: pl.DataFrame, stages: tuple[str, ...]) -> dict[str, float | None]:
    """Median seconds an item spent in each stage (the step profile of PAPER.md section 7)."""
    done = events.filter(pl.col("kind") == Kind.ITEM_DONE)
    out: dict[str, float | None] = {}
    for stage in stages:
        sub = done.filter(pl.col("stage") == stage)["latency_s"].drop_nulls()
        median = sub.cast(pl.Float64).median()
        out[f"{stage}_s"] = float(median) if isinstance(median, int | float) else None
    return out


def build_evolver(
    bench: WorkflowBench, name: str, *, profile: str, minutes: float, seed: int = 0
) -> tuple[Any, Any]:
    """(evolver, simulated server) of one configuration, ready for ``run_virtual()``."""
    from flashevolve import Evolver
    from flashevolve.backends.sim import simulated
    from flashevolve.workflows.base import sim_workload_of

    config = bench.config(name)
    llm = simulated(profile, seed=seed, workload=sim_workload_of(bench.workflow))
    kwargs: dict[str, Any] = dict(config.workflow_options)
    if config.mode == "async":
        kwargs.update(workers=config.workers, max_in_flight=config.max_in_flight)
        if not config.adaptive:
            kwargs["control"] = None  # a fixed setting: workers and bound stay as given
    if config.extras is not None:
        kwargs.update(config.extras())
    evolver = Evolver(
        bench.make_task(seed),
        llm,
        workflow=bench.workflow,
        mode=config.mode,
        budget={"seconds": minutes * 60},
        seed=seed,
        staleness=config.staleness,
        name=config.name,
        load_every_s=None,
        **kwargs,
    )
    return evolver, llm


def row_of(
    bench: WorkflowBench, evolver: Any, llm: Any, *, profile: str, seed: int
) -> dict[str, Any]:
    """The bench row of a finished run."""
    summary = evolver.summary()
    generated = llm.stats().get("generated_tokens", summary["completion_tokens"])
    events = evolver.events
    return {
        "config": evolver.name,
        "workflow": bench.workflow,
        "profile": profile,
        "seed": seed,
        "simulated": True,
        **summary,
        **stage_medians(events, bench.profile_stages),
        "gate_failed": int(events.filter(pl.col("kind") == Kind.GATE_FAILED).height),
        "utilization": (generated / max(summary["duration_s"], 1e-9))
        / llm.profile.attainable_tokens_per_s,
    }


def run_row(
    bench: WorkflowBench, name: str, *, profile: str, minutes: float, seed: int = 0
) -> dict[str, Any]:
    """One configuration on a fresh simulated server (virtual time)."""
    evolver, llm = build_evolver(bench, name, profile=profile, minutes=minutes, seed=seed)
    t0 = time.perf_counter()
    evolver.run_virtual()
    row = row_of(bench, evolver, llm, profile=profile, seed=seed)
    return {**row, "wall_s": time.perf_counter() - t0}


def run_workflow_bench(
    bench: WorkflowBench,
    configs: list[str],
    *,
    profile: str,
    minutes: float,
    seeds: list[int],
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``configs`` (mean over ``seeds``), each with its speed-up over ``sync``."""
    for name in configs:
        bench.config(name)  # every name checked before the first run
    rows = []
    for name in configs:
        runs = []
        for s in seeds:
            if progress:
                progress(f"running {bench.workflow} {name} (seed {s}) ...")
            runs.append(run_row(bench, name, profile=profile, minutes=minutes, seed=s))
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
    ("stale_seen", "stale", ".0f"),
    ("mean_concurrency", "mean conc", ".1f"),
    ("utilization", "utilization", ".1%"),
    ("best_score", "best val", ".3f"),
]


def stage_columns(bench: WorkflowBench) -> list[tuple[str, str, str]]:
    return [(f"{s}_s", f"{s} s (median)", ".1f") for s in bench.profile_stages]
