"""What flows through the queues, and what a workflow declares about its stages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext


@dataclass(slots=True)
class WorkItem:
    """One unit of work waiting for (or inside) a stage.

    ``version_stamp``/``frontier_stamp`` are the pool counters at the moment the work's *basis*
    was chosen (the parent selection); downstream items inherit them, so the lag seen at any stage
    says how much the pool moved since the information in the item was current.
    """

    item_id: str
    stage: str
    payload: Any
    version_stamp: int
    frontier_stamp: int
    created_at: float
    job_id: str
    enqueued_at: float = 0.0
    patched: bool = False


#: A handler returns the (next_stage, payload) pairs to send downstream; [] ends the job's line.
Handler = Callable[[WorkItem, "StageContext"], Awaitable[Sequence[tuple[str, Any]]]]


@dataclass(slots=True)
class StageSpec:
    name: str
    handler: Handler
    role: str = "task"  # which LLM slot it mostly uses: "task" or "reflection"
    check_staleness: bool = False  # hand stale items to the staleness policy before handling
    default_workers: int = 4
    description: str = ""


@dataclass(slots=True)
class Emitted:
    stage: str
    payload: Any
    meta: dict[str, Any] = field(default_factory=dict)
