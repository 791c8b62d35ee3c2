"""GEPA's events written in more than one place: the one ``admitted`` event of a child (plain or
confirmed after speculation), and an item's end with its reason."""

from __future__ import annotations

from typing import Any

from flashevolve.events.schema import Kind
from flashevolve.pool import CandidateRecord
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import WorkItem
from flashevolve.workflows.gepa.items import Proposal


def emit_admitted(
    ctx: StageContext,
    item: WorkItem,
    prop: Proposal,
    record: CandidateRecord,
    scores: dict[str, float],
    **extra: Any,
) -> None:
    """The one ``admitted`` event of a child that joined the pool for good."""
    child = prop.child
    ctx.emit(
        Kind.ADMITTED,
        stage="validate",
        item_id=item.item_id,
        artifact_id=child.id,
        parent_id=prop.job.parent.id,
        score=record.mean_score,
        latency_s=ctx.now() - item.created_at,  # the job's time from its start to admission
        version_stamp=item.version_stamp,
        frontier_stamp=item.frontier_stamp,
        data={
            "origin": child.origin,
            "parents": list(child.parents),
            "patched_from": list(prop.patched_from),
            "val_scores": scores,
            "size": sum(len(text) for text in child.components.values()),
            "size_unit": "characters",
            **extra,
        },
    )


#: Why a job ends when the infrastructure failed every rollout it needed.
INFRA_ALL = "every rollout it needed failed at the infrastructure (not scored as 0)"


def drop(
    ctx: StageContext, stage: str, item_id: str, artifact_id: str | None, reason: str
) -> list[tuple[str, Any]]:
    """End an item's line with an ``item_dropped`` event saying why."""
    ctx.emit(
        Kind.ITEM_DROPPED, stage=stage, item_id=item_id, artifact_id=artifact_id, reason=reason
    )
    return []
