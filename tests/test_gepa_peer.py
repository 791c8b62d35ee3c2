"""The real gepa package as a peer: gepa.optimize over real HTTP against the project's server
(a scripted responder answering with the simulator's workload content)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flashevolve.backends.server import ScriptedResponder, serve_in_thread
from flashevolve.backends.sim import SimulatedTask
from flashevolve.bench.peer_gepa import STAGE_HEADER, run_gepa_peer
from flashevolve.errors import ConfigError


class Watching(ScriptedResponder):
    """The scripted responder, noting each request's stage and the peak of requests at once."""

    def __init__(self) -> None:
        super().__init__(latency=0.01)
        self.stages: list[str] = []
        self.peak = 0
        self._lock = threading.Lock()

    async def respond(self, request):
        with self._lock:
            self.stages.append(request.stage)
        task = asyncio.ensure_future(super().respond(request))
        await asyncio.sleep(0)
        self.peak = max(self.peak, self.in_flight)
        return await task


def test_the_real_gepa_runs_against_our_server_with_threaded_evaluation():
    responder = Watching()
    task = SimulatedTask(n_train=12, n_val=16, seed=1)
    with serve_in_thread(responder) as base_url:
        row = run_gepa_peer(task, base_url, "scripted", max_metric_calls=200, threads=8, seed=1)
    assert row["requests"] == len(responder.stages) == responder.completed
    assert row["proposals"] >= 1 and row["accepted"] <= row["proposals"]
    assert row["validations"] == row["accepted"]  # every accepted child gets one sweep
    assert row["best_score"] is not None and row["candidates"] == row["accepted"] + 1
    assert set(responder.stages) >= {"rollout", "validate", "propose"}
    assert responder.stages.count("propose") >= row["proposals"]
    assert 1 < responder.peak <= 8  # a batch is evaluated by the thread pool, not one by one


def test_the_peer_needs_a_budget_and_a_prompt_task():
    with pytest.raises(ConfigError, match="budget"):
        run_gepa_peer(SimulatedTask(n_train=4, n_val=4), "http://127.0.0.1:9/v1", "m")
    with pytest.raises(ConfigError, match="prompt tasks"):
        run_gepa_peer(object(), "http://127.0.0.1:9/v1", "m", seconds=1)  # type: ignore[arg-type]
    assert STAGE_HEADER == "X-Flashevolve-Stage"


def test_the_peer_bench_runs_both_sides_on_fresh_simulated_servers():
    from flashevolve.bench.peer import run_peer_bench

    result = run_peer_bench(minutes=0.05, speed=50, n_train=12, n_val=12)
    gepa, ours = result["rows"]
    assert gepa["config"].startswith("gepa") and ours["config"].startswith("flashevolve")
    assert result["simulated"] is True and "serve-sim" in result["server"]
    for row in (gepa, ours):
        assert row["requests"] > 0 and row["duration_s"] > 0
        assert row["utilization"] is None or 0 <= row["utilization"] <= 1
