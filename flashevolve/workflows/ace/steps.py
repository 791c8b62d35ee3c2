"""The bodies of ACE's reflect, curate and apply stages (the workflow object keeps the state;
these functions do one step's work and say what happened in events)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from flashevolve.artifacts import Artifact
from flashevolve.backends.base import ChatRequest, LLMError
from flashevolve.events.schema import Kind
from flashevolve.policies.staleness import ACCEPT, PATCH
from flashevolve.pool import CandidateRecord
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import WorkItem
from flashevolve.tasks.base import Rollout
from flashevolve.workflows.ace.generator import COMPONENT, reference_text
from flashevolve.workflows.ace.items import CuratedBatch, Generated, Reflection, Step
from flashevolve.workflows.ace.operations import (
    StampedOp,
    apply_operations,
    apply_tags,
    op_dict,
    op_summary,
    refine,
)
from flashevolve.workflows.ace.playbook import Bullet
from flashevolve.workflows.ace.prompts import (
    ReflectorAnswer,
    build_curator_prompt,
    build_reflector_prompt,
    clip,
    parse_curator,
    parse_reflector,
    question_of,
    response_format,
)

if TYPE_CHECKING:
    from flashevolve.workflows.ace.workflow import AceWorkflow


def emit_rollout(
    ctx: StageContext, item: WorkItem, step: Step, playbook: Artifact, rollout: Rollout, *,
    retry: int = 0,
) -> None:  # fmt: skip
    """One ``rollout_finished`` per generator answer on a training example."""
    ctx.emit(
        Kind.ROLLOUT_FINISHED,
        stage="generate",
        item_id=item.item_id,
        artifact_id=playbook.id,
        score=rollout.score,
        data={
            "example_id": rollout.example_id,
            "step": step.step,
            "epoch": step.epoch,
            "bullet_ids": list(rollout.trace.get("bullet_ids", []))[:20],
            "malformed": rollout.trace.get("malformed"),
            "error": rollout.error,
            "retry": retry,
        },
    )


# -- reflect ---------------------------------------------------------------------------------------


async def reflect(
    wf: AceWorkflow, item: WorkItem, ctx: StageContext, gen: Generated
) -> Reflection | None:
    """The reflector on one step, with reflect-and-retry rounds on a wrong answer (the official
    order: reflect, regenerate with the reflection as a note, stop once an answer is right; the
    regeneration after the last round is skipped, since nothing reads it)."""
    step, rollout, playbook = gen.step, gen.rollout, gen.playbook
    example = step.example
    reference = reference_text(example) if wf.use_reference else None
    tags: list[tuple[str, str]] = []
    answer: ReflectorAnswer | None = None
    rounds = 0
    while True:
        book = wf._book(playbook)
        used = [b for i in rollout.trace.get("bullet_ids", []) if (b := book.get(i)) is not None]
        got = await _reflect_once(wf, ctx, item, rollout, used, reference)
        if isinstance(got, str):
            ctx.emit(
                Kind.REFLECTION_SKIPPED,
                stage="reflect",
                item_id=item.item_id,
                artifact_id=playbook.id,
                reason=f"unusable reflection: {got}",
                data={"example_id": example.id, "step": step.step, "round": rounds + 1},
            )
            break
        rounds += 1
        answer, last = got, rollout
        tags += got.tags
        if rollout.score >= 1.0 or rounds >= wf.reflect_rounds:
            break
        note = f"Diagnosis: {got.diagnosis}\nLesson: {got.insight}"
        playbook = wf._head(ctx).artifact
        [rollout] = await wf._run(
            ctx, playbook, [example], stage="generate", item_id=item.item_id, reflection=note
        )
        emit_rollout(ctx, item, step, playbook, rollout, retry=rounds)
        if rollout.score >= 1.0:
            break
    if answer is None:
        return None
    question, _ = question_of(example.inputs)
    return Reflection(
        step=step.step,
        example_id=example.id,
        question=clip(question, 2000),
        answer=str(last.trace.get("answer") or clip(last.output, 300)),
        score=last.score,
        feedback=clip(last.feedback, 600),
        diagnosis=answer.diagnosis,
        insight=answer.insight,
        tags=tags,
        rounds=rounds,
    )


async def _reflect_once(
    wf: AceWorkflow, ctx: StageContext, item: WorkItem, rollout: Rollout, used: list[Bullet],
    reference: str | None,
) -> ReflectorAnswer | str:  # fmt: skip
    trace = rollout.trace
    prompt = build_reflector_prompt(
        question=str(trace.get("question", "")),
        reasoning=str(trace.get("reasoning") or (rollout.output if trace.get("malformed") else "")),
        answer=str(trace.get("answer") or "(no usable answer)"),
        feedback=rollout.feedback,
        reference=reference,
        used=used,
    )
    request = ChatRequest(
        messages=[{"role": "user", "content": prompt}],
        max_tokens=wf.reflection_max_tokens,
        temperature=wf.temperature,
        seed=ctx.rng("reflect").randrange(2**31),
        stage="reflect",
        item_id=item.item_id,
        metadata={"example_id": rollout.example_id},
        extra_body=response_format(wf.json_mode, "reflect", wf.max_ops, ids=[b.id for b in used]),
    )
    try:
        result = await ctx.reflection_llm.complete(request)
    except LLMError as err:
        return f"the reflector call failed: {err}"
    return parse_reflector(result.text, [b.id for b in used], result.finish_reason)


# -- curate ----------------------------------------------------------------------------------------


async def curate(
    wf: AceWorkflow, item: WorkItem, ctx: StageContext, head: CandidateRecord,
    batch: list[Reflection],
) -> CuratedBatch | None:  # fmt: skip
    book = wf._book(head.artifact)
    n_train = len(ctx.task.train)
    prompt = build_curator_prompt(
        head.artifact[COMPONENT],
        book.stats(),
        batch,
        step=batch[-1].step % n_train + 1,
        total_steps=n_train,
        max_ops=wf.max_ops,
    )
    request = ChatRequest(
        messages=[{"role": "user", "content": prompt}],
        max_tokens=wf.reflection_max_tokens,
        temperature=wf.temperature,
        seed=ctx.rng("curate").randrange(2**31),
        stage="curate",
        item_id=item.item_id,
        metadata={"reflections": len(batch)},
        extra_body=wf.extra_body("curate", book),
    )
    base = {"reflections": len(batch), "steps": [r.step for r in batch]}
    # the operations are written against the playbook shown, whatever moves while the call runs
    stamp, frontier, written = head.pool_version, ctx.pool.frontier_version, ctx.now()

    def reject(reason: str, **data: Any) -> None:
        ctx.emit(Kind.PROPOSAL_REJECTED, stage="curate", item_id=item.item_id,
                 parent_id=head.id, reason=reason, data={**base, **data})  # fmt: skip

    try:
        result = await ctx.reflection_llm.complete(request)
    except LLMError as err:
        reject(f"the curator call failed: {err}")
        return None
    parsed = parse_curator(result.text, result.finish_reason)
    if isinstance(parsed, str):
        reject(f"unusable curator answer: {parsed}", answer_head=(result.text or "")[:300])
        return None
    invalid = list(parsed.invalid)
    ops = parsed.ops[: wf.max_ops]
    for k, op in enumerate(parsed.ops[wf.max_ops :], start=wf.max_ops):
        invalid.append({"index": k, "op": op_dict(op), "reason": f"beyond max_ops={wf.max_ops}"})
    if not ops:
        why = "no operation passed validation" if invalid else "the curator proposed no operations"
        reject(why, invalid=invalid)
        return None
    sops = [
        StampedOp(f"{item.item_id}.{k}", op, stamp, frontier, written) for k, op in enumerate(ops)
    ]
    ctx.emit(
        Kind.PROPOSAL_MADE,
        stage="curate",
        item_id=item.item_id,
        parent_id=head.id,
        version_stamp=stamp,
        frontier_stamp=frontier,
        data={
            **base,
            "operations": [{"op_id": s.op_id, **op_dict(s.op)} for s in sops],
            "types": dict(Counter(s.op.type for s in sops)),
            "invalid": invalid,
        },
    )
    return CuratedBatch(sops, batch, head.id, stamp, invalid)


# -- apply -----------------------------------------------------------------------------------------


def apply_batch(
    wf: AceWorkflow, item: WorkItem, ctx: StageContext, batch: CuratedBatch,
    ops: list[StampedOp], judged: dict[str, dict[str, Any]],
) -> tuple[CandidateRecord, bool] | None:  # fmt: skip
    """Apply the surviving operations and admit the new playbook version.

    Returns (the new version, whether an evaluation is due) or None when nothing applied.  Every
    piece of workflow state changes *before* the ``admitted`` event, because the run directory
    saves the state when it sees that event.
    """
    head = wf._head(ctx)
    result = apply_operations(
        wf._book(head.artifact), ops, wf._next_id, dedup_threshold=wf.dedup_threshold
    )
    outcomes = [o.to_dict() for o in result.outcomes]
    stale = {
        op_id: j for op_id, j in judged.items() if j["decision"] not in (ACCEPT, PATCH)
    }  # dropped by the staleness policy
    for o in result.rejected:
        ctx.emit(Kind.OPERATION_REJECTED, stage="apply", item_id=item.item_id,
                 parent_id=head.id, reason=o.reason,
                 data={"scope": "operation", "op_id": o.op_id, "type": o.type, "op": o.op})  # fmt: skip
    data: dict[str, Any] = {"operations": outcomes, "stale": judged, "invalid": batch.rejected}
    if not result.applied:
        ctx.emit(Kind.PROPOSAL_REJECTED, stage="apply", item_id=item.item_id, parent_id=head.id,
                 reason="no operation of the batch applied", data={"scope": "batch", **data})  # fmt: skip
        return None
    book = result.playbook
    tags, wf._pending_tags = wf._pending_tags, []
    counters = apply_tags(book, tags)
    touched = {o.bullet_id for o in result.applied if o.bullet_id}
    refined = [] if wf.dedup_threshold is None else refine(book, wf.dedup_threshold, touched)
    text = book.render()
    art = Artifact(
        {COMPONENT: text},
        parents=(head.id,),
        version_stamp=batch.stamp,
        frontier_stamp=ctx.pool.frontier_version,
        origin="curation",
        meta={"applied": len(result.applied)},
    )
    if art.id in ctx.pool:
        wf._pending_tags = tags + wf._pending_tags  # nothing changed: the tags wait on
        ctx.emit(Kind.PROPOSAL_REJECTED, stage="apply", item_id=item.item_id, parent_id=head.id,
                 reason=f"the update reproduces playbook {art.id}", data={"scope": "batch", **data})  # fmt: skip
        return None
    record = ctx.pool.admit(art, {}, ts=ctx.now())
    assert record is not None
    wf._books[art.id] = book
    wf._next_id = result.next_id
    summaries = [op_summary(o_op) for o_op in _applied_ops(ops, result)]
    summaries += [f"refine: folded [{gone}] into [{kept}]" for kept, gone in refined]
    wf._history.append({"version": record.pool_version, "stamp": batch.stamp, "ops": summaries})
    del wf._history[: -wf.history_versions]
    wf._since_eval += 1
    due = wf._since_eval >= wf.eval_steps
    if due:
        wf._since_eval, wf._eval_issued = 0, record.pool_version
    ctx.emit(
        Kind.ADMITTED,
        stage="apply",
        item_id=item.item_id,
        artifact_id=art.id,
        parent_id=head.id,
        latency_s=ctx.now() - item.created_at,
        version_stamp=batch.stamp,
        frontier_stamp=item.frontier_stamp,
        data={
            "origin": "curation",
            "parents": [head.id],
            "patched_from": [i for i, j in judged.items() if j["decision"] == PATCH],
            "val_scores": {},
            **data,
            "applied": len(result.applied),
            "rejected": len(result.rejected),
            "stale_dropped": len(stale),
            "counters": counters,
            "refined": [list(p) for p in refined],
            "bullets": len(book),
            "size": len(book),
            "size_unit": "bullets",
            "chars": len(text),
            "sections": {name: len(bs) for name, bs in book.sections.items()},
        },
    )
    return record, due


def _applied_ops(ops: list[StampedOp], result: Any) -> list[Any]:
    done = {o.op_id for o in result.applied}
    return [s.op for s in ops if s.op_id in done]
