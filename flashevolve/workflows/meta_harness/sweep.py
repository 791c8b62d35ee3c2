"""One validation sweep of a harness: the runner's evaluation and the events it leaves."""

from __future__ import annotations

from flashevolve.artifacts import Artifact
from flashevolve.events.schema import Kind
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import WorkItem
from flashevolve.workflows.meta_harness.harness import EvaluationReport, HarnessTask
from flashevolve.workflows.meta_harness.runners import HarnessRunner

STAGE_EVALUATE = "evaluate"


async def validation_sweep(
    runner: HarnessRunner | None,
    ctx: StageContext,
    task: HarnessTask,
    harness: Artifact,
    item_id: str,
    *,
    item: WorkItem | None = None,
) -> EvaluationReport:
    """The harness on the whole validation set: one ``rollout_finished`` per example (a failure
    carries its reason), then ``validation_finished`` (``item`` None: the seed's sweep)."""
    assert runner is not None, "the runner is resolved in initialize()"
    report = await runner.evaluate(
        harness.components, task, task.val, ctx.task_llm, stage=STAGE_EVALUATE, item_id=item_id
    )
    ctx.tracker.metric_calls += len(report.outcomes)
    for outcome in report.outcomes:
        ctx.emit(
            Kind.ROLLOUT_FINISHED,
            stage=STAGE_EVALUATE,
            item_id=item_id,
            artifact_id=harness.id,
            score=outcome.score,
            reason=outcome.error,
            data={"example_id": outcome.example_id},
        )
    errors = {o.example_id: o.error for o in report.outcomes if o.error}
    ctx.emit(
        Kind.VALIDATION_FINISHED,
        stage=STAGE_EVALUATE,
        item_id=None if item is None else item.item_id,
        artifact_id=harness.id,
        score=report.mean,
        reason=report.aborted,
        data={
            "n": len(report.outcomes),
            "correct": sum(1 for o in report.outcomes if o.score >= 1.0),
            "llm_calls": report.llm_calls,
            "errors": len(errors),
            "first_errors": dict(list(errors.items())[:5]),
            **({"seed": True} if item is None else {}),
        },
    )
    return report
