"""The router's view of its endpoints' health: taking an endpoint out and back in, the checks that
run every ``check_every_s``, and the ``endpoint_state`` notices that record each change.

(The rules themselves are in :mod:`flashevolve.backends.routing.endpoint`.)  A change found
while a request is at hand is reported on that request; one found by a check waits for the next
request routed, so every change reaches the event log in order.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from flashevolve.backends.base import BackendLoad, ChatRequest, Notice
from flashevolve.backends.routing.endpoint import (
    Endpoint,
    check_health,
    counts_against,
    read_load,
    takes_down_at_once,
)
from flashevolve.backends.routing.settings import RouterSettings


class Health:
    """Health of ``endpoints``; ``on_up`` runs when one comes back (its capacity is free)."""

    def __init__(
        self, endpoints: list[Endpoint], settings: RouterSettings, on_up: Callable[[], None]
    ) -> None:
        self.endpoints = endpoints
        self.settings = settings
        self.on_up = on_up
        self._pending: list[dict[str, Any]] = []  # changes no request has logged yet
        self._checks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, set[asyncio.Task[None]]
        ] = weakref.WeakKeyDictionary()

    # -- what requests report ----------------------------------------------------------------
    def attempt_failed(self, endpoint: Endpoint, fault: str, request: ChatRequest) -> None:
        if takes_down_at_once(fault):
            self.mark_down(endpoint, f"{fault} fault", request)
        elif counts_against(fault):
            endpoint.failures += 1
            if endpoint.trial or endpoint.failures >= self.settings.down_after:
                self.mark_down(endpoint, f"{endpoint.failures} failed attempts ({fault})", request)

    def answered(self, endpoint: Endpoint) -> None:
        # An answer from an endpoint that is out does not bring it back: the request was sent
        # before it went out (a killed server's last answers arrive after its first refusals).
        endpoint.finished += 1
        endpoint.failures = 0
        endpoint.trial = False

    def circuit_reported(self, endpoint: Endpoint, state: str, request: ChatRequest) -> None:
        """Its client's circuit breaker changed state (``open`` / ``half_open`` / ``closed``)."""
        endpoint.circuit = state
        if state == "open":
            self.mark_down(endpoint, "its client's circuit opened", request)
        elif state == "closed":
            self.on_up()  # it takes more than one request again

    def usable_elsewhere(self, endpoint: Endpoint) -> bool:
        return any(e.up for e in self.endpoints if e is not endpoint)

    # -- changes -------------------------------------------------------------------------------
    def mark_down(self, endpoint: Endpoint, reason: str, request: ChatRequest | None) -> None:
        if not endpoint.up:
            return
        endpoint.state, endpoint.trial = "down", False
        endpoint.downs += 1
        endpoint.next_check_at = asyncio.get_running_loop().time() + self.settings.check_every_s
        self._changed(endpoint, "down", "up", reason, request)

    def mark_up(self, endpoint: Endpoint, reason: str, request: ChatRequest | None) -> None:
        if endpoint.up:
            return
        endpoint.state, endpoint.failures = "up", 0
        self._changed(endpoint, "up", "down", reason, request)
        self.on_up()

    def _changed(
        self,
        endpoint: Endpoint,
        state: str,
        previous: str,
        reason: str,
        request: ChatRequest | None,
    ) -> None:
        data = {
            "endpoint": endpoint.label,
            "state": state,
            "previous": previous,
            "reason": reason,
            "source": "router",
        }
        if request is not None:
            self.log_changes(request)  # earlier changes first: the log keeps their order
            request.notify(Notice("endpoint_state", data, reason=reason))
        else:  # found by a check: logged with the next request routed
            self._pending.append(data)

    def log_changes(self, request: ChatRequest) -> None:
        pending, self._pending = self._pending, []
        for data in pending:
            request.notify(Notice("endpoint_state", data, reason=data["reason"]))

    # -- checks --------------------------------------------------------------------------------
    def check_due(self) -> None:
        """Start the checks that are due (one at a time per endpoint): health, then load."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        running = self._checks.setdefault(loop, set())
        for endpoint in self.endpoints:
            task = endpoint.checking
            if task is not None and not task.done() and task.get_loop() is loop:
                continue
            if now < endpoint.next_check_at:
                continue
            endpoint.next_check_at = now + self.settings.check_every_s
            task = loop.create_task(self._check(endpoint))
            endpoint.checking = task
            running.add(task)
            task.add_done_callback(running.discard)

    async def _check(self, endpoint: Endpoint) -> None:
        try:
            healthy = await check_health(endpoint.llm)
            if healthy is None and not endpoint.up:  # cannot be checked: try it again
                endpoint.trial = True
                self.mark_up(endpoint, "trial: it cannot be checked", None)
            elif healthy and not endpoint.up:
                self.mark_up(endpoint, "its health check answered", None)
            elif healthy is False and endpoint.up:
                self.mark_down(endpoint, "its health check failed", None)
            if endpoint.up:
                await self.read_load(endpoint)
        except Exception:  # noqa: BLE001 - a check that breaks says nothing; the next one may
            return

    async def read_load(self, endpoint: Endpoint) -> BackendLoad | None:
        load = await read_load(endpoint.llm)
        if load is not None:
            endpoint.load, endpoint.load_ours = load, endpoint.outstanding
            endpoint.load_at = asyncio.get_running_loop().time()
        return load

    async def aclose(self) -> None:
        """Cancel this loop's checks in flight."""
        tasks = list(self._checks.pop(asyncio.get_running_loop(), set()))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
