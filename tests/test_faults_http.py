"""Every fault kind injected by the project's own server over real HTTP on 127.0.0.1, plain and
streamed: the server counts it on ``GET /stats``, the client holds (retries, or keeps the answer
and records the fault) and the event log shows exactly what was injected."""

from __future__ import annotations

import asyncio

import pytest
from faultkit import MSGS, lost_requests, observed_faults, server_stats

from faultkit import instrumented
from flashevolve.backends.base import ChatRequest, Fault
from flashevolve.backends.faults import OBSERVED_AS, FaultKind
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.server import ScriptedResponder, serve_in_thread
from flashevolve.events.schema import Kind

TEXT = "The quick brown fox jumps over the lazy dog."
#: Short deadlines so that a hang or a drip costs a fraction of a second of the test.
QUICK = {
    "hedge": False,
    "backoff_s": 0.001,
    "warmup_deadline_s": 0.25,
    "deadline_floor_s": 0.25,
    "deadline_cap_s": 2.0,
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
