"""GEPA's rollout and validate stages with speculative completion.

The settings and the generic rules (prefix size, the bar, exact early reject, reordering) live in
:mod:`flashevolve.policies.speculation`; this module applies them to GEPA's two stages:

- rollout: release the parent's minibatch results to reflection once ``rollout_alpha`` of them
  landed; the late ones are still awaited and recorded in the background;
- validate: score the (reordered) validation set prefix first; admit speculatively when the
  prefix clears the bar, confirm or roll back when the tail lands; reject exactly and early when
  the bar can no longer be cleared.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from flashevolve.events.schema import Kind
from flashevolve.policies.speculation import Speculation, parent_rolled_back, prefix_size
from flashevolve.workflows.evaluation import Fanout, run_examples
from flashevolve.workflows.gepa.events import drop, emit_admitted

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext
    from flashevolve.runtime.items import WorkItem
    from flashevolve.workflows.gepa.workflow import GepaWorkflow

ROLLED_BACK_PARENT = "its parent's speculative admission was rolled back"


# -- rollout -------------------------------------------------------------------------------------


async def rollout(
    wf: GepaWorkflow, item: WorkItem, ctx: StageContext, spec: Speculation
) -> list[tuple[str, Any]]:
    job = item.payload
    if parent_rolled_back(ctx, job.parent.id):
        return drop(ctx, "rollout", item.item_id, job.parent.id, ROLLED_BACK_PARENT)
    if spec.rollout_alpha >= 1.0:
        rollouts = await run_examples(
            ctx,
            job.parent.components,
            job.minibatch,
            stage="rollout",
            item_id=item.item_id,
            concurrency=wf.eval_concurrency,
        )
        return wf.to_reflection(ctx, item, job, rollouts)
    fan = Fanout(
        ctx,
        job.parent.components,
        job.minibatch,
        stage="rollout",
        item_id=item.item_id,
        concurrency=wf.eval_concurrency,
    )
    need = prefix_size(len(fan), spec.rollout_alpha)
    try:
        while len(fan.results) < need:
            await fan.next_landing()
            if fan.done() and len(fan.results) < need:
                raise RuntimeError("rollout requests ended without results")
    except BaseException:
        await fan.close()
        raise
    on_time = sorted(fan.order)
    for i in on_time:
        _emit_rollout(ctx, fan, i, item.item_id, job.parent.id, late=False)
    late = [i for i in range(len(fan)) if i not in fan.results]
    if late:
        spec.count("rollout_released_early")
        spec.spawn(
            ctx,
            _record_late(ctx, spec, fan, late, item.item_id, job.parent.id),
            name=f"late-{item.item_id}",
        )
    batch = [fan.examples[i] for i in on_time]
    rollouts = [fan.results[i] for i in on_time]
    job = replace(job, minibatch=batch)
    return wf.to_reflection(ctx, item, job, rollouts, examples=len(batch), of=len(fan))


def _emit_rollout(
    ctx: StageContext, fan: Fanout, i: int, item_id: str, parent_id: str, *, late: bool
) -> None:
    ctx.emit(
        Kind.ROLLOUT_FINISHED,
        stage="rollout",
        item_id=item_id,
        artifact_id=parent_id,
        score=fan.results[i].score,
        data={"example_id": fan.examples[i].id, "late": late},
    )


async def _record_late(
    ctx: StageContext, spec: Speculation, fan: Fanout, late: list[int], item_id: str, parent_id: str
) -> None:
    seen: set[int] = set()
    try:
        while len(seen) < len(late):
            await fan.next_landing()
            for i in late:
                if i in fan.results and i not in seen:
                    seen.add(i)
                    spec.count("late_rollouts")
                    _emit_rollout(ctx, fan, i, item_id, parent_id, late=True)
            if fan.done():
                break
    finally:
        await fan.close()


# -- validate ------------------------------------------------------------------------------------


async def _watch(fan: Fanout, upto: int, spec: Speculation, bar: float | None) -> bool:
    """Wait until the first ``upto`` examples landed; True as soon as the child is hopeless."""
    n = len(fan)
    while True:
        landed = sum(r.score for r in fan.results.values())
        if spec.hopeless(landed, n - len(fan.results), n, bar):
            return True
        if all(i in fan.results for i in range(upto)):
            return False
        await fan.next_landing()
        if fan.done() and not all(i in fan.results for i in range(upto)):
            raise RuntimeError("validation requests ended without results")


def _roll_back(
    ctx: StageContext,
    spec: Speculation,
    item_id: str,
    child_id: str,
    reason: str,
    score: float | None = None,
    **data: Any,
) -> None:
    """Tombstone a speculative admission (the pool version moves; derived work goes stale)."""
    ctx.pool.tombstone(child_id)
    spec.count("rolled_back")
    ctx.emit(
        Kind.SPECULATION_ROLLED_BACK,
        stage="validate",
        item_id=item_id,
        artifact_id=child_id,
        score=score,
        reason=reason,
        data=data,
    )


def _early_reject(
    ctx: StageContext,
    spec: Speculation,
    fan: Fanout,
    item_id: str,
    child_id: str,
    bar: float | None,
    *,
    speculative: bool,
) -> None:
    cancelled = fan.cancel_rest()
    spec.count("early_rejected")
    spec.count("cancelled_requests", cancelled)
    landed = fan.scores()
    spec.record_results(landed)
    n = len(fan)
    data = {
        "landed": len(landed),
        "n": n,
        "bar": bar,
        "cancelled_requests": cancelled,
        "best_reachable": (sum(landed.values()) + spec.perfect_score * (n - len(landed))) / n,
    }
    if speculative:
        _roll_back(
            ctx, spec, item_id, child_id, "the bar can no longer be cleared", **data, early=True
        )
        return
    ctx.emit(
        Kind.EARLY_REJECTED,
        stage="validate",
        item_id=item_id,
        artifact_id=child_id,
        reason="even perfect scores on the rest cannot clear the bar",
        data=data,
    )


async def validate(
    wf: GepaWorkflow, item: WorkItem, ctx: StageContext, spec: Speculation
) -> list[tuple[str, Any]]:
    prop = item.payload.proposal
    child, parent_id = prop.child, prop.job.parent.id
    if parent_rolled_back(ctx, parent_id):
        return drop(ctx, "validate", item.item_id, child.id, ROLLED_BACK_PARENT)
    if child.id in ctx.pool:
        return drop(
            ctx, "validate", item.item_id, child.id, "an identical artifact was admitted meanwhile"
        )
    val = spec.order(ctx.task.val, ctx.pool)
    n = len(val)
    m = prefix_size(n, spec.evaluate_alpha)
    bar = spec.bar_for(ctx.pool, parent_id)
    fan = Fanout(
        ctx,
        child.components,
        val,
        stage="validate",
        item_id=item.item_id,
        concurrency=wf.eval_concurrency,
    )
    try:
        if await _watch(fan, m, spec, bar):
            _early_reject(ctx, spec, fan, item.item_id, child.id, bar, speculative=False)
            return []
        prefix = fan.scores(range(m))
        pbar = spec.prefix_bar(ctx.pool, parent_id, bar, list(prefix))
        if m < n and _may_admit_early(spec, pbar, prefix):
            _admit_speculatively(wf, item, ctx, spec, fan, prefix, bar=bar, prefix_bar=pbar)
            return []
        if await _watch(fan, n, spec, bar):
            _early_reject(ctx, spec, fan, item.item_id, child.id, bar, speculative=False)
            return []
    except BaseException:
        await fan.close()
        raise
    mean, ordered = _sweep_finished(ctx, spec, fan, item.item_id, child.id, bar)
    if bar is not None and mean < bar:
        return drop(
            ctx,
            "validate",
            item.item_id,
            child.id,
            f"full score {mean:.3f} is below the bar {bar:.3f}",
        )
    wf.admit(ctx, item, prop, ordered)
    return []


def _may_admit_early(spec: Speculation, pbar: float | None, prefix: dict[str, float]) -> bool:
    """May the child enter the pool on its prefix's scores?"""
    if not spec.admit_speculatively or spec.tails_full():
        return False
    if not prefix:  # the infrastructure failed the whole prefix: no evidence to admit on
        return False
    return pbar is None or sum(prefix.values()) / len(prefix) >= pbar


