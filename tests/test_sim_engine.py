"""The simulated continuous-batching engine, on virtual time (no wall-clock waiting)."""

from __future__ import annotations

import asyncio
import time

import pytest

from flashevolve.backends.base import ChatRequest, LLMError
from flashevolve.backends.sim import EngineProfile, ServingEngine, SimulatedLLM, SimulatedTask
from flashevolve.runtime.clock import run_virtual

PROFILE = EngineProfile(
    name="test-engine",
    model="test (simulated)",
    base_step_s=0.01,
    per_seq_s=0.001,
    prefill_tokens_per_s=10_000.0,
    max_running=256,
    kv_capacity_tokens=1_000_000,
)


def test_batch_slows_each_request_down() -> None:
    async def one() -> float:
        engine = ServingEngine(PROFILE)
        return (await engine.generate(100, 500)).latency_s

    async def many() -> list[float]:
        engine = ServingEngine(PROFILE)
        timings = await asyncio.gather(*(engine.generate(100, 500) for _ in range(64)))
        return [t.latency_s for t in timings]

    single = run_virtual(one())
    batch = run_virtual(many())
    # batch 1: one prefill of 100 tokens, then 500 steps of base + 1 x per_seq
    assert single == pytest.approx(100 / 10_000 + 500 * 0.011, rel=1e-6)
    assert min(batch) > 2.5 * single  # per-request time grows with the batch
    # the last prefill of 64 serialised prefills, then 500 steps at 64 running
    assert max(batch) == pytest.approx(64 * 100 / 10_000 + 500 * (0.01 + 64 * 0.001), rel=0.02)


def test_completion_times_are_analytic_when_the_set_shrinks() -> None:
    profile = PROFILE.model_copy(update={"prefill_tokens_per_s": 1e12})

    async def main() -> list[float]:
        engine = ServingEngine(profile)
        timings = await asyncio.gather(engine.generate(1, 100), engine.generate(1, 300))
        return [t.finished for t in timings]

    short, long = run_virtual(main())
    assert short == pytest.approx(100 * 0.012, rel=1e-6)
    assert long == pytest.approx(100 * 0.012 + 200 * 0.011, rel=1e-6)


def test_max_running_queues_fifo() -> None:
    profile = PROFILE.model_copy(update={"max_running": 2})

    async def main() -> tuple[list[float], dict]:
        engine = ServingEngine(profile)
        tasks = [asyncio.ensure_future(engine.generate(10, 100)) for _ in range(4)]
        await asyncio.sleep(0.01)
        mid = engine.stats()
        timings = await asyncio.gather(*tasks)
        return [t.queued_s for t in timings], mid

    queued, mid = run_virtual(main())
    assert mid["running"] + mid["prefilling"] == 2 and mid["queued"] == 2
    assert queued[0] == queued[1] == 0.0
    assert queued[2] > 1.0 and queued[3] > 1.0


def test_mean_waiting_is_the_time_average_of_the_queue() -> None:
    # One slot, two requests at once: the second waits exactly as long as the first is served,
    # so over the whole run the queue held one request for half the time.
    profile = PROFILE.model_copy(update={"max_running": 1, "prefill_tokens_per_s": 1e12})

    async def main() -> tuple[dict, list[float]]:
        engine = ServingEngine(profile)
        timings = await asyncio.gather(engine.generate(1, 100), engine.generate(1, 100))
        return engine.stats(), [t.queued_s for t in timings]

    stats, queued = run_virtual(main())
    assert queued[1] == pytest.approx(100 * 0.011, rel=1e-6)
    assert stats["elapsed_s"] == pytest.approx(2 * 100 * 0.011, rel=1e-6)
    assert stats["mean_waiting"] == pytest.approx(0.5, rel=1e-3)
    assert stats["mean_concurrency"] == pytest.approx(1.0, rel=1e-3)


def test_kv_capacity_queues_and_rejects_oversized() -> None:
    profile = PROFILE.model_copy(update={"kv_capacity_tokens": 1000})

    async def main() -> list[float]:
        engine = ServingEngine(profile)
        timings = await asyncio.gather(*(engine.generate(100, 500) for _ in range(3)))
        assert engine.kv_used == 0
        with pytest.raises(LLMError) as err:
            await engine.generate(600, 500)
        assert err.value.status == 400
        return [t.admitted for t in timings]

    admitted = run_virtual(main())
    assert admitted[0] == 0.0
    assert admitted[1] > 5.0 and admitted[2] > admitted[1]  # one 600-token request at a time


def test_cancellation_frees_capacity_and_counts_waste() -> None:
    profile = PROFILE.model_copy(update={"max_running": 1, "prefill_tokens_per_s": 1e12})

    async def main() -> tuple[dict, float]:
        engine = ServingEngine(profile)
        first = asyncio.ensure_future(engine.generate(1, 10_000))
        second = asyncio.ensure_future(engine.generate(1, 100))
        await asyncio.sleep(2.2)  # 200 decode steps at 0.011 s
        assert engine.queued == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        timing = await second
        return engine.stats(), timing.admitted

    stats, admitted = run_virtual(main())
    assert admitted == pytest.approx(2.2)
    assert stats["cancelled_requests"] == 1
    assert stats["wasted_tokens"] == pytest.approx(200, abs=1)
    assert stats["completed_tokens"] == 100
    assert stats["kv_used_tokens"] == 0


def _task_latencies(seed: int) -> list[float]:
    task = SimulatedTask(n_val=30, seed=1)
    llm = SimulatedLLM(seed=seed)

    async def main() -> list[float]:
        comps = task.seed_artifact()

        async def one(i: int) -> float:
            msgs = task.messages(comps, task.val[i])
            res = await llm.complete(ChatRequest(msgs, stage="validate", item_id=f"v{i}"))
            return res.latency_s

        return list(await asyncio.gather(*(one(i) for i in range(30))))

    return run_virtual(main())


def test_same_seed_same_completion_times() -> None:
    assert _task_latencies(3) == _task_latencies(3)
    assert _task_latencies(3) != _task_latencies(4)


def test_thirty_simulated_minutes_are_cheap() -> None:
    llm = SimulatedLLM(seed=0)
    task = SimulatedTask(n_val=50)

    async def worker(w: int, stop_at: float) -> int:
        loop = asyncio.get_running_loop()
        done = 0
        while loop.time() < stop_at:
            ex = task.val[(w + done) % len(task.val)]
            msgs = task.messages(task.seed_artifact(), ex)
            await llm.complete(ChatRequest(msgs, stage="validate", item_id=f"w{w}-{done}"))
            done += 1
        return done

    async def main() -> int:
        return sum(await asyncio.gather(*(worker(w, 1800.0) for w in range(80))))

    w0 = time.perf_counter()
    total = run_virtual(main())
    wall = time.perf_counter() - w0
    stats = llm.stats()
    assert total > 5000
    assert stats["mean_concurrency"] == pytest.approx(80, rel=0.05)
    assert 0 < stats["utilization"] <= 1.0
    assert wall < 10.0, f"30 simulated minutes took {wall:.1f}s of wall time"
