"""Orchestrator overhead: how fast the runtime moves items when the backend costs nothing, and
how much of a simulated run's duration the orchestration would take."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import polars as pl

from flashevolve.backends.base import ChatRequest, ChatResult
from flashevolve.events.schema import Kind


class ZeroLatencyLLM:
    """Answers at once with the simulator's workload content: measures the orchestrator alone.

    A *simulated* backend (``endpoint = "sim:zero-latency"``); no model runs and no time passes.
    """

    model = "zero-latency"
    endpoint = "sim:zero-latency"

    def __init__(self, seed: int = 0) -> None:
        from flashevolve.backends.sim import get_workload

        self.seed = seed
        self.workload = get_workload()

    async def complete(self, request: ChatRequest) -> ChatResult:
        from flashevolve.backends.sim import count_prompt_tokens
        from flashevolve.backends.sim.llm import request_key

        await asyncio.sleep(0)  # yield like a real backend would
        stage = self.workload.stage_of(request)
        key = request_key(self.seed, request, stage)
        text = self.workload.content.respond(request.messages, stage, random.Random(f"text:{key}"))
        return ChatResult(text, count_prompt_tokens(request.messages), 1, 0.0)

    async def aclose(self) -> None:
        return None


def items_per_second(metric_calls: int = 20000, seed: int = 0) -> dict[str, Any]:
    """Async GEPA on a zero-latency backend until ``metric_calls`` rollouts are scored."""
    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask

    evolver = Evolver(
        SimulatedTask(seed=seed),
        ZeroLatencyLLM(seed),
        mode="async",
        budget={"metric_calls": metric_calls},
        seed=seed,
        workers={"rollout": 8, "propose": 8, "evaluate": 8},
        max_in_flight=64,
        control=None,  # fixed: the same work on every measurement
    )
    t0 = time.perf_counter()
    evolver.run_virtual()
    wall = time.perf_counter() - t0
    df = evolver.events
    items = df.filter(pl.col("kind") == Kind.ITEM_DONE).height
    requests = df.filter(pl.col("kind") == Kind.REQUEST_FINISHED).height
    return {
        "wall_s": wall,
        "items": items,
        "items_per_s": items / wall,
        "requests": requests,
        "requests_per_s": requests / wall,
        "events": df.height,
    }


def simulated_run_fraction(
    profile: str = "vllm-h100-qwen3-8b", minutes: float = 30.0, seed: int = 0
) -> dict[str, Any]:
    """Wall time of a whole virtual run (orchestrator *and* simulator) over its simulated span.

    The simulator's own work is included, so this is an upper bound on the share of a real run
    of that length that the orchestration would take.
    """
    from flashevolve.bench.throughput import get_config, run_config

    row, evolver = run_config(get_config("async"), profile=profile, minutes=minutes, seed=seed)
    span = row["duration_s"]
    return {
        "profile": profile,
        "simulated_s": span,
        "wall_s": row["wall_s"],
        "fraction": row["wall_s"] / span,
        "events": evolver.events.height,
        "proposals": row["proposals"],
    }
