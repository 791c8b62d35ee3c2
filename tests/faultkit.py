"""Helpers for the reliability tests (not a test module): a client wrapped the way the runtime
wraps it, so that what the backend reports lands in a real event log, and readers of that log
and of a server's ``GET /stats``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx

from flashevolve.backends.base import LLM
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.runtime.clock import LoopClock
from flashevolve.runtime.instrument import InFlight, InstrumentedLLM

MSGS = [{"role": "user", "content": "hello"}]

#: Events whose ``data.fault`` is one observation of a fault by the client.
FAULT_EVENTS = (Kind.REQUEST_RETRIED, Kind.REQUEST_FAULT, Kind.REQUEST_FAILED)


def instrumented(llm: LLM) -> tuple[InstrumentedLLM, EventLog]:
    """``llm`` behind the runtime's wrapper, logging to a fresh in-memory event log (run clock:
    the running loop's, virtual under ``run_virtual``)."""
    clock = LoopClock()
    log = EventLog(clock=clock)
    return InstrumentedLLM(llm, "task", log, InFlight()), log


def of_kind(log: EventLog, kind: Kind) -> list[Event]:
    return log.of_kind(kind)


def observed_faults(log: EventLog) -> Counter[str]:
    """Client-side fault observations by fault name (retries, absorbed faults, failures)."""
    seen: Counter[str] = Counter()
    for event in log.of_kind(*FAULT_EVENTS):
        fault = (event.data or {}).get("fault")
        if fault is not None:
            seen[fault] += 1
    return seen


def server_stats(base_url: str) -> dict[str, Any]:
    """``GET /stats`` of one of our servers (``base_url`` ends in ``/v1``)."""
    with httpx.Client(timeout=10, trust_env=False) as client:
        response = client.get(base_url.removesuffix("/v1") + "/stats")
    response.raise_for_status()
    return response.json()


def lost_requests(log: EventLog) -> list[str]:
    """Request ids that started and never finished, failed or were cancelled (lost silently)."""
    started = {e.request_id for e in log.of_kind(Kind.REQUEST_STARTED)}
    ended = {
        e.request_id
        for e in log.of_kind(Kind.REQUEST_FINISHED, Kind.REQUEST_FAILED, Kind.REQUEST_CANCELLED)
    }
    return sorted(started - ended)
