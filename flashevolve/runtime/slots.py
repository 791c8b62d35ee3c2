"""The bound on jobs in flight, movable while jobs hold it."""

from __future__ import annotations

import asyncio


class JobSlots:
    """The bound on jobs in flight: a semaphore whose size may change while jobs hold slots
    (the adaptive controller moves it).  Shrinking never interrupts a job; new jobs wait until
    enough old ones have finished.  One waiter at a time (the job source), so one event will do."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        while self.used >= self.limit:
            self._changed.clear()
            await self._changed.wait()
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._changed.set()

    def set_limit(self, n: int) -> None:
        self.limit = n
        self._changed.set()
