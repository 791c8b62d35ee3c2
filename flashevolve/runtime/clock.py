"""Clocks: every time read in flashevolve goes through one of these.

Two kinds of time exist in a run:
- *run time* (``Clock.now``): seconds since the run started, read from the asyncio loop.  On a
  normal loop it advances with the wall; on :class:`VirtualTimeLoop` it jumps straight to the next
  scheduled timer, so a simulated 30-minute run takes seconds and is exactly repeatable.
- *wall time* (``Clock.wall``): always real seconds since the run started, recorded beside run
  time so that the orchestration overhead of a virtual run can be measured.

Because run time comes from the loop, ``asyncio.sleep`` / ``asyncio.wait_for`` inside the runtime
and the simulator stay correct under both loops; code never calls ``time.time()`` directly.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    """What the runtime needs from time."""

    def now(self) -> float:
        """Run time in seconds since :meth:`start` (virtual or real)."""
        ...

    def wall(self) -> float:
        """Real elapsed seconds since :meth:`start`."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """Reads run time from the running asyncio loop (real or virtual)."""

    def __init__(self, offset: float = 0.0) -> None:
        # ``offset`` lets a resumed run continue the time axis of the run it resumes.
        self.offset = offset
        self._t0: float | None = None
        self._w0 = time.perf_counter()

    def start(self) -> None:
        self._t0 = asyncio.get_running_loop().time()
        self._w0 = time.perf_counter()

    def now(self) -> float:
        loop_time = asyncio.get_running_loop().time()
        if self._t0 is None:
            self._t0 = loop_time
        return self.offset + loop_time - self._t0

    def wall(self) -> float:
        return self.offset + time.perf_counter() - self._w0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when told to: for unit tests of policies and metrics."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def start(self) -> None:  # parity with LoopClock
        pass

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
        await asyncio.sleep(0)


class _VirtualSelector(selectors.DefaultSelector):
    """Selector that turns a blocking wait into a jump of virtual time.

    asyncio's ``_run_once`` computes ``timeout`` as the delay until the next timer and passes it
    to ``select``.  Instead of blocking we poll real file descriptors without waiting and move the
    virtual clock forward by ``timeout``, so the timer fires immediately.  When nothing is
    scheduled at all (``timeout is None``) something real must happen -- a thread finishing
    ``run_in_executor`` or a socket -- so we do block, on real time, for a short while.
    """

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            return super().select(0.05)
        ready = super().select(0)
        if not ready and timeout > 0:
            self._loop._virtual_now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` is virtual and jumps to the next scheduled event."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = start
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now


def run_virtual(main: Callable[[], Awaitable[T]] | Awaitable[T], *, debug: bool = False) -> T:
    """Run a coroutine to completion on a fresh :class:`VirtualTimeLoop`."""
    loop = VirtualTimeLoop()
    try:
        asyncio.set_event_loop(loop)
        coro = main() if callable(main) else main
        return loop.run_until_complete(coro)
    finally:
        try:
            cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every unfinished task of a loop that is not running, and let them unwind."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
