"""One backend over several endpoints that serve the same model: ``backends.router([...])``.

The router is an :class:`~flashevolve.backends.base.LLM` (and a ``LoadReporter``), so anything
that takes a backend takes a router -- including the two roles of an ``Evolver``
(``backend={"task": router_a, "reflection": router_b}``).  Its endpoints are ordinary clients
(``OpenAICompatLLM`` or any other LLM), each with its own concurrency cap, deadlines, hedging,
retries and circuit breaker (:mod:`flashevolve.backends.resilience`); the router decides only
*where* each request goes and *when to move it*:

- **Late binding, capped.**  A request goes to an endpoint only when that endpoint has room under
  its client's ``max_concurrency``; until then it waits at the router (in arrival order, or by
  ``request.priority`` with ``queue="priority"``), so it is never stuck behind a slow server
  while a fast one is free.
- **Least loaded** (:mod:`flashevolve.backends.routing.choice`): the router's own requests
  outstanding at each endpoint, refined by what the server reports on ``/metrics`` (requests it
  runs for other clients and requests it has waiting), looked at every ``check_every_s``.
  Optional prefix affinity keeps requests that share a system message (or prompt prefix) on one
  server for its prefix cache, within a load bound.
- **Health and failover** (:mod:`flashevolve.backends.routing.endpoint`): an endpoint that
  refuses connections, opens its circuit or fails ``down_after`` attempts in a row is taken out;
  when its client is about to retry a request, the router moves the request to another endpoint
  instead (the abandoned attempt is cancelled, so the server it left aborts it), and a request
  that failed for good on one endpoint is tried on another.  An endpoint that is out is checked
  every ``check_every_s`` and used again when it answers.  With no endpoint usable, requests
  wait up to ``give_up_s`` for one to come back.
- **Cancellation** of the caller cancels the attempt in flight, which closes its connection:
  the server that has the request aborts it.
- **What happened** reaches the event log through ``ChatRequest.observe``: a ``routed`` notice
  each time a request is sent to an endpoint (``request_routed`` events; data: endpoint, reason
  ``least_loaded`` / ``affinity`` / ``affinity_overflow`` / ``moved``, and for a move the endpoint it left and the
  fault); the instrumented backend logs the request's later events -- its retries, faults and
  its ``request_finished`` -- under the endpoint that has it, so ``frames.requests`` and
  ``summary()["endpoints"]`` count per endpoint.  Endpoint state changes are
  ``endpoint_state`` events (``source: "router"``).

Times are loop seconds (virtual under the simulator).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flashevolve.backends.base import LLM, BackendLoad, ChatRequest, ChatResult, Fault, LLMError
from flashevolve.backends.base import Notice as _Notice
from flashevolve.backends.routing.choice import AffinityFn, Chooser, affinity_function
from flashevolve.backends.routing.endpoint import Endpoint
from flashevolve.backends.routing.health import Health
from flashevolve.backends.routing.settings import (
    EndpointSpec,
    RouterSettings,
    parse_endpoints,
    router_settings,
)
from flashevolve.errors import ConfigError


@dataclass(order=True)
class _Waiter:
    priority: int
    arrival: int
    future: asyncio.Future[tuple[Endpoint, str]] = field(compare=False)
    key: str | None = field(compare=False)
    avoid: Endpoint | None = field(compare=False)


@dataclass
class _LoopState:
    """The router's waiting line of one event loop (a router may serve several loops)."""

    waiters: list[_Waiter] = field(default_factory=list)


@dataclass(frozen=True)
class _Moved:
    fault: str


