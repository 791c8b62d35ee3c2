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


def _capped(i: int, max_tokens: int) -> ChatRequest:
    request = _request(i)
    request.max_tokens = max_tokens
    return request


def test_max_tokens_is_reserved_against_tpm_at_admission() -> None:
    # Each request reserves its prompt + max_tokens (3,000) although its answer is far shorter:
    # three fit in a 10,000-token window, the fourth is answered 429 at once.
    profile = API.model_copy(update={"rpm_limit": 1000, "tpm_limit": 10_000})
    llm = SimulatedLLM(profile, max_retries=0, length_fn=lambda stage, rng: 50)

    async def main() -> list[object]:
        return list(
            await asyncio.gather(
                *(llm.complete(_capped(i, 3000)) for i in range(4)), return_exceptions=True
            )
        )

    results = run_virtual(main())
    assert [isinstance(r, LLMError) for r in results] == [False, False, False, True]
    err = results[3]
    assert isinstance(err, LLMError) and err.status == 429 and err.retryable
    assert "tokens per 60s" in str(err)
    stats = llm.stats()
    assert stats["completed_tokens"] == 150  # what was generated: 3 x 50
    assert stats["reserved_tokens"] == 3 * (3000 + stats["prompt_tokens"] // 3)


def test_a_request_refused_for_tpm_passes_once_the_window_slides() -> None:
    profile = API.model_copy(update={"rpm_limit": 1000, "tpm_limit": 10_000})
    llm = SimulatedLLM(profile, max_retries=6, backoff_s=5.0, length_fn=lambda stage, rng: 50)

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()

        async def one(i: int) -> float:
            await llm.complete(_capped(i, 3000))
            return loop.time()

        return list(await asyncio.gather(*(one(i) for i in range(4))))

    finished = run_virtual(main())
    assert llm.retries >= 1
    assert max(finished[:3]) < 5.0  # the first three went through at once
    assert finished[3] >= 60.0  # the fourth waited for the first reservations to slide out


def test_a_reservation_larger_than_the_limit_is_refused_for_good() -> None:
    profile = API.model_copy(update={"tpm_limit": 5000})
    llm = SimulatedLLM(profile, max_retries=4)
    with pytest.raises(LLMError) as err:
        run_virtual(llm.complete(_capped(0, 8192)))
    assert err.value.status == 429 and not err.value.retryable
    assert "max_tokens" in str(err.value) and llm.retries == 0


def test_without_max_tokens_the_prompt_is_reserved_and_the_answer_charged_at_the_end() -> None:
    profile = API.model_copy(update={"rpm_limit": 1000, "tpm_limit": 1_000})
    llm = SimulatedLLM(profile, max_retries=0, length_fn=lambda stage, rng: 600)

    async def main() -> list[object]:
        api = llm.server
        first = await llm.complete(_request(0))  # reserves its prompt, charged 600 at the end
        charged = api.window_tokens()
        second = await llm.complete(_request(1))  # prompt fits; its answer pushes past 1,000
        third = await asyncio.gather(llm.complete(_request(2)), return_exceptions=True)
        return [first, charged, second, third[0]]

    first, charged, second, third = run_virtual(main())
    assert charged == first.prompt_tokens + 600
    assert isinstance(third, LLMError) and third.status == 429


def test_retries_ride_out_the_window_on_virtual_time() -> None:
    llm = SimulatedLLM(API, max_retries=4, backoff_s=10.0)

    async def main() -> float:
        await asyncio.gather(*(llm.complete(_request(i)) for i in range(15)))
        return asyncio.get_running_loop().time()

    end = run_virtual(main())
    assert llm.retries >= 5
    assert end >= 60.0  # the 429'd requests had to wait for the window to slide


def test_builtin_api_profiles_are_named_simulated_and_follow_the_tiers() -> None:
    llm = simulated("api-gpt-4o-mini")
    assert llm.endpoint == "sim:api-gpt-4o-mini"
    assert "simulated" in llm.model
    tiers = [PROFILES[f"api-gpt-4o-mini-tier{t}"] for t in range(1, 6)]
    assert [(p.rpm_limit, p.tpm_limit) for p in tiers] == [
        (500, 200_000),
        (5_000, 2_000_000),
        (5_000, 4_000_000),
        (10_000, 10_000_000),
        (30_000, 150_000_000),
    ]
    assert PROFILES["api-gpt-4o-mini"].tpm_limit == tiers[1].tpm_limit  # the default is tier 2


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
