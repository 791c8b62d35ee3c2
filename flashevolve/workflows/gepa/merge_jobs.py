"""GEPA's merge in the pipeline: a merge job made by the job source, screened at ``gate``.

A merge needs no reflection: the job source builds the merged child (:mod:`.merge`) and sends it
down the pipeline as a :class:`~.items.Proposal` carrying :class:`~.items.MergeInfo`; ``rollout``
passes it on; ``gate`` scores it on the validation subsample and keeps it when its sum is at
least the better parent's there; ``validate`` scores it in full and admits it (``origin="merge"``,
two parents).  Events: ``proposal_made`` (``data.origin="merge"``), ``gate_passed`` /
``gate_failed`` (``data.merge``), then the usual validation and admission.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flashevolve.artifacts import Artifact
from flashevolve.events.schema import Kind
from flashevolve.workflows.evaluation import run_examples
from flashevolve.workflows.gepa.items import GatedChild, Job, MergeInfo, Proposal
from flashevolve.workflows.gepa.merge import MergeSchedule, PoolView, merge_subsample, plan_merge

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext
    from flashevolve.runtime.items import WorkItem
    from flashevolve.workflows.gepa.workflow import GepaWorkflow


def make_merge_job(
    schedule: MergeSchedule, ctx: StageContext, iteration: int
) -> tuple[Proposal | None, bool]:
    """The merge of this iteration, if any, and whether the iteration is used up.

    ``(None, False)``: no merge due, or no pair found -- reflect in this iteration.  ``(None,
    True)``: the merge reproduced a pool candidate (gepa would score it again; we count it as
    a rejected merge).  Draws from ``ctx.rng("merge")`` exactly as gepa's merge proposer draws
    from its RNG."""
    if not schedule.take_turn():
        return None, False
    pool = ctx.pool
    view = PoolView(pool)
    rng = ctx.rng("merge")

    def overlap_ok(i: int, j: int) -> bool:
        shared = set(pool.records[i].val_scores) & set(pool.records[j].val_scores)
        return len(shared) >= schedule.overlap_floor

    plan = plan_merge(rng, view, pool.dominators(), schedule.log, overlap_ok)
    if plan is None:
        return None, False
    schedule.log.triplets.append((plan.first, plan.second, plan.ancestor))
    first, second = pool.records[plan.first], pool.records[plan.second]
    position = {ex.id: n for n, ex in enumerate(ctx.task.val)}
    ids = merge_subsample(rng, first.val_scores, second.val_scores, position)
    if not ids:
        return None, False
    sums = (
        sum(first.val_scores[v] for v in ids),
        sum(second.val_scores[v] for v in ids),
    )
    info = MergeInfo(
        parents=(first.id, second.id),
        ancestor=pool.records[plan.ancestor].id,
        sources={name: pool.records[idx].id for name, idx in plan.sources.items()},
        parent_sums=sums,
    )
    child = Artifact(
        plan.components,
        parents=info.parents,
        version_stamp=pool.pool_version,
        frontier_stamp=pool.frontier_version,
        origin="merge",
        meta={"ancestor": info.ancestor, "sources": info.sources},
    )
    better = second if second.mean_score > first.mean_score else first
    by_id = {ex.id: ex for ex in ctx.task.val}
    job = Job(better.artifact, [by_id[v] for v in ids], "", iteration, 0)
    data = {
        "origin": "merge",
        "iteration": iteration,
        "parents": list(info.parents),
        "ancestor": info.ancestor,
        "sources": dict(info.sources),
        "subsample": ids,
    }
    if child.id in pool:  # gepa would score and add the same text again; the pool holds it once
        ctx.emit(
            Kind.PROPOSAL_REJECTED,
            parent_id=better.id,
            reason=f"the merge reproduces pool candidate {child.id}",
            data=data,
        )
        return None, True
    schedule.due -= 1  # reserved; given back if the child fails its screen
    ctx.emit(
        Kind.PROPOSAL_MADE,
        artifact_id=child.id,
        parent_id=better.id,
        version_stamp=pool.pool_version,
        frontier_stamp=pool.frontier_version,
        data=data,
    )
    return Proposal(job, child, None, merge=info), True


async def screen_merge(
    wf: GepaWorkflow, item: WorkItem, ctx: StageContext
) -> list[tuple[str, Any]]:
    """gepa's merge acceptance: the child's sum on the subsample >= the better parent's sum."""
    prop: Proposal = item.payload
    assert prop.merge is not None
    rollouts = await run_examples(
        ctx,
        prop.child.components,
        prop.job.minibatch,
        stage="gate",
        item_id=item.item_id,
        concurrency=wf.eval_concurrency,
    )
    child_sum = sum(r.score for r in rollouts)
    bar = max(prop.merge.parent_sums)
    passed = child_sum >= bar
    if wf.merges is not None:
        wf.merges.screened(passed)
    ctx.emit(
        Kind.GATE_PASSED if passed else Kind.GATE_FAILED,
        stage="gate",
        item_id=item.item_id,
        artifact_id=prop.child.id,
        parent_id=prop.job.parent.id,
        score=child_sum,
        version_stamp=item.version_stamp,
        data={
            "merge": True,
            "parent_sum": bar,
            "parent_sums": list(prop.merge.parent_sums),
            "subsample": [ex.id for ex in prop.job.minibatch],
        },
    )
    return [("validate", GatedChild(prop, rollouts))] if passed else []
