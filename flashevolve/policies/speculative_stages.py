"""The GEPA stage handlers with speculative completion (see :mod:`.speculation` for the rules).

``GepaWorkflow._rollout`` / ``_validate`` call these when ``ctx.speculation`` is set.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from flashevolve.events.schema import Kind
from flashevolve.policies.speculation import Fanout, Speculation, parent_rolled_back, prefix_size

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext


# -- GEPA stage handlers with speculation (called by GepaWorkflow when ctx.speculation is set) ---


def _drop(
    ctx: StageContext, stage: str, item_id: str, artifact_id: str | None, reason: str
) -> list:
    ctx.emit(
        Kind.ITEM_DROPPED, stage=stage, item_id=item_id, artifact_id=artifact_id, reason=reason
    )
    return []


async def speculative_rollout(
    wf: Any, item: Any, ctx: StageContext, spec: Speculation
) -> list[tuple[str, Any]]:
    from flashevolve.workflows.gepa import Reflectable

    job = item.payload
    if parent_rolled_back(ctx, job.parent.id):
        return _drop(
            ctx,
            "rollout",
            item.item_id,
            job.parent.id,
            "its parent's speculative admission was rolled back",
        )
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
            if all(t.done() for t in fan.tasks) and len(fan.results) < need:
                raise RuntimeError("rollout requests ended without results")
    except BaseException:
        fan.cancel_rest()
        raise
    on_time = list(fan.order)
    for i in on_time:
        ctx.emit(
            Kind.ROLLOUT_FINISHED,
            stage="rollout",
            item_id=item.item_id,
            artifact_id=job.parent.id,
            score=fan.results[i].score,
            data={"example_id": fan.examples[i].id, "late": False},
        )
    late = [i for i in range(len(fan)) if i not in fan.results]
    if late:
        spec.count("rollout_released_early")
        spec.spawn(
            ctx,
            _record_late(ctx, spec, fan, late, item.item_id, job.parent.id),
            name=f"late-{item.item_id}",
        )
    idx = sorted(on_time)
    batch = [fan.examples[i] for i in idx]
    rollouts = [fan.results[i] for i in idx]
    if wf.skipped_as_perfect(ctx, item, job, rollouts, examples=len(batch), of=len(fan)):
        return []
    return [("propose", Reflectable(replace(job, minibatch=batch), rollouts))]


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
                    ctx.emit(
                        Kind.ROLLOUT_FINISHED,
                        stage="rollout",
                        item_id=item_id,
                        artifact_id=parent_id,
                        score=fan.results[i].score,
                        data={"example_id": fan.examples[i].id, "late": True},
                    )
            if all(t.done() for t in fan.tasks):
                break
    finally:
        fan.cancel_rest()


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
        if all(t.done() for t in fan.tasks) and not all(i in fan.results for i in range(upto)):
            raise RuntimeError("validation requests ended without results")


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
        ctx.pool.tombstone(child_id)
        spec.count("rolled_back")
        ctx.emit(
            Kind.SPECULATION_ROLLED_BACK,
            stage="validate",
            item_id=item_id,
            artifact_id=child_id,
            reason="the bar can no longer be cleared",
            data={**data, "early": True},
        )
    else:
        ctx.emit(
            Kind.EARLY_REJECTED,
            stage="validate",
            item_id=item_id,
            artifact_id=child_id,
            reason="even perfect scores on the rest cannot clear the bar",
            data=data,
        )


async def speculative_validate(
    wf: Any, item: Any, ctx: StageContext, spec: Speculation
) -> list[tuple[str, Any]]:
    prop = item.payload.proposal
    child, parent_id = prop.child, prop.job.parent.id
    if parent_rolled_back(ctx, parent_id):
        return _drop(
            ctx,
            "validate",
            item.item_id,
            child.id,
            "its parent's speculative admission was rolled back",
        )
    if child.id in ctx.pool:
        return _drop(
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
        prefix_mean = sum(prefix.values()) / m
        pbar = spec.prefix_bar(ctx.pool, parent_id, bar, list(prefix))
        if (
            m < n
            and spec.admit_speculatively
            and not spec.tails_full()
            and (pbar is None or prefix_mean >= pbar)
        ):
            record = ctx.pool.admit(
                child,
                prefix,
                ts=ctx.now(),
                speculative=True,
                patched_from=prop.patched_from,
                next_component=int(child.meta.get("next_component", 0)),
            )
            if record is None:
                fan.cancel_rest()
                return _drop(
                    ctx,
                    "validate",
                    item.item_id,
                    child.id,
                    "an identical artifact was admitted meanwhile",
                )
            spec.count("speculative_admitted")
            ctx.emit(
                Kind.SPECULATIVE_ADMITTED,
                stage="validate",
                item_id=item.item_id,
                artifact_id=child.id,
                parent_id=parent_id,
                score=prefix_mean,
                version_stamp=item.version_stamp,
                frontier_stamp=item.frontier_stamp,
                data={
                    "prefix": m,
                    "n": n,
                    "bar": bar,
                    "prefix_bar": pbar,
                    "alpha": spec.evaluate_alpha,
                    "prefix_ids": list(prefix),
                },
            )
            spec.spawn(
                ctx, _finish_tail(wf, item, ctx, spec, fan, bar), name=f"tail-{item.item_id}"
            )
            return []
        if await _watch(fan, n, spec, bar):
            _early_reject(ctx, spec, fan, item.item_id, child.id, bar, speculative=False)
            return []
    except BaseException:
        fan.cancel_rest()
        raise
    mean, ordered = _sweep_finished(ctx, spec, fan, item.item_id, child.id, bar)
    if bar is not None and mean < bar:
        return _drop(
            ctx,
            "validate",
            item.item_id,
            child.id,
            f"full score {mean:.3f} is below the bar {bar:.3f}",
        )
    wf.admit(ctx, item, prop, ordered)
    return []


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
    scores = fan.scores()
    spec.record_results(scores)
    n = len(fan)
    mean = sum(scores.values()) / n
    ctx.emit(
        Kind.VALIDATION_FINISHED,
        stage="validate",
        item_id=item_id,
        artifact_id=artifact_id,
        score=mean,
        data={"n": n, "bar": bar, **extra},
    )
    return mean, {ex.id: scores[ex.id] for ex in ctx.task.val}


async def _finish_tail(
    wf: Any, item: Any, ctx: StageContext, spec: Speculation, fan: Fanout, bar: float | None
) -> None:
    """The background half of a speculative admission: confirm or roll back."""
    from flashevolve.workflows.gepa import emit_admitted

    prop = item.payload.proposal
    child = prop.child
    try:
        if await _watch(fan, len(fan), spec, bar):
            _early_reject(ctx, spec, fan, item.item_id, child.id, bar, speculative=True)
            return
    finally:
        fan.cancel_rest()
    mean, ordered = _sweep_finished(ctx, spec, fan, item.item_id, child.id, bar, speculative=True)
    if bar is not None and mean < bar:
        ctx.pool.tombstone(child.id)
        spec.count("rolled_back")
        ctx.emit(
            Kind.SPECULATION_ROLLED_BACK,
            stage="validate",
            item_id=item.item_id,
            artifact_id=child.id,
            score=mean,
            reason=f"full score {mean:.3f} is below the bar {bar:.3f}",
            data={"bar": bar, "early": False},
        )
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
