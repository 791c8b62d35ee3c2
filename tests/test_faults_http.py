"""Every fault kind injected by the project's own server over real HTTP on 127.0.0.1, plain and
streamed: the server counts it on ``GET /stats``, the client holds (retries, or keeps the answer
and records the fault) and the event log shows exactly what was injected."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from faultkit import MSGS, instrumented, lost_requests, observed_faults, server_stats

from flashevolve.backends.base import ChatRequest, ChatResult, Fault, LLMError
from flashevolve.backends.faults import OBSERVED_AS, FaultKind
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.process import free_port
from flashevolve.backends.reply import Reply
from flashevolve.backends.server import ScriptedResponder, serve_in_thread
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.runtime.clock import ManualClock
from flashevolve.runtime.instrument import InstrumentedLLM

TEXT = "The quick brown fox jumps over the lazy dog."
#: Short deadlines so that a hang or a drip costs half a second of the test (an answer of this
#: server takes milliseconds, so no answer comes near them).
QUICK = {
    "hedge": False,
    "backoff_s": 0.001,
    "warmup_deadline_s": 0.5,
    "deadline_floor_s": 0.5,
    "deadline_cap_s": 3.0,
    "max_retries": 10,
}


def _client(base_url: str, stream: bool, **settings: object) -> OpenAICompatLLM:
    return OpenAICompatLLM(
        base_url, "scripted", stream=stream, resilience={**QUICK, **settings}, max_concurrency=8
    )


async def _sequential(llm: OpenAICompatLLM, n: int) -> tuple[list[str], object]:
    wrapped, log = instrumented(llm)
    texts = []
    for i in range(n):
        request = ChatRequest(
            [{"role": "user", "content": f"hello {i}"}], stage="rollout", max_tokens=64
        )
        texts.append((await wrapped.complete(request)).text)
    await llm.aclose()
    return texts, log


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", list(FaultKind), ids=str)
def test_each_fault_is_injected_counted_and_seen(kind: FaultKind, stream: bool) -> None:
    faults = f"rate=0.5,seed=2,{kind},drip_s=600,retry_after_s=0"
    with serve_in_thread(ScriptedResponder([TEXT], model="scripted"), faults=faults) as url:
        texts, log = asyncio.run(_sequential(_client(url, stream), 6))
        stats = server_stats(url)
    injected = stats["faults"]["injected"].get(str(kind), 0)
    assert injected >= 1, "the seed must inject at least one fault"
    assert stats["faults"]["injected_total"] == injected  # nothing else was injected
    # every answer arrived (a null content asked twice is kept, empty)
    allowed = {TEXT, ""} if kind == FaultKind.NULL_CONTENT else {TEXT}
    assert set(texts) <= allowed and len(texts) == 6
    # what the client saw is exactly what was injected
    seen_as = OBSERVED_AS[kind] or Fault.TIMEOUT  # a 600 s drip outlasts every deadline
    assert observed_faults(log) == {str(seen_as): injected}
    assert not lost_requests(log) and not log.of_kind(Kind.REQUEST_FAILED)
    retried = log.of_kind(Kind.REQUEST_RETRIED)
    for event in retried:
        assert set(event.data) == {"fault", "attempt", "wait_s", "status", "retry_after_s"}
        assert event.endpoint == url.rstrip("/") and event.request_id
    if kind in (FaultKind.MISSING_USAGE, FaultKind.ABSURD_USAGE, FaultKind.WRONG_MODEL):
        assert not retried  # recorded, the answer kept
        assert {e.data["action"] for e in log.of_kind(Kind.REQUEST_FAULT)} == {"accepted"}
    elif kind != FaultKind.NULL_CONTENT:
        assert len(retried) == injected


# -- Retry-After --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "announced", "cap", "low", "high"),
    [
        ("seconds", 7, 120, 7.0, 7.0),
        ("date", 7, 120, 6.0, 9.0),  # HTTP dates have one-second resolution
        ("seconds", 500, 3, 500.0, 500.0),  # asked for more than the client obeys
    ],
)
def test_retry_after_is_respected_on_the_clients_clock(
    form: str, announced: int, cap: float, low: float, high: float
) -> None:
    faults = f"rate=1,http429_retry_after,retry_after_s={announced},retry_after_form={form}"
    clock = ManualClock()  # backoff sleeps on it: no real waiting, exact accounting
    with serve_in_thread(ScriptedResponder([TEXT], model="scripted"), faults=faults) as url:
        settings = {**QUICK, "max_retries": 2, "max_retry_after_s": cap}
        llm = OpenAICompatLLM(url, "scripted", clock=clock, resilience=settings)
        wrapped, log = instrumented(llm)
        with pytest.raises(LLMError) as err:
            asyncio.run(wrapped.complete(ChatRequest(MSGS, stage="rollout")))
    assert (err.value.fault, err.value.status, err.value.attempts) == ("rate_limited", 429, 3)
    retried = log.of_kind(Kind.REQUEST_RETRIED)
    assert len(retried) == 2
    for event in retried:
        asked = event.data["retry_after_s"]
        assert low <= asked <= high
        assert min(asked, cap) <= event.data["wait_s"] <= 1.1 * min(asked, cap)
    assert clock.now() == pytest.approx(sum(e.data["wait_s"] for e in retried))
    failed = log.of_kind(Kind.REQUEST_FAILED)[0].data
    failed.pop("held_from", None)  # it ended on the client's side, after its last attempt
    assert failed == {"fault": "rate_limited", "status": 429, "attempts": 3, "infrastructure": True}


# -- hedging -------------------------------------------------------------------------------------


class StragglerResponder:
    """Answers at once -- except the first time it sees a prompt with "straggle" in it: that
    copy is stuck until the client leaves.  Tracks its own concurrency."""

    model = "scripted"

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.in_flight = self.peak = self.cancelled = 0

    async def respond(self, request: ChatRequest) -> Reply:
        prompt = request.messages[-1]["content"]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if "straggle" in prompt and prompt not in self.seen:
                self.seen.add(prompt)
                await asyncio.sleep(3600)
            return Reply(TEXT, 3, 11)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1


HEDGING = {
    "hedge": True,
    "hedge_min_samples": 5,
    "hedge_budget": 1.0,
    "min_observations": 3,
    "backoff_s": 0.001,
}


async def _warm_up(wrapped: InstrumentedLLM, n: int = 10) -> None:
    for i in range(n):
        await wrapped.complete(ChatRequest([{"role": "user", "content": f"w{i}"}], stage="rollout"))


def test_a_straggler_gets_a_copy_the_first_answer_wins_the_loser_is_cancelled() -> None:
    responder = StragglerResponder()
    with serve_in_thread(responder) as url:

        async def main() -> tuple[ChatResult, EventLog, dict[str, object]]:
            # the deadline stays long: only the hedge can rescue the stuck request quickly
            llm = OpenAICompatLLM(
                url, "scripted", stream=True, resilience={**HEDGING, "deadline_floor_s": 60}
            )
            wrapped, log = instrumented(llm)
            await _warm_up(wrapped)
            result = await wrapped.complete(
                ChatRequest([{"role": "user", "content": "straggle 1"}], stage="rollout")
            )
            for _ in range(200):  # the server thread notices the closed connection (bounded)
                if responder.cancelled:
                    break
                await asyncio.sleep(0.01)
            stats = llm.stats()
            await llm.aclose()
            return result, log, stats

        result, log, stats = asyncio.run(main())
    assert result.text == TEXT
    # (on a loaded machine a warm-up request may be slow enough to be hedged too: look at the
    # straggler's own request, and check that every hedge was resolved)
    straggler = log.of_kind(Kind.REQUEST_STARTED)[-1].request_id
    all_hedged, all_resolved = log.of_kind(Kind.REQUEST_HEDGED), log.of_kind(Kind.HEDGE_RESOLVED)
    assert len(all_hedged) == len(all_resolved)
    hedged = [e for e in all_hedged if e.request_id == straggler]
    resolved = [e for e in all_resolved if e.request_id == straggler]
    assert len(hedged) == len(resolved) == 1
    assert resolved[0].data["winner"] == "hedge"
    assert resolved[0].data["wasted_tokens"] == 0  # the stuck copy generated nothing
    assert responder.cancelled >= 1  # the loser was cancelled on the server too
    assert stats["hedges_sent"] == len(all_hedged) and stats["hedges_won"] >= 1
    assert not log.of_kind(Kind.REQUEST_RETRIED)  # no retry was needed


def test_hedges_wait_for_a_client_slot_and_never_exceed_the_cap() -> None:
    responder = StragglerResponder()
    with serve_in_thread(responder) as url:

        async def main() -> tuple[list[ChatResult], EventLog]:
            # cap 2: both slots held by stuck primaries; their hedges wait until a deadline
            # (floor 0.5 s) frees a slot, and then go before anything else
            llm = OpenAICompatLLM(
                url,
                "scripted",
                max_concurrency=2,
                resilience={**HEDGING, "deadline_floor_s": 0.5},
            )
            wrapped, log = instrumented(llm)
            await _warm_up(wrapped)
            results = await asyncio.gather(
                *(
                    wrapped.complete(
                        ChatRequest([{"role": "user", "content": f"straggle {i}"}], stage="rollout")
                    )
                    for i in range(6)
                )
            )
            await llm.aclose()
            return list(results), log

        results, log = asyncio.run(main())
    assert [r.text for r in results] == [TEXT] * 6
    assert responder.peak <= 2  # never more than the cap at the server, hedges included
    assert not lost_requests(log)


# -- circuit breaker -----------------------------------------------------------------------------


def test_circuit_opens_on_a_dead_endpoint_and_closes_when_it_is_back() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"  # nothing listens there yet: connections are refused
    settings = {
        "hedge": False,
        "backoff_s": 0.001,
        "breaker_failures": 3,
        "breaker_open_s": 0.2,
        "breaker_max_open_s": 1.0,
        "max_retries": 20,
    }
    llm = OpenAICompatLLM(url, "scripted", resilience=settings)
    wrapped, log = instrumented(llm)
    with contextlib.ExitStack() as stack:

        def bring_it_back(event: Event) -> None:
            opened = sum(1 for e in log.of_kind(Kind.ENDPOINT_STATE) if e.data["state"] == "open")
            if event.kind == Kind.ENDPOINT_STATE and event.data["state"] == "open" and opened == 2:
                stack.enter_context(serve_in_thread(ScriptedResponder([TEXT]), port=port))

        log.subscribe(bring_it_back)

        async def main() -> tuple[ChatResult, dict[str, object]]:
            result = await wrapped.complete(ChatRequest(MSGS, stage="rollout"))
            # the client's counters belong to this loop: read them before it goes away
            stats = llm.stats()
            await llm.aclose()
            return result, stats

        result, stats = asyncio.run(main())
    assert result.text == TEXT
    states = [e.data["state"] for e in log.of_kind(Kind.ENDPOINT_STATE)]
    assert states == ["open", "half_open", "open", "half_open", "closed"]
    reopened = log.of_kind(Kind.ENDPOINT_STATE)[2].data
    assert reopened["open_s"] == pytest.approx(0.4) and reopened["fault"] == "connection"
    # 3 failures opened it, 1 failed probe; nothing was sent while it was open
    assert observed_faults(log) == {"connection": 4}
    assert stats["breaker_opened"] == 2
