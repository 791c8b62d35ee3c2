"""*Reflective Async*: an LLM reviews stale proposals and accepts, discards or patches them.

A stale proposal was written against a pool that has since moved on.  Unlike a stale gradient, a
stale prompt is readable: a reviewer can see what the pool accepted meanwhile and decide whether
the proposal still adds something.  Per review call the policy shows the reviewer

- the current best artifact (what a patch is merged into),
- what the pool admitted since the oldest stamp in the batch (newest first, score changes, capped
  at ~``history_tokens`` with a 4-characters-per-token estimate),
- each stale proposal with the minibatch feedback that motivated it,

and asks for JSON: ``{"decisions": [{"item", "decision": accept|discard|patch, "rationale"}],
"patched": {component: text} | null}``.  All items decided ``patch`` are folded into *one*
repaired artifact (the best with ``patched`` merged in): the first of them in arrival order
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

from flashevolve.artifacts import Artifact
from flashevolve.backends.base import ChatRequest
from flashevolve.events.schema import Kind
from flashevolve.policies.reflective_prompt import (
    CHARS_PER_TOKEN,
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
    StaleDecision,
    StaleItem,
)

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext

__all__ = [
    "CHARS_PER_TOKEN",
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
    future: asyncio.Future


class Reflective:
    """LLM-reviewed staleness: accept | discard | patch, batched up to ``k`` items per call."""

    name = "reflective"

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
        self._timer: asyncio.Task | None = None
        self._calls: set[asyncio.Task] = set()
        self._batches = 0
        self._wired: Any = False

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
        self._wire(ctx)
        if item.artifact is None:
            return StaleDecision(ACCEPT, reason="no proposal to review at this stage")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(item, future))
        if len(self._waiting) >= self._batch_size(item.stage, ctx):
            self._flush(ctx)
        elif self._timer is None or self._timer.done():
            self._timer = ctx.spawn(self._flush_later(ctx), name="reflective-wait")
        return await future

    def _batch_size(self, stage: str, ctx: StageContext) -> int:
        """``k``, but never more than the workers of the checking stage: each waiting item holds
        one of them, so with fewer workers than ``k`` a batch could only ever leave by
        ``max_wait_s`` -- and the stage would stand still until then."""
        runtime = ctx.settings.get("runtime")
        workers = getattr(runtime, "targets", {}).get(stage) if runtime is not None else None
        return max(1, min(self.k, workers)) if workers else self.k

    def _wire(self, ctx: StageContext) -> None:
        """Tell the workflow whether patched artifacts go through the minibatch gate."""
        workflow = getattr(ctx.settings.get("runtime"), "workflow", None)
        if workflow is self._wired:  # once per run (the same policy object may be reused)
            return
        self._wired = workflow
        if workflow is not None and hasattr(workflow, "gate_patches"):
            workflow.gate_patches = self.gate_patches

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
        position = {it.item_id: p for p, it in enumerate(shown)}
        best = ctx.pool.best()
        prompt = build_patch_prompt(
            shown,
            ctx,
            history_tokens=self.history_tokens,
            artifact_chars=self.artifact_chars,
            feedback_chars=self.feedback_chars,
        )
        request = ChatRequest(
            messages=[{"role": "user", "content": prompt}],
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=ctx.rng("patch").randrange(2**31),
            stage="patch",
            item_id=items[0].item_id,
            metadata={"items": [it.item_id for it in items]},
            extra_body=self._schema_body(shown, best) if self.review_schema else None,
        )
        base = {
            "batch": batch_id,
            "batch_size": len(items),
            "trigger": trigger,
            "best_id": best.id,
            **_order_data(items, order),
        }
        if self.review_schema:
            base["review_schema"] = True
        result = await self._llm(ctx).complete(request)
        parsed = parse_answer(result.text, result.finish_reason)
        if parsed.answer is None:
            data = {**base, "malformed": True, "answer_head": (result.text or "")[:300]}
            return [
                StaleDecision(
                    DISCARD,
                    reason=f"unusable review answer ({parsed.reason})",
                    data={**data, "position": position[it.item_id]},
                )
                for it in items
            ]
        return self._apply(items, shown, parsed.answer, ctx, best, base)

    def _schema_body(self, items: list[StaleItem], best: Any) -> dict[str, Any]:
        schema = review_json_schema(
            item_ids=[it.item_id for it in items],
            components=list(best.artifact.names),
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
        best: Any,
        base: dict[str, Any],
    ) -> list[StaleDecision]:
        by_id = {d.item: d for d in answer.decisions}
        matched = "id"
        if not any(it.item_id in by_id for it in items):
            if len(answer.decisions) == 1:  # one verdict for the whole batch
                by_id = {it.item_id: answer.decisions[0] for it in items}
                matched = "single"
            elif len(answer.decisions) == len(items):
                # the n-th decision belongs to the n-th item *as shown*
                by_id = {it.item_id: d for it, d in zip(shown, answer.decisions, strict=True)}
                matched = "position"
        chosen: list[tuple[str, str]] = []
        for it in items:
            d = by_id.get(it.item_id)
            chosen.append((d.decision, d.rationale) if d else (DISCARD, ""))
        patch_ids = [it.item_id for it, (dec, _) in zip(items, chosen, strict=True) if dec == PATCH]
        patched_art, patch_problem = None, None
        if patch_ids:
            patched_art, patch_problem = self._merge(items, patch_ids, answer.patched, ctx, best)
        out: list[StaleDecision] = []
        first_patch = True
        position = {it.item_id: p for p, it in enumerate(shown)}
        for it, (dec, why) in zip(items, chosen, strict=True):
            data = {
                **base,
                "position": position[it.item_id],
                "matched_by": matched,
                "rationale": why,
                "answered": dec,
            }
            if it.item_id not in by_id:
                out.append(
                    StaleDecision(
                        DISCARD, reason="the reviewer gave no decision for this item", data=data
                    )
                )
            elif dec == PATCH and patched_art is None:
                out.append(
                    StaleDecision(DISCARD, reason=f"patch not usable: {patch_problem}", data=data)
                )
            elif dec == PATCH and first_patch:
                first_patch = False
                out.append(
                    StaleDecision(
                        PATCH,
                        reason=why or "patched into the current best",
                        artifact=patched_art,
                        patched_from=tuple(patch_ids),
                        data={**data, "patched_from": patch_ids},
                    )
                )
            elif dec == PATCH:
                out.append(
                    StaleDecision(
                        MERGED,
                        reason=why or "merged into a shared patch",
                        merged_into=patched_art.id,
                        data={**data, "merged_into": patched_art.id},
                    )
                )
            else:
                out.append(StaleDecision(dec, reason=why or f"reviewer said {dec}", data=data))
        return out

    def _merge(
        self,
        items: list[StaleItem],
        patch_ids: list[str],
        patched: dict[str, str] | None,
        ctx: StageContext,
        best: Any,
    ) -> tuple[Artifact | None, str | None]:
        if not patched:
            return None, "the answer has no 'patched' texts"
        known = {k: v for k, v in patched.items() if k in best.artifact.components and v.strip()}
        if not known:
            return None, (
                f"'patched' names no part of the current best "
                f"({sorted(patched)} vs {best.artifact.names})"
            )
        comps = {**dict(best.artifact.components), **known}
        stale = [it.artifact.id for it in items if it.item_id in patch_ids and it.artifact]
        art = Artifact(
            comps,
            parents=(best.id, *stale),
            origin="patch",
            version_stamp=ctx.pool.pool_version,
            frontier_stamp=ctx.pool.frontier_version,
            meta={"patched_from": patch_ids, "next_component": best.next_component},
        )
        if art.id == best.id or all(
            v.strip() == best.artifact.components[k].strip() for k, v in known.items()
        ):
            return None, "the patch leaves the current best unchanged"
        if art.id in ctx.pool:
            return None, f"the patch duplicates pool candidate {art.id}"
        ctx.emit(
            Kind.PATCH_MADE,
            stage="patch",
            artifact_id=art.id,
            parent_id=best.id,
            version_stamp=ctx.pool.pool_version,
            frontier_stamp=ctx.pool.frontier_version,
            data={
                "patched_from": patch_ids,
                "stale_artifacts": stale,
                "components": sorted(known),
                # what the reviewer wrote (capped), so a patch can be read in the log
                "texts": {k: v[: self.artifact_chars] for k, v in known.items()},
            },
        )
        return art, None


def _order_data(items: list[StaleItem], order: list[int]) -> dict[str, Any]:
    """What every decision of a batch records about the order the reviewer saw."""
    return {"shown_order": [items[i].item_id for i in order]}


POLICIES["reflective"] = Reflective
POLICIES["reflective_async"] = Reflective
