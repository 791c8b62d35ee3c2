"""What the adaptive controller measures besides stage rates: the work that turns into accepted
proposals, and the queue in front of the server.

- :class:`ObjectiveSignal` -- tokens generated per minute by the requests of the *admitting*
  stages (GEPA: ``validate``, the last stage of the pipeline).  An accepted proposal is one full
  validation, so this rate is accepted proposals per minute measured in the work that makes
  them: it moves within seconds of a change, where admissions (a few per minute) would need
  many minutes to tell a trial apart from noise.  All tokens per minute -- the signal before
  this one -- can rise while accepted proposals fall: more cheap rollouts crowding out the
  validations that admit children.
- :class:`LoadSignal` -- requests waiting per request served, over a window: waiting at the
  server (its own ``backend_load`` reports: vLLM, llama-server, the simulated engine) plus
  waiting in the client (held back by its cap on requests in flight; the runtime's
  :class:`~flashevolve.runtime.instrument.InFlight` integrates them).  About zero while the
  server has room; it rises once the server is full and more concurrency only buys queueing.
  ``None`` when neither the server nor the client can tell (a hosted API reached without a cap).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from flashevolve.events.schema import Event, Kind


class ObjectiveSignal:
    """Generated tokens per minute of the requests of the admitting stages."""

    def __init__(self, stages: list[str] | None = None) -> None:
        #: ``None``: the pipeline's last stage, set by the controller when the run starts
        self.stages = set(stages) if stages else None
        self._finished: deque[tuple[float, str | None, int]] = deque()

    def observe(self, event: Event) -> None:
        if event.kind == Kind.REQUEST_FINISHED and event.completion_tokens:
            self._finished.append((event.ts, event.stage, event.completion_tokens))

    def _trim(self, start: float) -> None:
        while self._finished and self._finished[0][0] < start:
            self._finished.popleft()

    def per_min(self, now: float, window_s: float) -> float:
        """Admitting stages' tokens per minute over the last ``window_s``."""
        self._trim(now - window_s)
        stages = self.stages
        tokens = sum(n for _, s, n in self._finished if stages is None or s in stages)
        return 60.0 * tokens / window_s

    def all_per_min(self, now: float, window_s: float) -> float:
        """Every request's tokens per minute (recorded beside the objective, for reading)."""
        self._trim(now - window_s)
        return 60.0 * sum(n for *_, n in self._finished) / window_s


@dataclass(frozen=True, slots=True)
class Load:
    """Requests over one window, time-averaged: served at the server, waiting at the server,
    waiting in the client; ``queue`` = all waiting per request served."""

    running: float
    server_waiting: float
    client_waiting: float
    #: share of the window's requests that failed for good (a rate-limited API's 429s that
    #: outlived the client's retries): a server refusing work is past its capacity too
    failed_share: float = 0.0

    @property
    def queue(self) -> float:
        return (self.server_waiting + self.client_waiting) / max(self.running, 1.0)

    def describe(self) -> str:
        text = (
            f"{self.server_waiting:.0f} waiting at the server and {self.client_waiting:.0f} in "
            f"the client per {self.running:.0f} served ({self.queue:.2f})"
        )
        return text + (f", {self.failed_share:.0%} of requests failed" if self.failed_share else "")


class LoadSignal:
    """Server reports (``backend_load`` events) and the client's own count, over a window."""

    def __init__(self) -> None:
        self._reports: dict[str, deque[tuple[float, int, int]]] = {}
        self._client: deque[tuple[float, float, float]] = deque()  # (ts, count_s, held_s)
        self._ended: deque[tuple[float, bool]] = deque()  # (ts, failed) per finished request

    def observe(self, event: Event) -> None:
        if event.kind in (Kind.REQUEST_FINISHED, Kind.REQUEST_FAILED):
            self._ended.append((event.ts, event.kind == Kind.REQUEST_FAILED))
        elif event.kind == Kind.BACKEND_LOAD and event.endpoint is not None:
            data = event.data or {}
            running, waiting = data.get("running"), data.get("waiting")
            if isinstance(running, int | float) and isinstance(waiting, int | float):
                series = self._reports.setdefault(event.endpoint, deque())
                series.append((event.ts, int(running), int(waiting)))

    def sample_client(self, now: float, in_flight: Any) -> None:
        """Read the client's integrals (``InFlight.integrals``) once per controller period."""
        if in_flight is not None and hasattr(in_flight, "integrals"):
            count_s, held_s = in_flight.integrals(now)
            self._client.append((now, count_s, held_s))

    def read(self, now: float, window_s: float) -> Load | None:
        start = now - window_s
        server_running = server_waiting = 0.0
        reported = False
        for series in self._reports.values():
            while series and series[0][0] < start:
                series.popleft()
            if series:
                reported = True
                server_running += sum(r for _, r, _ in series) / len(series)
                server_waiting += sum(w for *_, w in series) / len(series)
        held = at_server = 0.0
        client = self._client
        while len(client) > 1 and client[1][0] <= start:
            client.popleft()  # keep one reading at or before the window's start
        if len(client) >= 2 and client[-1][0] > client[0][0]:
            (t0, count0, held0), (t1, count1, held1) = client[0], client[-1]
            held = (held1 - held0) / (t1 - t0)
            at_server = (count1 - count0) / (t1 - t0) - held
        elif not reported:
            return None
        running = server_running if reported else at_server
        while self._ended and self._ended[0][0] < start:
            self._ended.popleft()
        failed = sum(f for _, f in self._ended) / len(self._ended) if self._ended else 0.0
        return Load(running, server_waiting, held, failed_share=failed)
