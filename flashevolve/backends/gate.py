"""A concurrency gate that lets the most urgent waiter in first.

A client that caps its requests in flight (``OpenAICompatLLM.max_concurrency``; the embedded
llama-server's client caps at the server's slots) queues the rest.  First come, first served lets
new jobs' requests crowd out the validation of children that already passed the gate, so finished
work waits behind work that may never pay.  Here a waiter carries a priority -- lower goes first,
as in vLLM's priority scheduling -- and ties keep arrival order.  The runtime gives later pipeline
stages lower numbers, so work closer to a result finishes first.  Measured over real HTTP against
the simulated vLLM server with the client capped at 48 requests: 22% more accepted proposals
(3 seeds), a higher best score, and 12% fewer proposals than first come, first served
(docs/benchmarks.md section 6).  The default (``OpenAICompatLLM(queue="priority")``; ``"fifo"``
opts out): the objective is accepted proposals per minute, not proposals.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PriorityGate:
    """At most ``limit`` holders; waiters enter by (priority, arrival)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.holders = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        """Live waiters (cancelled ones stay in the heap until a release skips them)."""
        return sum(1 for *_, fut in self._waiters if not fut.done())

    @asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        # A free slot means nobody is waiting: _release hands its slot straight to the next
        # live waiter, so live waiters exist only while every slot is held.  (No scan of the
        # waiters here: this runs for every request.)
        if self.holders < self.limit:
            self.holders += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), fut))
        try:
            await fut  # _release counted us in before waking us
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # woken and cancelled at once: pass the slot on
            raise

    def _release(self) -> None:
        self.holders -= 1
        while self._waiters:
            *_, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self.holders += 1
                fut.set_result(None)
                return
