"""Stale work at the runtime: the policy's decision on one stale item, logged as
``stale_detected``, and what the decision does to the item (dropped, patched, or on its way)."""

from __future__ import annotations

from typing import Any

from flashevolve.events.schema import Kind
from flashevolve.policies.staleness import (
    ACCEPT,
    DISCARD,
    MERGED,
    PATCH,
    StaleDecision,
    StaleItem,
    StalenessPolicy,
)
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import WorkItem


async def judge(
    policy: StalenessPolicy, view: StaleItem, ctx: StageContext, *, stage: str
) -> StaleDecision:
    """The policy's decision on ``view`` (accepted without asking when the workflow marked it
    ``clean``), logged as ``stale_detected``."""
    if view.clean:
        decision = StaleDecision(ACCEPT, reason="nothing it depends on changed since its stamp")
        policy_name = "workflow"
    else:
        decision = await policy.decide(view, ctx)
        policy_name = policy.name
    ctx.emit(
        Kind.STALE_DETECTED,
        stage=stage,
        item_id=view.item_id,
        artifact_id=_result_id(view, decision),
        version_stamp=view.version_stamp,
        frontier_stamp=ctx.pool.frontier_version - view.frontier_lag,
        lag=view.lag,
        frontier_lag=view.frontier_lag,
        decision=decision.action,
        reason=decision.reason,
        data={"policy": policy_name, "conflict": view.conflict, **decision.data},
    )
    return decision


def _result_id(view: StaleItem, decision: StaleDecision) -> str | None:
    """The artifact the decision leaves: the repair, the one it merged into, or its own."""
    if decision.action == PATCH and decision.repair is not None:
        return decision.repair.id
    if decision.action == MERGED:
        return decision.merged_into
    return view.subject_id


def apply_decision(
    workflow: Any, item: WorkItem, decision: StaleDecision, ctx: StageContext, *, stage: str
) -> bool:
    """Carry out ``decision`` on a queued item; returns False when the item is dropped.  A
    patched item is re-stamped to the current pool and not judged again."""
    if decision.action in (DISCARD, MERGED):
        ctx.emit(
            Kind.ITEM_DROPPED,
            stage=stage,
            item_id=item.item_id,
            reason=f"stale: {decision.action}",
        )
        return False
    if decision.action == PATCH:
        item.payload = workflow.apply_patch(item, decision, ctx)
        item.version_stamp = ctx.pool.pool_version
        item.frontier_stamp = ctx.pool.frontier_version
        item.patched = True
    return True
