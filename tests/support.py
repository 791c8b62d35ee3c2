"""Helpers shared by test modules (plain functions; pytest puts this directory on sys.path)."""

from __future__ import annotations

from typing import Any

from flashevolve.events.log import EventLog
from flashevolve.pool import ArtifactPool
from flashevolve.runtime.budget import Budget, BudgetTracker
from flashevolve.runtime.clock import LoopClock
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.instrument import InFlight, InstrumentedLLM


def make_stage_context(
    task: Any,
    llm: Any = None,
    *,
    pool: ArtifactPool | None = None,
    workflow: Any = None,
    instrument: bool = False,
    clock: LoopClock | None = None,
    **fields: Any,
) -> StageContext:
    """A StageContext for driving a handler or a policy directly, without a runtime.

    The clock is a LoopClock to be started inside the loop that runs the test (``ctx.clock.
    start()``); ``instrument=True`` wraps ``llm`` so its requests become events in ``ctx.log``.
    """
    clock = clock or LoopClock()
    log = EventLog(clock=clock)
    if instrument and llm is not None:
        llm = InstrumentedLLM(llm, "task", log, InFlight())
    if workflow is None:
        from flashevolve.workflows.gepa import GepaWorkflow

        workflow = GepaWorkflow()
    return StageContext(
        task=task,
        pool=pool if pool is not None else ArtifactPool([ex.id for ex in task.val]),
        log=log,
        clock=clock,
        task_llm=llm,
        reflection_llm=llm,
        tracker=BudgetTracker(Budget()),
        workflow=workflow,
        **fields,
    )
