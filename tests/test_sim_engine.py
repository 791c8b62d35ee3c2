"""The simulated continuous-batching engine, on virtual time (no wall-clock waiting).

Every expected time below is worked out by hand from the step model: a step costs
``base + per_seq * decoding + prefill_tokens / prefill_rate``, carries at most
``max_batched_tokens`` tokens (one per decoding sequence, the rest prompt chunks, oldest request
first), the step that finishes a prompt produces its first token, and changes take effect at
step boundaries.
"""

from __future__ import annotations

import asyncio

import pytest

from flashevolve.backends.base import ChatRequest, LLMError
from flashevolve.backends.sim import EngineProfile, ServingEngine, SimulatedLLM, SimulatedTask
from flashevolve.runtime.clock import run_virtual

BASE, PER_SEQ, PREFILL = 0.01, 0.001, 10_000.0
PROFILE = EngineProfile(
    name="test-engine",
    model="test (simulated)",
    base_step_s=BASE,
    per_seq_s=PER_SEQ,
    prefill_tokens_per_s=PREFILL,
    max_batched_tokens=8192,
    max_running=256,
    kv_capacity_tokens=1_000_000,
)


def step(decoding: int, prefill_tokens: float = 0) -> float:
    return BASE + PER_SEQ * decoding + prefill_tokens / PREFILL


def test_step_time_is_base_plus_sequences_plus_prefill_tokens() -> None:
    assert PROFILE.step_time(0, 100) == pytest.approx(0.02)
    assert PROFILE.step_time(64) == pytest.approx(0.074)
    assert PROFILE.step_time(3, 5000) == pytest.approx(0.013 + 0.5)
    assert PROFILE.attainable_tokens_per_s == pytest.approx(256 / step(256))
    fast = PROFILE.scaled(10.0)
    assert fast.step_time(3, 5000) == pytest.approx(PROFILE.step_time(3, 5000) / 10)


def test_one_request_prefills_in_one_step_then_decodes() -> None:
    async def main():
        return await ServingEngine(PROFILE).generate(100, 500)

    timing = run_virtual(main())
    # step 1: the whole prompt, no sequence decoding yet -> first token; then 499 steps of one.
    assert timing.first_token == pytest.approx(step(0, 100), rel=1e-9)
    assert timing.finished == pytest.approx(step(0, 100) + 499 * step(1), rel=1e-9)


def test_a_burst_shares_the_prefill_step_and_slows_every_decode_step() -> None:
    async def main():
        engine = ServingEngine(PROFILE)
        timings = await asyncio.gather(*(engine.generate(100, 500) for _ in range(64)))
        return timings, engine.stats()

    timings, stats = run_virtual(main())
    first = step(0, 64 * 100)  # 6,400 prompt tokens fit one 8,192-token step
    assert [t.first_token for t in timings] == pytest.approx([first] * 64, rel=1e-9)
    assert [t.finished for t in timings] == pytest.approx([first + 499 * step(64)] * 64, rel=1e-9)
    assert stats["steps"] == 500 and stats["decode_tokens"] == 64 * 500


def test_prompts_beyond_the_budget_are_chunked_oldest_first() -> None:
    profile = PROFILE.model_copy(update={"max_batched_tokens": 1000})

    async def main():
        engine = ServingEngine(profile)
        return await asyncio.gather(engine.generate(1500, 1), engine.generate(700, 1))

    a, b = run_virtual(main())
    # step 1: 1,000 tokens of A; step 2: A's last 500 + B's first 500 (A done, 1-token answer);
    # step 3: B's last 200.
    assert a.finished == pytest.approx(step(0, 1000) + step(0, 1000), rel=1e-9)
    assert b.finished == pytest.approx(a.finished + step(0, 200), rel=1e-9)


def test_prefill_takes_its_share_of_the_decode_steps() -> None:
    profile = PROFILE.model_copy(update={"max_batched_tokens": 1001})

    async def main():
        engine = ServingEngine(profile)
        long = asyncio.ensure_future(engine.generate(1, 1000))
        await asyncio.sleep(step(0, 1))  # A's prefill step is over: A decodes alone
        late = await engine.generate(3000, 10)
        return await long, late

    long, late = run_virtual(main())
    t = step(0, 1)
    # B's 3,000-token prompt rides along A's decode steps 1,000 tokens at a time (budget 1,001
    # minus A's token): three steps, each slowed by its chunk; B's first token comes with the
    # third.  Then both decode: B needs 9 more steps.
    assert late.admitted == pytest.approx(t)
    assert late.first_token == pytest.approx(t + 3 * step(1, 1000), rel=1e-9)
    assert late.finished == pytest.approx(t + 3 * step(1, 1000) + 9 * step(2), rel=1e-9)
    # A made one token per step throughout: 1 + 3 + 9 = 13 tokens so far, 987 left, alone.
    assert long.finished == pytest.approx(late.finished + 987 * step(1), rel=1e-9)
    no_prefill = t + 999 * step(1) + 9 * PER_SEQ  # what A would take if B were all decode
    assert long.finished - no_prefill == pytest.approx(3 * 1000 / PREFILL, rel=1e-6)


