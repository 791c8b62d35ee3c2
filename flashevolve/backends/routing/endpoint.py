"""One endpoint as the router sees it: its client, how busy it is, whether it is usable, and what it
has served.

Health has two states.  ``up``: requests are routed to it.  ``down``: none are; it is checked
every ``check_every_s`` and comes back ``up`` when a check says it answers.  (Answers that still
arrive from it do not bring it back: those requests were sent before it went out.)  While its
client's circuit breaker is not closed again, an ``up`` endpoint takes one request at a time:
the client holds requests until its own probe is answered, and the others go elsewhere.  What takes it ``down``: a refused connection or an
open circuit (at once), ``down_after`` failed attempts in a row, or a failed health check.

A health check of an HTTP endpoint is ``GET /health`` next to ``/v1`` (vLLM, llama-server and
flashevolve's servers have it): 200 -- up; 404/405/401/403 -- the server answers but has no such
page (a hosted API), up; 5xx (503: still loading the model) or no connection -- down.  A backend
with a ``health()`` coroutine is asked that; one with neither (the in-process simulator) cannot
be checked, so a ``down`` one is put on trial after ``check_every_s``: it takes one request
at a time until one is answered, and the first failure takes it down again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx2

from flashevolve.backends.base import LLM, BackendLoad, Fault, LoadReporter
from flashevolve.backends.resilience.breaker import FAILURES

#: Seconds one health check may take: a slow health page must not hold anything up.
CHECK_TIMEOUT_S = 2.0

#: Statuses that say "the server answered, it just has no /health page".
_ANSWERED_WITHOUT_HEALTH = frozenset({401, 403, 404, 405})


def health_url(llm: LLM) -> str | None:
    """``<root>/health`` of an HTTP endpoint (``.../v1`` stripped); ``None`` for other backends."""
    url = str(getattr(llm, "endpoint", ""))
    if not url.startswith(("http://", "https://")):
        return None
    root = url.rstrip("/").removesuffix("/v1")
    return root + "/health"


async def check_health(llm: LLM) -> bool | None:
    """True: it answers; False: it does not; None: this backend cannot be checked."""
    own = getattr(llm, "health", None)
    if callable(own):
        return bool(await own())
    url = health_url(llm)
    if url is None:
        return None
    try:
        async with httpx2.AsyncClient(timeout=CHECK_TIMEOUT_S, trust_env=False) as http:
            status = (await http.get(url)).status_code
    except httpx2.HTTPError:
        return False
    return status == 200 or status in _ANSWERED_WITHOUT_HEALTH


@dataclass
class Endpoint:
    llm: LLM
    label: str
    index: int
    cap: int | None  # the client's own concurrency cap (None: it has none)
    state: str = "up"
    outstanding: int = 0  # this router's requests there now
    peak: int = 0  # the most it ever had at once
    failures: int = 0  # consecutive failed attempts
    trial: bool = False  # up on trial (could not be checked): one failure takes it down
    circuit: str = "closed"  # its client's circuit breaker, as the client last reported it
    # what it did (since the router was made)
    routed: int = 0
    finished: int = 0
    failed: int = 0  # requests that failed for good there
    moved_away: int = 0  # requests taken elsewhere before it answered them
    downs: int = 0
    # checks and load
    next_check_at: float = 0.0
    checking: asyncio.Task[None] | None = field(default=None, repr=False)
    load: BackendLoad | None = None
    load_at: float = -1e18
    load_ours: int = 0  # our outstanding requests when the load was read

    @property
    def up(self) -> bool:
        return self.state == "up"

    def has_room(self) -> bool:
        # One request at a time on trial, or while its client's circuit is not closed again
        # (requests there would wait for the client's probe; they go elsewhere meanwhile).
        if self.trial or self.circuit != "closed":
            return self.outstanding < 1
        return self.cap is None or self.outstanding < self.cap

    def others_load(self, now: float, max_age_s: float) -> float:
        """Requests the server holds beyond ours (other clients), plus those it has waiting
        (each waiting request counts twice: it is not even being served); 0 when the server
        does not say, or said it too long ago."""
        load = self.load
        if load is None or now - self.load_at > max_age_s:
            return 0.0
        others = max(0, load.running + load.waiting - self.load_ours)
        return float(others + load.waiting)

    def counts(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "outstanding": self.outstanding,
            "peak": self.peak,
            "routed": self.routed,
            "finished": self.finished,
            "failed": self.failed,
            "moved_away": self.moved_away,
            "downs": self.downs,
            "cap": self.cap,
        }


def counts_against(fault: str | None) -> bool:
    """A fault that says something about the endpoint's health (not a 429, not a rejection)."""
    return fault in FAILURES


def takes_down_at_once(fault: str | None) -> bool:
    """Nobody is listening there: no point in waiting for more failures."""
    return fault in (Fault.CONNECTION, Fault.CIRCUIT_OPEN)


async def read_load(llm: LLM) -> BackendLoad | None:
    return await llm.load() if isinstance(llm, LoadReporter) else None
