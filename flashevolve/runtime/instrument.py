"""The runtime's view of a backend: every request becomes events, tokens are counted."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

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
    """Backend requests in flight (and request ids), shared by the instrumented LLMs of a run.

    ``count`` is every request handed to a backend and not finished; ``held`` those of them that
    wait on the client's side (a client's queue for a slot, a retry's backoff; see
    ``ChatRequest.on_dispatch``); ``at_server`` the rest.  ``count_s`` / ``held_s`` integrate
    both over run time, so an average over any interval is a difference of two readings.
    """

    def __init__(self) -> None:
        self.count = 0
        self.held = 0
        self.peak = 0
        self.ids = itertools.count()  # per run, so equal runs give equal request ids
        self.count_s = 0.0
        self.held_s = 0.0
        self._since: float | None = None

    @property
    def at_server(self) -> int:
        return self.count - self.held

    def integrals(self, now: float) -> tuple[float, float]:
        """(requests x seconds in flight, requests x seconds held in the client) up to ``now``."""
        dt = 0.0 if self._since is None else max(0.0, now - self._since)
        return self.count_s + dt * self.count, self.held_s + dt * self.held

    def change(self, now: float, count: int = 0, held: int = 0) -> None:
        self.count_s, self.held_s = self.integrals(now)
        self._since = now
        self.count += count
        self.held += held
        self.peak = max(self.peak, self.count)


class _Whereabouts:
    """Where one request is: at the server (the start, for backends that never say) or held by
    the client since ``held_from``.  Driven by ``ChatRequest.on_dispatch``."""

    def __init__(self, llm: InstrumentedLLM, request: ChatRequest, rid: str, t0: float) -> None:
        self.llm, self.request, self.rid, self.t0 = llm, request, rid, t0
        self.held_from: float | None = None
        self.sent = False  # went to the server at least once

    def moved(self, at_server: bool) -> None:
        now = self.llm._now()
        if not at_server and self.held_from is None:
            # Held before it was ever sent: it has waited since it started (a client decides
            # before the request goes anywhere), so the two moments are one.
            self.held_from = now if self.sent else self.t0
            self.llm.in_flight.change(now, held=1)
        elif at_server and self.held_from is not None:
            held_from, self.held_from = self.held_from, None
            self.llm.in_flight.change(now, held=-1)
            if now > held_from:
                self.llm._emit(
                    Kind.REQUEST_SENT, self.request, self.rid, data={"held_from": held_from}
                )
        if at_server:
            self.sent = True

    def finish(self) -> dict[str, Any]:
        """At the end: leave the held count; data for the terminal event when it ended held."""
        self.request.on_dispatch = None
        if self.held_from is None:
            return {}
        held_from, self.held_from = self.held_from, None
        now = self.llm._now()
        self.llm.in_flight.change(now, held=-1)
        return {"held_from": held_from} if now > held_from else {}


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
    A client that holds requests back reports it through ``ChatRequest.on_dispatch``; a request
    that waited there gets a ``request_sent`` event when it goes to the server
    (``data.held_from``), or ``data.held_from`` on its terminal event when it never left the
    client.
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
        route = {"endpoint": self.endpoint}  # moved by ``routed`` notices
        request.observe = lambda notice: self._on_notice(request, rid, notice, route)
        t0 = self._now()
        self.in_flight.change(t0, count=1)
        t0 = self._emit(Kind.REQUEST_STARTED, request, rid).ts
        where = _Whereabouts(self, request, rid, t0)
        request.on_dispatch = where.moved
        try:
            result = await self.inner.complete(request)
        except asyncio.CancelledError:
            never_sent = where.held_from is not None and not where.sent
            held = where.finish()
            self.in_flight.change(self._now(), count=-1)
            # Work thrown away, when the backend could tell (the simulator, streaming HTTP);
            # None when it could not -- and none at all if the client never sent it.
            wasted = 0 if never_sent else request.partial.get("completion_tokens")
            self._emit(
                Kind.REQUEST_CANCELLED,
                request,
                rid,
                endpoint=route["endpoint"],
                reason="cancelled" + (" while waiting in the client" if never_sent else ""),
                latency_s=self._since(t0),
                completion_tokens=wasted,
                data=held or None,
            )
            raise
        except LLMError as err:
            held = where.finish()
            self.in_flight.change(self._now(), count=-1)
            self._emit(
                Kind.REQUEST_FAILED,
                request,
                rid,
                endpoint=route["endpoint"],
                reason=str(err),
                latency_s=self._since(t0),
                data={
                    "fault": None if err.fault is None else str(err.fault),
                    "status": err.status,
                    "attempts": err.attempts,
                    "infrastructure": err.infrastructure,
                    **held,
                },
            )
            raise
        data = where.finish()
        self.in_flight.change(self._now(), count=-1)
        if result.finish_reason != "stop":
            data["finish_reason"] = result.finish_reason
        self._emit(
            Kind.REQUEST_FINISHED,
            request,
            rid,
            endpoint=route["endpoint"],
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=self._since(t0),
            data=data or None,
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
    ) -> Any:
        return self.log.emit(
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

    def _now(self) -> float:
        return self.log.clock.now() if self.log.clock else 0.0

    def _since(self, t0: float) -> float:
        return (self.log.clock.now() - t0) if self.log.clock else 0.0

    async def load(self) -> BackendLoad | None:
        """The backend's own load report, if it gives one (see :class:`LoadReporter`)."""
        return await self.inner.load() if isinstance(self.inner, LoadReporter) else None

    async def aclose(self) -> None:  # the owner of the inner backend closes it
        return None