class Router:
    """Requests spread over ``backends`` (see the module docstring).

    ``backends``: LLM objects and/or base URLs (or :class:`EndpointSpec`); URLs become
    ``OpenAICompatLLM(url, model, **client_options)``.  ``affinity``: ``"none"``, ``"system"``,
    ``"prefix"`` or a function ``request -> key | None``.  ``settings``: a
    :class:`RouterSettings` or a dict of its fields.  The router owns its endpoints' clients:
    ``aclose()`` closes them.
    """

    def __init__(
        self,
        backends: Sequence[LLM | str | EndpointSpec],
        *,
        model: str | None = None,
        affinity: str | AffinityFn | None = None,
        settings: RouterSettings | dict[str, Any] | None = None,
        name: str | None = None,
        **client_options: Any,
    ) -> None:
        if not backends:
            raise ConfigError("router: give at least one endpoint (an LLM or a base URL)")
        base = settings.model_dump() if isinstance(settings, RouterSettings) else settings or {}
        affinity_fn: AffinityFn | None = None
        if callable(affinity):
            affinity_fn = affinity
        elif affinity is not None:
            base = {**base, "affinity": affinity}
        self.settings = router_settings(base)
        members = [_member(b, model, client_options) for b in backends]
        llms = [llm for llm, _ in members]
        models = sorted({llm.model for llm in llms})
        if model is None and len(models) > 1:
            raise ConfigError(
                f"router: the endpoints serve different models ({', '.join(models)}); a router "
                "spreads requests for one model -- give model= to name it, or use one router "
                "per model"
            )
        self.model = model or llms[0].model
        self.endpoints = [
            Endpoint(llm, label, i, _cap(llm)) for i, (llm, label) in enumerate(_labelled(members))
        ]
        caps = [e.cap for e in self.endpoints]
        #: requests the router can have in flight at once (None: an endpoint has no cap)
        self.max_concurrency: int | None = (
            None if any(c is None for c in caps) else sum(c for c in caps if c)
        )
        simulated = all(e.label.startswith("sim:") for e in self.endpoints)
        self.endpoint = name or f"{'sim:' if simulated else ''}router[{len(self.endpoints)}]"
        self._chooser = Chooser(self.settings, affinity_fn or affinity_function(self.settings))
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._arrivals = itertools.count()
        self._health = Health(self.endpoints, self.settings, on_up=self._dispatch)

    def __repr__(self) -> str:
        return f"Router({[e.label for e in self.endpoints]!r}, model={self.model!r})"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "router",
            "endpoint": self.endpoint,
            "model": self.model,
            "settings": self.settings.model_dump(),
            "endpoints": [
                getattr(e.llm, "describe", lambda e=e: {"endpoint": e.label})()
                for e in self.endpoints
            ],
        }

    def stats(self) -> dict[str, Any]:
        """Per endpoint: state, outstanding, routed, finished, failed, moved away, times taken
        out, cap -- since the router was made."""
        return {"endpoints": {e.label: e.counts() for e in self.endpoints}}

    # -- a request ---------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> ChatResult:
        key = self._chooser.key(request)
        moves_left = self.settings.max_moves
        left: Endpoint | None = None
        fault = ""
        while True:
            endpoint, why = await self._acquire(request, key, avoid=left)
            endpoint.routed += 1
            self._health.log_changes(request)
            data: dict[str, Any] = {"endpoint": endpoint.label, "reason": why}
            if left is not None:
                data.update(reason="moved", moved_from=left.label, fault=fault)
            request.notify(_Notice("routed", data))
            try:
                outcome = await self._attempt(endpoint, request, may_move=moves_left > 0)
            except LLMError as err:
                if not self._fails_over(endpoint, err, request, moves_left):
                    endpoint.failed += 1
                    raise
                outcome = _Moved(str(err.fault))
            finally:
                endpoint.outstanding -= 1
                self._dispatch()
            if isinstance(outcome, _Moved):
                endpoint.moved_away += 1
                moves_left -= 1
                left, fault = endpoint, outcome.fault
                continue
            self._health.answered(endpoint)
            return outcome

    async def _attempt(
        self, endpoint: Endpoint, request: ChatRequest, *, may_move: bool
    ) -> ChatResult | _Moved:
        """One try at ``endpoint``; ``_Moved`` when the router took the request away."""
        loop = asyncio.get_running_loop()
        move: asyncio.Future[str] = loop.create_future()

        def observe(notice: _Notice) -> None:
            named = notice.data.get("endpoint")
            if named is not None and named != endpoint.label:  # the client's own name for it
                notice = dataclasses.replace(
                    notice, data={**notice.data, "endpoint": endpoint.label}
                )
            request.notify(notice)  # logged under this endpoint (see the module docstring)
            if notice.kind == "retried":
                fault = str(notice.data.get("fault"))
                self._health.attempt_failed(endpoint, fault, request)
            elif notice.kind == "endpoint_state" and "source" not in notice.data:
                state = str(notice.data.get("state"))
                self._health.circuit_reported(endpoint, state, request)
                if state != "open":
                    return
                fault = Fault.CIRCUIT_OPEN
            else:
                return
            if may_move and not move.done() and self._health.usable_elsewhere(endpoint):
                move.set_result(fault)

        attempt = loop.create_task(
            endpoint.llm.complete(dataclasses.replace(request, observe=observe))
        )
        try:
            await asyncio.wait((attempt, move), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not attempt.done():
                attempt.cancel()  # closes its connection: the server aborts the request
                await asyncio.wait((attempt,))
        if not attempt.cancelled():
            return attempt.result()  # an answer that came as the move was decided is kept
        if not move.done():
            raise asyncio.CancelledError
        return _Moved(move.result())

    def _fails_over(
        self, endpoint: Endpoint, err: LLMError, request: ChatRequest, moves_left: int
    ) -> bool:
        """A request that failed for good at ``endpoint``: try it elsewhere?  Not when the
        request itself was rejected (it fails anywhere), nor with one endpoint (its client
        already retried)."""
        if not err.infrastructure:
            return False
        self._health.attempt_failed(endpoint, str(err.fault), request)
        return moves_left > 0 and len(self.endpoints) > 1

    # -- waiting for an endpoint -------------------------------------------------------------
    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(loop)
        if state is None:
            state = self._per_loop[loop] = _LoopState()
        return state

    async def _acquire(
        self, request: ChatRequest, key: str | None, avoid: Endpoint | None
    ) -> tuple[Endpoint, str]:
        """An endpoint with room (counted in), in waiting order; waits while none has room and
        gives up after ``give_up_s`` without any usable endpoint."""
        loop = asyncio.get_running_loop()
        self._health.check_due()
        priority = request.priority if self.settings.queue == "priority" else 0
        waiter = _Waiter(priority, next(self._arrivals), loop.create_future(), key, avoid)
        heapq.heappush(self._state().waiters, waiter)
        self._dispatch()
        give_up_at: float | None = None
        try:
            while not waiter.future.done():
                await asyncio.wait((waiter.future,), timeout=self.settings.check_every_s)
                if waiter.future.done():
                    break
                self._health.check_due()
                self._dispatch()
                if any(e.up for e in self.endpoints):
                    give_up_at = None
                    continue
                now = loop.time()
                give_up_at = give_up_at if give_up_at is not None else now + self.settings.give_up_s
                if now >= give_up_at and not waiter.future.done():
                    waiter.future.cancel()
                    raise LLMError(
                        f"{self.endpoint}: no endpoint answered for {self.settings.give_up_s:g}s "
                        f"({', '.join(e.label for e in self.endpoints)} all down)",
                        fault=Fault.CIRCUIT_OPEN,
                    )
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                granted, _ = waiter.future.result()
                granted.outstanding -= 1  # granted as we were cancelled: hand it on
                self._dispatch()
            else:
                waiter.future.cancel()
            raise
        return waiter.future.result()

    def _dispatch(self) -> None:
        """Give free endpoints to the waiters, first in order first."""
        waiters = self._state().waiters
        now = asyncio.get_running_loop().time()
        while waiters:
            head = waiters[0]
            if head.future.done():
                heapq.heappop(waiters)
                continue
            candidates = [e for e in self.endpoints if e.up and e.has_room()]
            if not candidates:
                return
            if head.avoid is not None and len(candidates) > 1:
                candidates = [e for e in candidates if e is not head.avoid]
            endpoint, why = self._chooser.pick(candidates, head.key, now, len(self.endpoints))
            heapq.heappop(waiters)
            endpoint.outstanding += 1
            endpoint.peak = max(endpoint.peak, endpoint.outstanding)
            head.future.set_result((endpoint, why))

    # -- load ------------------------------------------------------------------------------------
    async def loads(self) -> dict[str, BackendLoad]:
        """Each usable endpoint's own load, read now (those that can tell)."""
        up = [e for e in self.endpoints if e.up]
        looks = (self._health.read_load(e) for e in up)
        read = await asyncio.gather(*looks, return_exceptions=True)
        return {e.label: r for e, r in zip(up, read, strict=True) if isinstance(r, BackendLoad)}

    async def load(self) -> BackendLoad | None:
        """The endpoints' loads added up (KV fill: their mean); ``None`` if none can tell."""
        loads = list((await self.loads()).values())
        if not loads:
            return None
        kv = [x.kv_usage for x in loads if x.kv_usage is not None]
        return BackendLoad(
            running=sum(x.running for x in loads),
            waiting=sum(x.waiting for x in loads),
            kv_usage=sum(kv) / len(kv) if kv else None,
        )

    async def aclose(self) -> None:
        """Stop this loop's checks and close every endpoint's client."""
        with contextlib.suppress(RuntimeError):  # no running loop: no checks to stop
            self._per_loop.pop(asyncio.get_running_loop(), None)
            await self._health.aclose()
        for endpoint in self.endpoints:
            await endpoint.llm.aclose()


def _member(
    backend: LLM | str | EndpointSpec, model: str | None, options: dict[str, Any]
) -> tuple[LLM, str | None]:
    """(client, its label if the spec names one)."""
    if isinstance(backend, str):
        backend = EndpointSpec(base_url=backend)
    if not isinstance(backend, EndpointSpec):
        return backend, None
    if model is None:
        raise ConfigError(
            f"router: endpoint {backend.base_url} is a URL; give model= (the served model name)"
        )
    from flashevolve.backends.openai_compat import OpenAICompatLLM

    kwargs = dict(options)
    for name in ("max_concurrency", "api_key_env", "stream"):
        value = getattr(backend, name)
        if value is not None:
            kwargs[name] = value
    return OpenAICompatLLM(backend.base_url, model, **kwargs), backend.name


def _cap(llm: LLM) -> int | None:
    cap = getattr(llm, "max_concurrency", None)
    return int(cap) if isinstance(cap, int) and cap > 0 else None


def _labelled(members: list[tuple[LLM, str | None]]) -> list[tuple[LLM, str]]:
    """Each endpoint's label for events: the name given, else its own endpoint, numbered when
    several share one (in-process simulators are all ``sim:<profile>``)."""
    labels = [name or str(llm.endpoint) for llm, name in members]
    out: list[tuple[LLM, str]] = []
    seen: dict[str, int] = {}
    for (llm, _), label in zip(members, labels, strict=True):
        if labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            label = f"{label}#{seen[label]}"
        out.append((llm, label))
    return out


def router(
    backends: Sequence[LLM | str | EndpointSpec] | str | Path,
    *,
    model: str | None = None,
    affinity: str | AffinityFn | None = None,
    settings: RouterSettings | dict[str, Any] | None = None,
    name: str | None = None,
    **client_options: Any,
) -> Router:
    """A :class:`Router` over ``backends``: a list of LLMs / base URLs, a comma list of URLs,
    or an endpoints file (:func:`~flashevolve.backends.routing.settings.parse_endpoints`; a
    file's ``model`` and ``router`` settings are used unless given here)."""
    if isinstance(backends, str | Path):
        parsed = parse_endpoints(backends)
        model = model or parsed.model
        if settings is None:
            settings = parsed.router
        backends = list(parsed.endpoints)
    return Router(
        backends, model=model, affinity=affinity, settings=settings, name=name, **client_options
    )


def router_from_options(
    base_url: str | None,
    endpoints: str | None,
    model: str | None,
    **client_options: Any,
) -> Router | None:
    """The command line's router: ``--endpoints FILE`` or a ``--base-url`` holding several
    comma-separated URLs; ``None`` for one URL (or none), which stays a plain client.
    ``client_options``: the options of each endpoint's client (``max_concurrency`` from
    ``--concurrency``, ``api_key_env``, ``stream``, ``queue``); ``None`` values are dropped."""
    options = {k: v for k, v in client_options.items() if v is not None}
    if endpoints and base_url:
        raise ConfigError("give --endpoints FILE or --base-url URL1,URL2,..., not both")
    if endpoints:
        return router(endpoints, model=model, **options)
    if base_url and "," in base_url:
        return router(base_url, model=model, **options)
    return None
