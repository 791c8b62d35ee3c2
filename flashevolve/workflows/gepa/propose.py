"""GEPA's ``propose`` stage: reflect on the parent's records and write the child.

One reflection call for the job's component (gepa's default), or Combee's map -> shuffle ->
reduce over a large minibatch (:mod:`.combee`).  The answer's fenced block becomes the child's
text; an unusable answer, an unchanged text and a duplicate of a pool candidate are rejected
with ``proposal_rejected`` and the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flashevolve.events.schema import Kind
from flashevolve.workflows.gepa.combee import MAP_STAGE, Reflected, ask, combee_reflect
from flashevolve.workflows.gepa.items import Job, Proposal, Reflectable
from flashevolve.workflows.gepa.reflection import build_reflection_prompt, reflective_records

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext
    from flashevolve.runtime.items import WorkItem
    from flashevolve.workflows.gepa.workflow import GepaWorkflow


async def reflect(
    wf: GepaWorkflow, ctx: StageContext, item: WorkItem, job: Job, records: list[dict[str, Any]]
) -> Reflected:
    current = job.parent[job.component]
    if wf.combee is not None and len(records) >= 4:
        return await combee_reflect(wf, ctx, item, job.component, current, records)
    prompt = build_reflection_prompt(job.component, current, records, ctx.task.describe())
    text, reason, finish = await ask(
        wf, ctx, item, prompt, stage=MAP_STAGE, metadata={"component": job.component}
    )
    data: dict[str, Any] = {} if finish in (None, "stop") else {"finish_reason": finish}
    if wf.combee is not None:  # fewer than 4 records: gepa's single-call fallback
        data["combee"] = {"k": 1, "n": len(records), "fallback": True}
    return Reflected(text, reason, data)


async def propose(wf: GepaWorkflow, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
    work: Reflectable = item.payload
    job = work.job
    records = reflective_records(job.minibatch, work.parent_rollouts)
    reflected = await reflect(wf, ctx, item, job, records)
    if reflected.text is None:
        return reject(ctx, item, job, reflected.reason or "unusable reflection", **reflected.data)
    child = job.parent.with_component(
        job.component,
        reflected.text,
        parents=(job.parent.id,),
        version_stamp=item.version_stamp,
        frontier_stamp=item.frontier_stamp,
        origin="reflection",
        meta={"component": job.component},
    )
    if child.id == job.parent.id:
        return reject(ctx, item, job, "the reflection returned the text unchanged")
    if child.id in ctx.pool:
        return reject(ctx, item, job, f"duplicate of pool candidate {child.id}")
    ctx.emit(
        Kind.PROPOSAL_MADE,
        stage="propose",
        item_id=item.item_id,
        artifact_id=child.id,
        parent_id=job.parent.id,
        version_stamp=item.version_stamp,
        frontier_stamp=item.frontier_stamp,
        data={
            "origin": "reflection",
            "component": job.component,
            "iteration": job.iteration,
            **reflected.data,
        },
    )
    return [("gate", Proposal(job, child, work.parent_rollouts))]


def reject(
    ctx: StageContext, item: WorkItem, job: Job, reason: str, **data: Any
) -> list[tuple[str, Any]]:
    ctx.emit(
        Kind.PROPOSAL_REJECTED,
        stage="propose",
        item_id=item.item_id,
        parent_id=job.parent.id,
        reason=reason,
        data={"component": job.component, **data},
    )
    return []
