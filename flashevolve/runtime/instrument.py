"""The runtime's view of a backend: every request becomes events, tokens are counted."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from flashevolve.backends.base import (
    LLM,
    BackendLoad,
    ChatRequest,
    ChatResult,
    LLMError,
    LoadReporter,
    Notice,
)
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Kind

#: Event kind of each backend notice (see ``flashevolve.backends.base.Notice``).
NOTICE_KINDS = {
    "retried": Kind.REQUEST_RETRIED,
    "fault": Kind.REQUEST_FAULT,
    "hedged": Kind.REQUEST_HEDGED,
    "hedge_resolved": Kind.HEDGE_RESOLVED,
    "endpoint_state": Kind.ENDPOINT_STATE,
    "routed": Kind.REQUEST_ROUTED,
}


class InFlight:
    """Backend requests in flight (and request ids), shared by the instrumented LLMs of a run."""

    def __init__(self) -> None:
        self.count = 0
        self.peak = 0
        self.ids = itertools.count()  # per run, so equal runs give equal request ids


class InstrumentedLLM:
    """Wraps an :class:`LLM` so that requests show up in the event log.

    Backends stay ignorant of events; this wrapper stamps ``role`` (task or reflection) and the
    stage's ``priority`` (``stage_priority``: later pipeline stages go first), emits
    ``request_started`` / ``request_finished`` / ``request_failed`` / ``request_cancelled`` with
    the backend-wide in-flight count, and feeds token usage to the budget tracker.  What the
    backend reports while a request runs -- retries, absorbed faults, hedges, circuit-breaker
    changes (``ChatRequest.observe``) -- becomes ``request_retried`` / ``request_fault`` /
    ``request_hedged`` / ``hedge_resolved`` / ``endpoint_state`` events with the request's id;
    a final failure's ``request_failed`` says its fault, status and number of attempts.
    A backend that spreads requests over several endpoints (``backends.router``) says where it
    sent one with a ``routed`` notice (``request_routed``); the request's later events carry
    that endpoint, so its ``request_finished`` names the server that answered it.
    """

    def __init__(
        self,
        inner: LLM,
        role: str,
        log: EventLog,
        in_flight: InFlight,
        on_tokens: Callable[[int], None] | None = None,
        stage_priority: dict[str, int] | None = None,
    ) -> None:
        self.inner = inner
        self.role = role
        #: stage -> ChatRequest.priority (lower is served first where a client queues)
        self.stage_priority = dict(stage_priority or {})
        self.log = log
        self.in_flight = in_flight
        self.on_tokens = on_tokens
        self.model = inner.model
        self.endpoint = inner.endpoint

    async def complete(self, request: ChatRequest) -> ChatResult:
        request.role = self.role
        request.priority = self.stage_priority.get(request.stage, request.priority)
        request.partial.clear()  # a reused request object must not carry an old count
        rid = f"r{next(self.in_flight.ids)}"
        where = {"endpoint": self.endpoint}  # moved by ``routed`` notices
        request.observe = lambda notice: self._on_notice(request, rid, notice, where)
        self.in_flight.count += 1
        self.in_flight.peak = max(self.in_flight.peak, self.in_flight.count)
        self._emit(Kind.REQUEST_STARTED, request, rid)
        t0 = self.log.clock.now() if self.log.clock else 0.0
        try:
            result = await self.inner.complete(request)
        except asyncio.CancelledError:
            self.in_flight.count -= 1
            # Work thrown away, when the backend could tell (the simulator, streaming HTTP);
            # None when it could not.
            self._emit(
                Kind.REQUEST_CANCELLED,
                request,
                rid,
                endpoint=where["endpoint"],
                reason="cancelled",
                latency_s=self._since(t0),
                completion_tokens=request.partial.get("completion_tokens"),
            )
            raise
        except LLMError as err:
            self.in_flight.count -= 1
            self._emit(
                Kind.REQUEST_FAILED,
                request,
                rid,
                endpoint=where["endpoint"],
                reason=str(err),
                latency_s=self._since(t0),
                data={
                    "fault": None if err.fault is None else str(err.fault),
                    "status": err.status,
                    "attempts": err.attempts,
                    "infrastructure": err.infrastructure,
                },
            )
            raise
        self.in_flight.count -= 1
        self._emit(
            Kind.REQUEST_FINISHED,
            request,
            rid,
            endpoint=where["endpoint"],
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=self._since(t0),
            data=None
            if result.finish_reason == "stop"
            else {"finish_reason": result.finish_reason},
        )
        if self.on_tokens is not None:
            self.on_tokens(result.prompt_tokens + result.completion_tokens)
        return result

    def _emit(
        self,
        kind: Kind,
        request: ChatRequest,
        rid: str,
        endpoint: str | None = None,
        **fields: object,
    ) -> None:
        self.log.emit(
            kind,
            stage=request.stage,
            item_id=request.item_id,
            request_id=rid,
            role=self.role,
            endpoint=endpoint or self.endpoint,
            in_flight=self.in_flight.count,
            **fields,
        )

    def _on_notice(
        self, request: ChatRequest, rid: str, notice: Notice, where: dict[str, str]
    ) -> None:
        kind = NOTICE_KINDS.get(notice.kind)
        if kind is None:  # a notice this runtime does not know: keep it, say what it was
            kind = Kind.ERROR
            data = {"notice": notice.kind, **notice.data}
        else:
            data = dict(notice.data)
        named = data.get("endpoint")
        if kind == Kind.REQUEST_ROUTED and isinstance(named, str):
            where["endpoint"] = named
        # a notice about a named endpoint (a breaker, a router's check) is logged under it
        endpoint = named if isinstance(named, str) else where["endpoint"]
        self._emit(
            kind,
            request,
            rid,
            endpoint=endpoint,
            latency_s=notice.latency_s,
            reason=notice.reason,
            data=data,
        )

    def _since(self, t0: float) -> float:
        return (self.log.clock.now() - t0) if self.log.clock else 0.0

    async def load(self) -> BackendLoad | None:
        """The backend's own load report, if it gives one (see :class:`LoadReporter`)."""
        return await self.inner.load() if isinstance(self.inner, LoadReporter) else None

    async def aclose(self) -> None:  # the owner of the inner backend closes it
        return None
