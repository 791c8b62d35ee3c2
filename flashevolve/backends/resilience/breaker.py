"""A circuit breaker per endpoint: stop sending to an endpoint that keeps failing, probe it now
and then, and let everything through again once a probe is answered.

- **closed**: attempts go out; ``breaker_failures`` failed attempts in a row open the circuit.
- **open** (for ``breaker_open_s``, doubled at each failed probe up to ``breaker_max_open_s``):
  attempts wait -- they do not fail, and they do not spin; hedges are not sent.
- **half-open**: the first attempt to arrive after the open period is the probe; the others
  keep waiting.  The probe answered -> closed; the probe failed -> open again, for longer.

Counted as failures: faults of the serving side (connection, timeout, truncated, malformed,
5xx, empty choices, null content).  A 429 is not (the endpoint is alive and said when to come
back), nor is a rejected request.  Any answered attempt closes the circuit.  A request that has
waited ``breaker_give_up_s`` in all (over its attempts) fails with ``circuit_open``.  Every change of state is reported
through the notice callback of the request that caused it (``endpoint_state`` events).

Times are loop seconds (virtual under the simulator).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flashevolve.backends.base import Fault, LLMError
from flashevolve.backends.resilience.settings import ResilienceSettings

#: Faults that count against an endpoint's health.
FAILURES = frozenset(
    {
        Fault.CONNECTION,
        Fault.TIMEOUT,
        Fault.TRUNCATED,
        Fault.MALFORMED,
        Fault.SERVER_ERROR,
        Fault.EMPTY_CHOICES,
        Fault.NULL_CONTENT,
        Fault.UNEXPECTED,
    }
)

StateReport = Callable[[dict[str, Any]], None]


@dataclass
class Patience:
    """How long one request may still wait for an open circuit, over all its attempts."""

    give_up_at: float | None = None  # loop time; set when it first finds the circuit not closed


class CircuitBreaker:
    def __init__(self, settings: ResilienceSettings, endpoint: str) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.state = "closed"
        self.failures = 0  # consecutive failed attempts
        self.open_for = settings.breaker_open_s
        self.open_until = 0.0
        self.opened = 0  # times the circuit opened (for stats)
        self._probe_out = False
        self._changed = asyncio.Event()

    def _set(self, state: str, report: StateReport | None, **data: Any) -> None:
        previous, self.state = self.state, state
        if state == "open":
            self.opened += 1
        if report is not None:
            report({"state": state, "previous": previous, "failures": self.failures, **data})
        self._changed.set()
        self._changed = asyncio.Event()

    async def admit(self, report: StateReport | None, patience: Patience) -> bool:
        """Wait until an attempt may go out; ``True`` if it goes as the half-open probe.
        ``patience`` is the request's: its waits add up over its attempts."""
        loop = asyncio.get_running_loop()
        while True:
            if self.state == "closed":
                return False
            now = loop.time()
            if patience.give_up_at is None:
                patience.give_up_at = now + self.settings.breaker_give_up_s
            give_up_at = patience.give_up_at
            if now >= give_up_at:
                raise LLMError(
                    f"{self.endpoint} kept failing: its circuit stayed open for "
                    f"{self.settings.breaker_give_up_s:g}s while this request waited",
                    fault=Fault.CIRCUIT_OPEN,
                )
            if self.state == "open" and now >= self.open_until:
                self._set("half_open", report)
            if self.state == "half_open" and not self._probe_out:
                self._probe_out = True
                return True
            wake = self.open_until if self.state == "open" else give_up_at
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    changed.wait(), timeout=max(0.0, min(wake, give_up_at) - now)
                )

    def allows_hedge(self) -> bool:
        return self.state == "closed"

    def succeeded(self, probe: bool, report: StateReport | None) -> None:
        self.failures = 0
        if probe:
            self._probe_out = False
        if self.state != "closed":
            self.open_for = self.settings.breaker_open_s
            self._set("closed", report)

    def failed(self, fault: str | None, probe: bool, report: StateReport | None) -> None:
        if probe:
            self._probe_out = False
        if fault not in FAILURES:
            if probe:
                self._changed.set()  # the probe proved nothing: let another waiter probe
                self._changed = asyncio.Event()
            return
        self.failures += 1
        loop = asyncio.get_running_loop()
        if self.state == "half_open" and probe:
            self.open_for = min(self.settings.breaker_max_open_s, self.open_for * 2)
            self.open_until = loop.time() + self.open_for
            self._set("open", report, open_s=self.open_for, fault=fault)
        elif self.state == "closed" and self.failures >= self.settings.breaker_failures:
            self.open_until = loop.time() + self.open_for
            self._set("open", report, open_s=self.open_for, fault=fault)

    def released(self, probe: bool) -> None:
        """The attempt was cancelled before it told anything."""
        if probe:
            self._probe_out = False
            self._changed.set()
            self._changed = asyncio.Event()
