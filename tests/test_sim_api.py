"""The simulated rate-limited API profile and the shared retry helper (virtual time)."""

from __future__ import annotations

import asyncio
import random

import pytest

from flashevolve.backends.base import ChatRequest, LLMError
from flashevolve.backends.retry import call_with_retries
from flashevolve.backends.sim import PROFILES, ApiProfile, SimulatedApi, SimulatedLLM, simulated
from flashevolve.runtime.clock import run_virtual

API = ApiProfile(
    name="test-api",
    model="api (simulated)",
    ttft_s=0.5,
    ttft_sigma=0.0,
    per_stream_tokens_per_s=100.0,
    rpm_limit=10,
    tpm_limit=1_000_000,
)


def _request(i: int, stage: str = "validate") -> ChatRequest:
    return ChatRequest([{"role": "user", "content": f"question {i}"}], stage=stage, item_id=str(i))


def test_latency_is_ttft_plus_stream_time_without_batch_slowdown() -> None:
    async def main() -> list[float]:
        api = SimulatedApi(API)
        rng = random.Random(0)
        timings = await asyncio.gather(*(api.generate(10, 200, rng) for _ in range(8)))
        return [t.latency_s for t in timings]

    assert run_virtual(main()) == pytest.approx([0.5 + 2.0] * 8)


def test_burst_above_rpm_answers_429() -> None:
    llm = SimulatedLLM(API, max_retries=0)

    async def main() -> list[object]:
        return list(
            await asyncio.gather(
                *(llm.complete(_request(i)) for i in range(15)), return_exceptions=True
            )
        )

    results = run_virtual(main())
    errors = [r for r in results if isinstance(r, LLMError)]
    assert len(errors) == 5
    assert all(e.status == 429 and e.retryable for e in errors)
    assert llm.stats()["rejected_requests"] == 5


def test_tpm_limit_answers_429() -> None:
    profile = API.model_copy(update={"rpm_limit": 1000, "tpm_limit": 3000})
    llm = SimulatedLLM(profile, max_retries=0)

    async def main() -> list[object]:
        return list(
            await asyncio.gather(
                *(llm.complete(_request(i)) for i in range(20)), return_exceptions=True
            )
        )

    results = run_virtual(main())
    assert any(isinstance(r, LLMError) and r.status == 429 for r in results)
    assert any(not isinstance(r, Exception) for r in results)


def test_retries_ride_out_the_window_on_virtual_time() -> None:
    llm = SimulatedLLM(API, max_retries=4, backoff_s=10.0)

    async def main() -> float:
        await asyncio.gather(*(llm.complete(_request(i)) for i in range(15)))
        return asyncio.get_running_loop().time()

    end = run_virtual(main())
    assert llm.retries >= 5
    assert end >= 60.0  # the 429'd requests had to wait for the window to slide


def test_builtin_api_profile_is_named_simulated() -> None:
    llm = simulated("api-gpt-4o-mini")
    assert llm.endpoint == "sim:api-gpt-4o-mini"
    assert "simulated" in llm.model
    assert PROFILES["api-gpt-4o-mini"].rpm_limit > PROFILES["api-gpt-4o-mini-tier1"].rpm_limit


def test_call_with_retries_semantics() -> None:
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    async def main() -> None:
        calls = 0

        async def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise LLMError("busy", status=429, retryable=True)
            return "ok"

        rng = random.Random(0)
        assert (
            await call_with_retries(flaky, max_retries=4, backoff_s=1.0, rng=rng, sleep=fake_sleep)
            == "ok"
        )
        assert calls == 3 and len(sleeps) == 2
        assert 0.5 <= sleeps[0] < 1.5 and 1.0 <= sleeps[1] < 3.0

        async def fatal() -> str:
            raise LLMError("bad request", status=400)

        with pytest.raises(LLMError):
            await call_with_retries(fatal, max_retries=4, backoff_s=1.0, rng=rng, sleep=fake_sleep)
        assert len(sleeps) == 2  # no retry on a non-retryable error

        async def always_busy() -> str:
            raise LLMError("busy", status=429, retryable=True)

        with pytest.raises(LLMError):
            await call_with_retries(
                always_busy, max_retries=2, backoff_s=1.0, rng=rng, sleep=fake_sleep
            )
        assert len(sleeps) == 4

    run_virtual(main())
