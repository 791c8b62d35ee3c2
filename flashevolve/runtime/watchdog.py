"""The watchdog: no work item may hold a worker forever.

Every item a worker handles runs as its own task, registered here with the moment it started.
Progress is any backend request of that item finishing or failing (the instrumented backend logs
them with the item's id).  Every ``check_every_s`` the watchdog looks at the items in hand; one
that made no progress for ``stall_s`` seconds of run time is cancelled (its requests with it, so
the server stops working for nobody), logged as a ``watchdog`` event with how long it stalled,
and dropped -- its worker takes the next item.  A client that enforces deadlines (the OpenAI-
compatible backend does) makes this rare; the watchdog is for what no deadline covers: a task's
own code, a hook that blocks, a request whose deadline was set too long.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flashevolve.events.schema import Event, Kind

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext

#: Request outcomes that count as progress of the item that sent them.
_PROGRESS = frozenset({str(Kind.REQUEST_FINISHED), str(Kind.REQUEST_FAILED)})


@dataclass(slots=True)
class _InHand:
    stage: str
    task: asyncio.Task[Any]
    last_progress: float
    stalled: bool = False


@dataclass
class Watchdog:
    """Cancels items that made no progress for ``stall_s`` seconds (run clock)."""

    stall_s: float = 600.0
    check_every_s: float = 30.0
    _items: dict[str, _InHand] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stall_s <= 0 or self.check_every_s <= 0:
            raise ValueError("stall_s and check_every_s must be positive")

    def observe(self, event: Event) -> None:
        """Event-log listener: a request of an item in hand ended -- it is moving."""
        if event.kind in _PROGRESS and event.item_id in self._items:
            self._items[event.item_id].last_progress = event.ts

    def track(self, item_id: str, stage: str, task: asyncio.Task[Any], now: float) -> None:
        self._items[item_id] = _InHand(stage, task, now)

    def release(self, item_id: str) -> bool:
        """Forget an item; True when the watchdog was the one that cancelled it."""
        held = self._items.pop(item_id, None)
        return held is not None and held.stalled

    async def run(self, ctx: StageContext) -> None:
        while True:
            await ctx.clock.sleep(self.check_every_s)
            self.check(ctx)

    def check(self, ctx: StageContext) -> list[str]:
        """Cancel every stalled item now; returns their ids."""
        now = ctx.now()
        cancelled = []
        for item_id, held in list(self._items.items()):
            quiet = now - held.last_progress
            if held.stalled or quiet < self.stall_s or held.task.done():
                continue
            held.stalled = True
            held.task.cancel()
            cancelled.append(item_id)
            ctx.emit(
                Kind.WATCHDOG,
                stage=held.stage,
                item_id=item_id,
                latency_s=quiet,
                reason=f"no progress for {quiet:.0f} s (limit {self.stall_s:g} s): cancelled",
            )
        return cancelled