def _admit_speculatively(
    wf: GepaWorkflow,
    item: WorkItem,
    ctx: StageContext,
    spec: Speculation,
    fan: Fanout,
    prefix: dict[str, float],
    *,
    bar: float | None,
    prefix_bar: float | None,
) -> None:
    prop = item.payload.proposal
    child, parent_id = prop.child, prop.job.parent.id
    record = wf.admit(ctx, item, prop, prefix, speculative=True)
    if record is None:  # an identical artifact won the race (admit said so)
        fan.cancel_rest()
        return
    spec.count("speculative_admitted")
    ctx.emit(
        Kind.SPECULATIVE_ADMITTED,
        stage="validate",
        item_id=item.item_id,
        artifact_id=child.id,
        parent_id=parent_id,
        score=record.mean_score,
        version_stamp=item.version_stamp,
        frontier_stamp=item.frontier_stamp,
        data={
            "prefix": len(prefix),
            "n": len(fan),
            "bar": bar,
            "prefix_bar": prefix_bar,
            "alpha": spec.evaluate_alpha,
            "prefix_ids": list(prefix),
        },
    )
    spec.spawn(ctx, _finish_tail(wf, item, ctx, spec, fan, bar), name=f"tail-{item.item_id}")


def _sweep_finished(
    ctx: StageContext,
    spec: Speculation,
    fan: Fanout,
    item_id: str,
    artifact_id: str,
    bar: float | None,
    **extra: Any,
) -> tuple[float, dict[str, float]]:
    """A full validation sweep landed: feed the reordering, emit it, return (mean, scores)."""
    scores = fan.scores()  # the infrastructure's failures left out, not scored 0
    spec.record_results(scores)
    n = max(1, len(scores))
    mean = sum(scores.values()) / n
    ctx.emit(
        Kind.VALIDATION_FINISHED,
        stage="validate",
        item_id=item_id,
        artifact_id=artifact_id,
        score=mean,
        data={
            "n": n,
            "bar": bar,
            **extra,
            **({"left_out": fan.left_out()} if fan.left_out() else {}),
        },
    )
    return mean, {ex.id: scores[ex.id] for ex in ctx.task.val if ex.id in scores}


async def _finish_tail(
    wf: GepaWorkflow,
    item: WorkItem,
    ctx: StageContext,
    spec: Speculation,
    fan: Fanout,
    bar: float | None,
) -> None:
    """The background half of a speculative admission: confirm or roll back."""
    prop = item.payload.proposal
    child = prop.child
    try:
        if await _watch(fan, len(fan), spec, bar):
            _early_reject(ctx, spec, fan, item.item_id, child.id, bar, speculative=True)
            return
    finally:
        await fan.close()
    mean, ordered = _sweep_finished(ctx, spec, fan, item.item_id, child.id, bar, speculative=True)
    if bar is not None and mean < bar:
        reason = f"full score {mean:.3f} is below the bar {bar:.3f}"
        _roll_back(ctx, spec, item.item_id, child.id, reason, score=mean, bar=bar, early=False)
        return
    record = ctx.pool.confirm(child.id, ordered)
    spec.count("confirmed")
    ctx.emit(
        Kind.SPECULATION_CONFIRMED,
        stage="validate",
        item_id=item.item_id,
        artifact_id=child.id,
        score=mean,
        data={"bar": bar},
    )
    emit_admitted(ctx, item, prop, record, ordered, speculative=True)
