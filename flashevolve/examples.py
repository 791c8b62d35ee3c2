"""Example event logs for previewing views, made by a short run on the serving simulator.

Nothing here is synthetic: :func:`example_events` runs a real (small) evolution on the
*simulated* server under virtual time, so every event -- requests, queue hand-offs, staleness
decisions with real reviewer answers, the server's own load reports -- comes out of the same code
paths as any run.  The log says ``simulated`` in ``run_started``, so charts built from it say so.
It takes about a second of wall time.
"""

from __future__ import annotations

from typing import Any

import polars as pl


def example_events(
    mode: str = "async",
    *,
    seed: int = 0,
    minutes: float = 6.0,
    staleness: Any = "reflective",
    workflow: str = "gepa",
) -> pl.DataFrame:
    """The event frame of a short simulated run (sync: the classic loop; async: overlapping
    steps whose stale proposals a reflective reviewer accepts, patches, merges or discards)."""
    from flashevolve.backends.sim import SimulatedTask
    from flashevolve.evolver import Evolver

    async_run = mode == "async"
    evolver = Evolver(
        SimulatedTask(n_train=24, n_val=12, seed=seed),
        "sim:vllm-h100-qwen3-8b",  # the simulator answers with the workflow's own workload
        workflow=workflow,
        mode=mode,
        staleness=staleness if async_run else None,
        workers=({"rollout": 4, "propose": 4, "evaluate": 2} if workflow == "gepa" else None)
        if async_run
        else None,
        max_in_flight=12,
        budget=minutes * 60.0,
        seed=seed,
        load_every_s=5.0,
        name=f"example {mode}",
    )
    evolver.run_virtual()
    return evolver.events
