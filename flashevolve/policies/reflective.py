"""*Reflective Async*: an LLM reviews stale proposals and accepts, discards or patches them.

A stale proposal was written against a pool that has since moved on.  Unlike a stale gradient, a
stale prompt (or playbook operation, or harness) is readable: a reviewer can see what was accepted
meanwhile and decide whether the proposal still adds something.  What the reviewer is shown, and
what a repair is, belong to the workflow (:class:`~flashevolve.workflows.base.Repairable`): its
``review_material`` renders the current state, what changed since the oldest stamp in the batch
(capped at ~``history_tokens``) and each stale item with the feedback that motivated it; its
``make_repair`` turns the reviewer's ``patched`` value into a repair (GEPA: the best with new
component texts; ACE: delta operations rebased onto the current playbook); its ``apply_patch``
says how the repair re-enters.  This module owns the rest: batching, order, the prompt's decision
rules, the JSON answer ``{"decisions": [{"item", "decision": accept|discard|patch,
"rationale"}], "patched": <repair> | null}`` and how decisions map back to items.

All items decided ``patch`` are folded into *one* repair: the first of them in arrival order
carries it (action ``patch``), the others are ``merged`` into it.  An answer that is not valid
JSON of that shape, or that was cut off at ``max_tokens``, is recorded with its reason and every
item of the batch is discarded -- a malformed answer is never adopted.

Batching: decisions wait until ``k`` stale items are queued or ``max_wait_s`` (run clock) passed
since the first of them arrived, whichever comes first.

Order: the items of a batch are shown in a seeded random order (``ctx.rng("review-order")``, so a
run is as reproducible as its seed), because LLM judges favour a position (SmolLM2-135M accepted
the first-listed item of every batch); shuffling makes that bias fall on random items instead of
always on the oldest one.  Every decision records its shown ``position`` (0-based) and the batch's
``shown_order``; ``shuffle=False`` shows the items in arrival order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flashevolve.backends.base import ChatRequest
from flashevolve.events.schema import Kind
from flashevolve.policies.reflective_prompt import (
    ItemDecision,
    Parsed,
    PatchAnswer,
    build_patch_prompt,
    parse_answer,
    review_json_schema,
)
from flashevolve.policies.staleness import (
    ACCEPT,
    DISCARD,
    MERGED,
    PATCH,
    POLICIES,
    Repair,
    StaleDecision,
    StaleItem,
)

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext

__all__ = [
    "ItemDecision",
    "PatchAnswer",
    "Parsed",
    "Reflective",
    "build_patch_prompt",
    "parse_answer",
    "review_json_schema",
]


# -- the policy ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Waiting:
    item: StaleItem
    future: asyncio.Future[StaleDecision]


class Reflective:
    """LLM-reviewed staleness: accept | discard | patch, batched up to ``k`` items per call."""

    name = "reflective"
    #: it reviews and repairs: the workflow must implement Repairable (checked at construction)
    needs_repair = True

    def __init__(
        self,
        k: int = 4,
        max_wait_s: float = 5.0,
        history_tokens: int = 2000,
        gate_patches: bool = True,
        max_tokens: int | None = 4096,
        temperature: float | None = None,
        artifact_chars: int = 4000,
        feedback_chars: int = 300,
        reviewer: Any = None,
        review_schema: bool = False,
        patch_chars: int = 1000,
        shuffle: bool = True,
    ) -> None:
        if k < 1:
            raise ValueError("k (stale items per review call) must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        if patch_chars < 1:
            raise ValueError("patch_chars must be at least 1")
        self.k = k
        self.max_wait_s = max_wait_s
        self.history_tokens = history_tokens
        self.gate_patches = gate_patches
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.artifact_chars = artifact_chars
        self.feedback_chars = feedback_chars
        #: an LLM for the review calls only (e.g. a client with schema-constrained decoding,
        #: see review_json_schema); None uses the run's reflection backend.
        self.reviewer = reviewer
        #: ask the server for schema-constrained decoding on every review request (OpenAI-style
        #: ``response_format`` json_schema in the request's extra_body; llama-server, vLLM): the
        #: batch's item ids, the best's component names, texts capped (``patched`` texts at
        #: ``patch_chars``).  Backends without extra_body support ignore it.
        self.review_schema = review_schema
        self.patch_chars = patch_chars
        #: show a batch's items in a seeded random order (``ctx.rng("review-order")``) instead of
        #: arrival order, so a reviewer's position bias does not always favour the oldest item.
        self.shuffle = shuffle
        self._reviewer_wrapped: tuple[Any, Any] | None = None
        self._waiting: list[_Waiting] = []
        self._timer: asyncio.Task[Any] | None = None
        self._calls: set[asyncio.Task[Any]] = set()
        self._batches = 0

    def __repr__(self) -> str:
        return (
            f"Reflective(k={self.k}, max_wait_s={self.max_wait_s}, "
            f"history_tokens={self.history_tokens}, gate_patches={self.gate_patches}"
            + (
                f", review_schema=True, patch_chars={self.patch_chars}"
                if self.review_schema
                else ""
            )
            + ("" if self.shuffle else ", shuffle=False")
            + ")"
        )

    async def decide(self, item: StaleItem, ctx: StageContext) -> StaleDecision:
        if item.artifact is None and item.subject_id is None:
            return StaleDecision(ACCEPT, reason="no proposal to review at this stage")
        future: asyncio.Future[StaleDecision] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(item, future))
        if len(self._waiting) >= self._batch_size(item, ctx):
            self._flush(ctx)
        elif self._timer is None or self._timer.done():
            self._timer = ctx.spawn(self._flush_later(ctx), name="reflective-wait")
        return await future

    def _batch_size(self, item: StaleItem, ctx: StageContext) -> int:
        """``k``, but never more than the workers of the checking stage: each waiting item holds
        one of them, so with fewer workers than ``k`` a batch could only ever leave by
        ``max_wait_s`` -- and the stage would stand still until then."""
        if item.shares_worker:  # judged together from one worker: no worker waits per item
            return self.k
        workers = ctx.workers(item.stage)
        return max(1, min(self.k, workers)) if workers else self.k

    async def _flush_later(self, ctx: StageContext) -> None:
        await ctx.clock.sleep(self.max_wait_s)
        self._timer = None
        if self._waiting:
            self._flush(ctx, reason="max_wait_s")

    def _flush(self, ctx: StageContext, reason: str = "k") -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            batch, self._waiting = self._waiting[: self.k], self._waiting[self.k :]
            batch = [w for w in batch if not w.future.done()]  # waiters cancelled at shutdown
            if batch:
                task = ctx.spawn(self._review(batch, ctx, reason), name="reflective-review")
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
            if len(self._waiting) < self.k:
                break
        if self._waiting:
            self._timer = ctx.spawn(self._flush_later(ctx), name="reflective-wait")

    async def _review(self, batch: list[_Waiting], ctx: StageContext, trigger: str) -> None:
        self._batches += 1
        batch_id = f"pb{self._batches}"
        items = [w.item for w in batch]
        order = self.shown_order(items, ctx)
        try:
            decisions = await self.review(
                items, ctx, batch_id=batch_id, trigger=trigger, order=order
            )
        except Exception as err:  # noqa: BLE001 -- a failed review must not hang the gate
            reason = f"review failed: {type(err).__name__}: {err}"
            data = {"batch": batch_id, "batch_size": len(items), **_order_data(items, order)}
            decisions = [
                StaleDecision(DISCARD, reason=reason, data={**data, "position": order.index(i)})
                for i in range(len(items))
            ]
        for w, d in zip(batch, decisions, strict=True):
            if not w.future.done():
                w.future.set_result(d)

    def shown_order(self, items: list[StaleItem], ctx: StageContext) -> list[int]:
        """The order the reviewer sees ``items`` in: ``order[p]`` is the index of the item shown at
        position ``p``.  Seeded (``ctx.rng("review-order")``), one draw per batch; identity with
        ``shuffle=False`` or a single item."""
        order = list(range(len(items)))
        if self.shuffle and len(items) > 1:
            ctx.rng("review-order").shuffle(order)
        return order

    async def review(
        self,
        items: list[StaleItem],
        ctx: StageContext,
        *,
        batch_id: str = "pb",
        trigger: str = "k",
        order: list[int] | None = None,
    ) -> list[StaleDecision]:
        """One reviewer call for ``items``; returns one decision per item, in ``items``' order.

        The reviewer sees the items in ``order`` (default: :meth:`shown_order`); each decision's
        ``data.position`` is where its item was shown, ``data.shown_order`` the batch's item ids
        as shown.
        """
        if order is None:
            order = self.shown_order(items, ctx)
        if sorted(order) != list(range(len(items))):
            raise ValueError(f"order {order} is not a permutation of the {len(items)} items")
        shown = [items[i] for i in order]
        material = _repairable(ctx).review_material(shown, ctx, limits=self._limits())
        request = self._request(items, shown, material, ctx)
        base = {
            "batch": batch_id,
            "batch_size": len(items),
            "trigger": trigger,
            **_order_data(items, order),
        }
        if self.review_schema:
            base["review_schema"] = True
        result = await self._llm(ctx).complete(request)
        parsed = parse_answer(result.text, result.finish_reason)
        if parsed.answer is None:
            data = {**base, "malformed": True, "answer_head": (result.text or "")[:300]}
            return _all_discarded(items, shown, f"unusable review answer ({parsed.reason})", data)
        return self._apply(items, shown, parsed.answer, ctx, base)

    def _limits(self) -> dict[str, int]:
        """How much of the history, artifacts, feedback and patch the reviewer is shown."""
        return {
            "history_tokens": self.history_tokens,
            "artifact_chars": self.artifact_chars,
            "feedback_chars": self.feedback_chars,
            "patch_chars": self.patch_chars,
        }

    def _request(
        self, items: list[StaleItem], shown: list[StaleItem], material: Any, ctx: StageContext
    ) -> ChatRequest:
        return ChatRequest(
            messages=[{"role": "user", "content": build_patch_prompt(shown, material)}],
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=ctx.rng("seed:patch").randrange(2**31),
            stage="patch",
            item_id=items[0].item_id,
            metadata={"items": [it.item_id for it in items]},
            extra_body=self._schema_body(shown, material) if self.review_schema else None,
        )

    def _schema_body(self, items: list[StaleItem], material: Any) -> dict[str, Any]:
        schema = review_json_schema(
            item_ids=[it.item_id for it in items],
            patched=material.patch_schema,
            max_text=self.patch_chars,
            max_rationale=200,
        )
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "review", "schema": schema},
            }
        }

    def _llm(self, ctx: StageContext) -> Any:
        if self.reviewer is None:
            return ctx.reflection_llm
        if self._reviewer_wrapped is None or self._reviewer_wrapped[0] is not ctx.log:
            from flashevolve.runtime.instrument import InFlight, InstrumentedLLM

            # Its own in-flight counter: review requests are logged, but the run-wide
            # concurrency series does not include them.
            wrapped = InstrumentedLLM(self.reviewer, "reflection", ctx.log, InFlight())
            self._reviewer_wrapped = (ctx.log, wrapped)
        return self._reviewer_wrapped[1]

    def _apply(
        self,
        items: list[StaleItem],
        shown: list[StaleItem],
        answer: PatchAnswer,
        ctx: StageContext,
        base: dict[str, Any],
    ) -> list[StaleDecision]:
        by_id, matched = _match_decisions(items, shown, answer)
        patch = self._shared_patch(items, by_id, answer, ctx)
        position = {it.item_id: p for p, it in enumerate(shown)}
        out: list[StaleDecision] = []
        for it in items:
            said = by_id.get(it.item_id)
            data = {
                **base,
                "position": position[it.item_id],
                "matched_by": matched,
                "rationale": said.rationale if said else "",
                "answered": said.decision if said else DISCARD,
            }
            carried = any(d.action == PATCH for d in out)
            out.append(self._one(said, patch, carried, data))
        return out

    def _shared_patch(
        self,
        items: list[StaleItem],
        by_id: dict[str, ItemDecision],
        answer: PatchAnswer,
        ctx: StageContext,
    ) -> _SharedPatch:
        """The one repair made for every item the reviewer said to patch (a ``patch_made``
        event when the workflow could make it)."""
        ids = [it.item_id for it in items if _said(by_id, it) == PATCH]
        if not ids:
            return _SharedPatch(None, ids)
        patching = [it for it in items if it.item_id in ids]
        repair = _repairable(ctx).make_repair(patching, answer.patched, ctx)
        if isinstance(repair, Repair):
            self._emit_patch(ctx, repair, ids)
        return _SharedPatch(repair, ids)

    def _one(
        self,
        said: ItemDecision | None,
        patch: _SharedPatch,
        carried: bool,
        data: dict[str, Any],
    ) -> StaleDecision:
        """The decision for one item of a reviewed batch; ``carried``: an earlier item of the
        batch already carries the shared patch, so this one merges into it."""
        if said is None:
            return StaleDecision(
                DISCARD, reason="the reviewer gave no decision for this item", data=data
            )
        why = said.rationale
        if said.decision != PATCH:
            return StaleDecision(
                said.decision, reason=why or f"reviewer said {said.decision}", data=data
            )
        repair = patch.repair
        if not isinstance(repair, Repair):
            return StaleDecision(DISCARD, reason=f"patch not usable: {repair}", data=data)
        if not carried:  # the first patched item carries it
            return StaleDecision(
                PATCH,
                reason=why or "patched into the current state",
                repair=repair,
                patched_from=tuple(patch.item_ids),
                recheck=self.gate_patches,
                data={**data, "patched_from": patch.item_ids},
            )
        return StaleDecision(
            MERGED,
            reason=why or "merged into a shared patch",
            merged_into=repair.id,
            data={**data, "merged_into": repair.id},
        )

    def _emit_patch(self, ctx: StageContext, repair: Repair, patch_ids: list[str]) -> None:
        """One ``patch_made`` event per repair, with what the reviewer wrote (capped)."""
        details = {
            k: (
                {n: str(t)[: self.artifact_chars] for n, t in v.items()}
                if isinstance(v, dict)
                else v
            )
            for k, v in repair.details.items()
        }
        ctx.emit(
            Kind.PATCH_MADE,
            stage="patch",
            artifact_id=repair.id,
            parent_id=repair.parent_id,
            version_stamp=ctx.pool.pool_version,
            frontier_stamp=ctx.pool.frontier_version,
            data={"patched_from": patch_ids, "stale_artifacts": list(repair.absorbed), **details},
        )


@dataclass(frozen=True, slots=True)
class _SharedPatch:
    """A batch's one repair (or why there is none: a message, or None when nobody said patch)
    and the items it was made for."""

    repair: Repair | str | None
    item_ids: list[str]


def _all_discarded(
    items: list[StaleItem], shown: list[StaleItem], reason: str, data: dict[str, Any]
) -> list[StaleDecision]:
    """Every item of a batch discarded for one reason (an unusable answer)."""
    position = {it.item_id: p for p, it in enumerate(shown)}
    return [
        StaleDecision(DISCARD, reason=reason, data={**data, "position": position[it.item_id]})
        for it in items
    ]


def _repairable(ctx: StageContext) -> Any:
    workflow = ctx.workflow
    if workflow is None or not hasattr(workflow, "review_material"):
        raise RuntimeError(
            "the reflective policy needs a workflow that implements Repairable "
            "(review_material, make_repair, apply_patch)"
        )
    return workflow


def _said(by_id: dict[str, ItemDecision], item: StaleItem) -> str | None:
    d = by_id.get(item.item_id)
    return d.decision if d else None


def _match_decisions(
    items: list[StaleItem], shown: list[StaleItem], answer: PatchAnswer
) -> tuple[dict[str, ItemDecision], str]:
    """Which answered decision belongs to which item: by id; else one verdict for the whole
    batch; else, with exactly one decision per item, by the position the item was shown at."""
    by_id = {d.item: d for d in answer.decisions}
    if any(it.item_id in by_id for it in items):
        return by_id, "id"
    if len(answer.decisions) == 1:
        return {it.item_id: answer.decisions[0] for it in items}, "single"
    if len(answer.decisions) == len(items):
        return {it.item_id: d for it, d in zip(shown, answer.decisions, strict=True)}, "position"
    return by_id, "id"


def _order_data(items: list[StaleItem], order: list[int]) -> dict[str, Any]:
    """What every decision of a batch records about the order the reviewer saw."""
    return {"shown_order": [items[i].item_id for i in order]}


POLICIES["reflective"] = Reflective
POLICIES["reflective_async"] = Reflective