def test_an_arrival_in_the_middle_of_a_step_starts_at_its_end() -> None:
    async def main():
        engine = ServingEngine(PROFILE)
        first = asyncio.ensure_future(engine.generate(1, 100))
        await asyncio.sleep(step(0, 1) + 10.5 * step(1))  # half-way through A's 11th decode step
        second = await engine.generate(1, 1)
        return await first, second

    first, second = run_virtual(main())
    boundary = step(0, 1) + 11 * step(1)
    assert second.admitted == pytest.approx(boundary, rel=1e-9)
    # B's one-token answer comes from the next step, which also carries A's token.
    assert second.finished == pytest.approx(boundary + step(1, 1), rel=1e-9)
    assert first.finished == pytest.approx(step(0, 1) + 99 * step(1) + 1 / PREFILL, rel=1e-9)


def test_completion_times_are_analytic_when_the_set_shrinks() -> None:
    async def main():
        engine = ServingEngine(PROFILE)
        return await asyncio.gather(engine.generate(1, 100), engine.generate(1, 300))

    short, long = run_virtual(main())
    t = step(0, 2)
    assert short.finished == pytest.approx(t + 99 * step(2), rel=1e-9)
    assert long.finished == pytest.approx(t + 99 * step(2) + 200 * step(1), rel=1e-9)


def test_max_running_queues_fifo() -> None:
    profile = PROFILE.model_copy(update={"max_running": 2})

    async def main():
        engine = ServingEngine(profile)
        tasks = [asyncio.ensure_future(engine.generate(10, 100)) for _ in range(4)]
        await asyncio.sleep(0.01)
        mid = engine.stats()
        timings = await asyncio.gather(*tasks)
        return [t.queued_s for t in timings], mid

    queued, mid = run_virtual(main())
    assert mid["running"] + mid["prefilling"] == 2 and mid["queued"] == 2
    assert queued[0] == queued[1] == 0.0
    assert queued[2] == queued[3] == pytest.approx(step(0, 20) + 99 * step(2), rel=1e-9)


def test_mean_waiting_is_the_time_average_of_the_queue() -> None:
    # One slot, two requests at once: the second waits exactly as long as the first is served,
    # so over the whole run the queue held one request for half the time.
    profile = PROFILE.model_copy(update={"max_running": 1})

    async def main():
        engine = ServingEngine(profile)
        timings = await asyncio.gather(engine.generate(1, 100), engine.generate(1, 100))
        return engine.stats(), [t.queued_s for t in timings]

    stats, queued = run_virtual(main())
    served = step(0, 1) + 99 * step(1)
    assert queued[1] == pytest.approx(served, rel=1e-9)
    assert stats["elapsed_s"] == pytest.approx(2 * served, rel=1e-9)
    assert stats["mean_waiting"] == pytest.approx(0.5, rel=1e-6)
    assert stats["mean_concurrency"] == pytest.approx(1.0, rel=1e-6)


def test_kv_capacity_queues_and_rejects_oversized() -> None:
    profile = PROFILE.model_copy(update={"kv_capacity_tokens": 1000})

    async def main():
        engine = ServingEngine(profile)
        timings = await asyncio.gather(*(engine.generate(100, 500) for _ in range(3)))
        assert engine.kv_used == 0
        with pytest.raises(LLMError) as err:
            await engine.generate(600, 500)
        assert err.value.status == 400
        return [t.admitted for t in timings]

    admitted = run_virtual(main())
    one = step(0, 100) + 499 * step(1)  # one 600-token request at a time
    assert admitted == pytest.approx([0.0, one, 2 * one], rel=1e-9)


def test_cancellation_frees_capacity_and_counts_waste() -> None:
    profile = PROFILE.model_copy(update={"max_running": 1})

    async def main():
        engine = ServingEngine(profile)
        first = asyncio.ensure_future(engine.generate(1, 10_000))
        second = asyncio.ensure_future(engine.generate(1, 100))
        await asyncio.sleep(step(0, 1) + 199.5 * step(1))  # mid-way through decode step 200
        assert engine.queued == 1
        partial: dict[str, int] = {}
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        timing = await second
        return engine.stats(), timing.admitted, partial

    stats, admitted, _ = run_virtual(main())
    # 1 token from the prefill step + 199 whole decode steps; the step in progress is not
    # counted, and the queued request starts when it ends.
    assert stats["cancelled_requests"] == 1
    assert stats["wasted_tokens"] == 200
    assert admitted == pytest.approx(step(0, 1) + 200 * step(1), rel=1e-9)
    assert stats["completed_tokens"] == 100
    assert stats["kv_used_tokens"] == 0
    assert stats["decode_tokens"] == 300


def test_cancelled_prefill_frees_its_slot_and_makes_no_tokens() -> None:
    profile = PROFILE.model_copy(update={"max_batched_tokens": 1000})

    async def main():
        engine = ServingEngine(profile)
        big = asyncio.ensure_future(engine.generate(5000, 10))
        other = asyncio.ensure_future(engine.generate(10, 1))
        await asyncio.sleep(1.5 * step(0, 1000))  # during big's second prompt chunk
        big.cancel()
        with pytest.raises(asyncio.CancelledError):
            await big
        return await other, engine.stats()

    other, stats = run_virtual(main())
    assert stats["wasted_tokens"] == 0 and stats["kv_used_tokens"] == 0
    # the second chunk step finishes as planned; then the small prompt alone
    assert other.finished == pytest.approx(2 * step(0, 1000) + step(0, 10), rel=1e-9)


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


def test_thirty_minutes_of_closed_loop_load() -> None:
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

    total = run_virtual(main())
    stats = llm.stats()
    assert total > 5000
    assert stats["mean_concurrency"] == pytest.approx(80, rel=0.05)
    assert 0 < stats["utilization"] <= 1.0
    assert stats["decode_tokens"] >= stats["completed_tokens"]
