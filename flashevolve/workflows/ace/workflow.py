"""ACE (Agentic Context Engineering) as a flashevolve workflow.

Stages: generate -> reflect -> curate -> apply -> evaluate.  A job is one training example (the
official loop's step), taken in order, epoch after epoch.

- *generate* (task model): the example answered with the current playbook in context (JSON:
  reasoning, bullet ids used, final answer), scored by the task's metric;
- *reflect* (reflection model): diagnosis, key insight and a helpful/harmful/neutral tag per used
  bullet; with ``reflect_rounds`` > 1 a wrong answer is retried with the reflection as a note, as
  the official code does.  The reflection waits in the workflow's buffer; once
  ``curator_frequency`` reflections wait, the step goes on to the curator;
- *curate* (reflection model): the buffered reflections (up to ``curator_batch``) and the playbook
  -> delta operations, each stamped with the playbook version it was written against;
- *apply* (code): stale operations judged one by one (:mod:`.review`), the rest applied by the
  batch rule (:mod:`.operations`), the reflections' counter tags added, near-duplicates folded;
  the new playbook version is admitted to the pool unscored (one admission = one accepted update);
- *evaluate* (task model): every ``eval_steps`` accepted updates, the newest version is scored on
  the validation set (``validation_finished`` + ``scored``); the best playbook is the best scored.

``mode="sync"`` (one job in flight, one worker per stage) is the official loop: generator,
reflector, curator every ``curator_frequency`` examples, validation every ``eval_steps`` updates.
``mode="async"`` overlaps generators and reflectors over many examples while the curators take
whatever reflections are buffered when they start.  Differences from the official code are listed
in docs/ace.md.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from flashevolve.artifacts import Artifact
from flashevolve.events.schema import Kind
from flashevolve.policies.staleness import ACCEPT, PATCH, StaleItem
from flashevolve.pool import CandidateRecord
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import StageSpec, WorkItem
from flashevolve.tasks.base import Rollout
from flashevolve.workflows.ace import steps
from flashevolve.workflows.ace.generator import COMPONENT, GeneratorView, check_task
from flashevolve.workflows.ace.items import (
    CuratedBatch,
    CurateTicket,
    EvalTicket,
    Generated,
    Reflection,
    Step,
)
from flashevolve.workflows.ace.operations import StampedOp
from flashevolve.workflows.ace.playbook import Playbook
from flashevolve.workflows.ace.prompts import response_format
from flashevolve.workflows.ace.review import CLEAN, CONFLICT, AceReview, StaleOp, classify
from flashevolve.workflows.base import Accounting
from flashevolve.workflows.evaluation import run_examples

ACCOUNTING = Accounting(
    proposal="a curator call that returned at least one well-formed delta operation",
    acceptance="a playbook update: a curator batch of which at least one operation applied, "
    "admitted as a new playbook version",
    sweep="a playbook version scored on the whole validation set",
    gate=None,
)


class AceWorkflow(AceReview):
    name = "ace"
    accounting = ACCOUNTING
    item_types = (Step, Generated, CurateTicket, CuratedBatch, EvalTicket)

    def __init__(
        self,
        *,
        curator_frequency: int = 1,
        eval_steps: int = 1,
        reflect_rounds: int = 1,
        curator_batch: int = 8,
        max_ops: int = 6,
        eval_concurrency: int = 20,
        dedup: bool = True,
        dedup_threshold: float = 0.8,
        sections: list[str] | None = None,
        initial_playbook: str | None = None,
        use_reference: bool = True,
        shuffle: bool = False,
        epochs: int | None = None,
        skip_superseded: bool = True,
        history_versions: int = 64,
        generator_max_tokens: int | None = 2048,
        reflection_max_tokens: int | None = 2048,
        temperature: float | None = None,
        json_mode: str | None = None,
    ) -> None:
        for name, value in (
            ("curator_frequency", curator_frequency),
            ("eval_steps", eval_steps),
            ("reflect_rounds", reflect_rounds),
            ("curator_batch", curator_batch),
            ("max_ops", max_ops),
            ("eval_concurrency", eval_concurrency),
            ("history_versions", history_versions),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1 (got {value})")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be at least 1 or None (got {epochs})")
        if json_mode not in (None, "object", "schema"):
            raise ValueError(f"json_mode must be None, 'object' or 'schema' (got {json_mode!r})")
        if not 0 < dedup_threshold <= 1:
            raise ValueError(f"dedup_threshold must be in (0, 1] (got {dedup_threshold})")
        seed_book = (
            Playbook.parse(initial_playbook, strict=False)
            if initial_playbook is not None
            else Playbook.empty(sections)
        )
        self.curator_frequency = curator_frequency
        self.eval_steps = eval_steps
        self.reflect_rounds = reflect_rounds
        self.curator_batch = curator_batch
        self.max_ops = max_ops
        self.eval_concurrency = eval_concurrency
        self.dedup_threshold: float | None = dedup_threshold if dedup else None
        self.use_reference = use_reference
        self.shuffle = shuffle
        self.epochs = epochs
        self.skip_superseded = skip_superseded
        self.history_versions = history_versions
        self.generator_max_tokens = generator_max_tokens
        self.reflection_max_tokens = reflection_max_tokens
        self.temperature = temperature
        #: ask the server for JSON answers (``response_format`` in the request body): "object"
        #: for any JSON object, "schema" for each role's schema (small local models need it)
        self.json_mode = json_mode
        self.seed_text = seed_book.render()
        # -- state (snapshot/restore) --
        self._next_id = seed_book.max_id_number() + 1
        self._cursor = 0  # training steps taken
        self._pending: list[Reflection] = []  # reflections waiting for a curator
        self._pending_tags: list[tuple[str, str]] = []  # counter tags waiting for an update
        self._since_eval = 0  # accepted updates since the last evaluation ticket
        self._eval_issued = 0  # newest version ticketed for evaluation
        self._history: list[dict[str, Any]] = []  # operations applied per version (bounded)
        # -- caches (not state) --
        self._books: dict[str, Playbook] = {}
        self._apply_lock: asyncio.Lock | None = None

    def stages(self) -> list[StageSpec]:
        return [
            StageSpec("generate", self._generate, role="task", default_workers=8,
                      description="answer one training example with the playbook in context"),
            StageSpec("reflect", self._reflect, role="reflection", default_workers=8,
                      description="diagnose the answer and tag the bullets it used"),
            StageSpec("curate", self._curate, role="reflection", default_workers=2,
                      description="turn buffered reflections into delta operations"),
            StageSpec("apply", self._apply, role="reflection", default_workers=1,
                      description="judge stale operations, apply the rest, admit the playbook"),
            StageSpec("evaluate", self._evaluate, role="task", default_workers=2,
                      description="score a playbook version on the validation set"),
        ]  # fmt: skip

    # -- state ------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "next_id": self._next_id,
            "cursor": self._cursor,
            "pending": [r.to_dict() for r in self._pending],
            "pending_tags": [list(t) for t in self._pending_tags],
            "since_eval": self._since_eval,
            "eval_issued": self._eval_issued,
            "history": [dict(h) for h in self._history],
        }

    def restore(self, state: Mapping[str, Any], ctx: StageContext) -> None:
        self._next_id = int(state.get("next_id", self._next_id))
        self._cursor = int(state.get("cursor", 0))
        self._pending = [Reflection.from_dict(r) for r in state.get("pending", [])]
        self._pending_tags = [(str(i), str(t)) for i, t in state.get("pending_tags", [])]
        self._since_eval = int(state.get("since_eval", 0))
        self._eval_issued = int(state.get("eval_issued", 0))
        self._history = [dict(h) for h in state.get("history", [])]

    # -- playbooks --------------------------------------------------------------------------------
    def _head(self, ctx: StageContext) -> CandidateRecord:
        """The newest playbook version (ACE admits only through apply and never rolls back)."""
        if not ctx.pool.records:
            raise LookupError("no playbook yet: the seed is admitted by initialize()")
        return ctx.pool.records[-1]

    def _book(self, artifact: Artifact) -> Playbook:
        book = self._books.get(artifact.id)
        if book is None:
            book = Playbook.parse(artifact[COMPONENT])
            if len(self._books) >= 32:
                self._books.pop(next(iter(self._books)))
            self._books[artifact.id] = book
        return book

    def _book_at(self, ctx: StageContext, version: int) -> Playbook | None:
        """The playbook as it was at pool version ``version`` (None if unknown)."""
        records = ctx.pool.records
        rec = records[version - 1] if 0 < version <= len(records) else None
        if rec is None or rec.pool_version != version:
            rec = next((r for r in records if r.pool_version == version), None)
        return self._book(rec.artifact) if rec is not None else None

    def _generator(
        self, ctx: StageContext, art: Artifact, reflection: str | None = None
    ) -> GeneratorView:
        return GeneratorView(
            ctx.task,
            max_tokens=self.generator_max_tokens,
            temperature=self.temperature,
            reflection=reflection,
            extra_body=self.extra_body("generate", self._book(art)),
        )

    def extra_body(self, role: str, book: Playbook | None = None) -> dict[str, Any] | None:
        """The ``response_format`` of a role's requests under ``json_mode`` (names limited to
        ``book``'s bullets and sections when given)."""
        if book is None:
            return response_format(self.json_mode, role, self.max_ops)
        return response_format(
            self.json_mode, role, self.max_ops, ids=book.ids(), sections=list(book.sections)
        )

    async def _run(
        self, ctx: StageContext, art: Artifact, examples: list[Any], *, stage: str, item_id: str,
        reflection: str | None = None,
    ) -> list[Rollout]:  # fmt: skip
        return await run_examples(
            ctx,
            art.components,
            examples,
            stage=stage,
            item_id=item_id,
            concurrency=self.eval_concurrency,
            task=self._generator(ctx, art, reflection),
        )

    # -- before the loop --------------------------------------------------------------------------
    async def initialize(self, ctx: StageContext) -> None:
        check_task(ctx.task)
        if len(ctx.pool):  # resumed: the pool holds the seed and every version since
            return
        seed = Artifact({COMPONENT: self.seed_text}, origin="seed")
        rollouts = await self._run(ctx, seed, list(ctx.task.val), stage="evaluate", item_id="seed")
        scores = {ex.id: r.score for ex, r in zip(ctx.task.val, rollouts, strict=True)}
        record = ctx.pool.admit(seed, scores, ts=ctx.now())
        assert record is not None
        self._history = []
        ctx.emit(Kind.VALIDATION_FINISHED, stage="evaluate", artifact_id=seed.id,
                 score=record.mean_score, data={"n": len(scores), "seed": True, "version": 1})  # fmt: skip
        ctx.emit(
            Kind.ADMITTED,
            stage="apply",
            artifact_id=seed.id,
            score=record.mean_score,
            data={"origin": "seed", "parents": [], "val_scores": scores,
                  "bullets": len(self._book(seed)), "size": len(self._book(seed)),
                  "size_unit": "bullets", "chars": len(self.seed_text)},
        )  # fmt: skip

    async def make_job(self, ctx: StageContext) -> Step | None:
        train = ctx.task.train
        epoch, index = divmod(self._cursor, len(train))
        if self.epochs is not None and epoch >= self.epochs:
            if ctx.runtime is not None:
                ctx.runtime.request_stop(
                    f"ACE: {self.epochs} epoch(s) over the training set done", graceful=True
                )
            return None
        if self.shuffle:  # one seeded permutation per epoch: no state beyond the cursor
            order = list(range(len(train)))
            random.Random(f"{ctx.seed}:ace-epoch:{epoch}").shuffle(order)
            index = order[index]
        step = Step(self._cursor, epoch, train[index])
        self._cursor += 1
        return step

    # -- stages -----------------------------------------------------------------------------------
    async def _generate(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        step: Step = item.payload
        head = self._head(ctx)
        [rollout] = await self._run(
            ctx, head.artifact, [step.example], stage="generate", item_id=item.item_id
        )
        steps.emit_rollout(ctx, item, step, head.artifact, rollout)
        return [("reflect", Generated(step, head.artifact, rollout))]

    async def _reflect(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        reflection = await steps.reflect(self, item, ctx, item.payload)
        if reflection is None:
            return []
        self._pending.append(reflection)
        self._pending_tags.extend(reflection.tags)
        if len(self._pending) >= self.curator_frequency:
            return [("curate", CurateTicket(reflection.step))]
        return []

    async def _curate(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        if not self._pending:  # a curator that started earlier took them
            return []
        batch = self._pending[: self.curator_batch]
        del self._pending[: len(batch)]
        head = self._head(ctx)
        result = await steps.curate(self, item, ctx, head, batch)
        return [] if result is None else [("apply", result)]

    async def _apply(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        if self._apply_lock is None:
            self._apply_lock = asyncio.Lock()
        async with self._apply_lock:  # one batch at a time, whatever the worker count
            batch: CuratedBatch = item.payload
            ops, judged = await self._judge_stale(item, ctx, batch)
            done = steps.apply_batch(self, item, ctx, batch, ops, judged)
        if done is None or not done[1]:
            return []
        version = done[0]
        return [("evaluate", EvalTicket(version.artifact, version.pool_version))]

    async def _evaluate(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        ticket: EvalTicket = item.payload
        if self.skip_superseded and ticket.version < self._eval_issued:
            ctx.emit(Kind.ITEM_DROPPED, stage="evaluate", item_id=item.item_id,
                     artifact_id=ticket.artifact.id,
                     reason=f"superseded: version {self._eval_issued} waits for evaluation")  # fmt: skip
            return []
        val = list(ctx.task.val)
        rollouts = await self._run(
            ctx, ticket.artifact, val, stage="evaluate", item_id=item.item_id
        )
        scores = {ex.id: r.score for ex, r in zip(val, rollouts, strict=True)}
        record = ctx.pool.set_scores(ticket.artifact.id, scores)
        data = {"n": len(scores), "version": ticket.version}
        ctx.emit(Kind.VALIDATION_FINISHED, stage="evaluate", item_id=item.item_id,
                 artifact_id=ticket.artifact.id, score=record.mean_score, data=data)  # fmt: skip
        ctx.emit(Kind.SCORED, stage="evaluate", item_id=item.item_id,
                 artifact_id=ticket.artifact.id, score=record.mean_score, data=data)  # fmt: skip
        return []

    # -- staleness --------------------------------------------------------------------------------
    async def _judge_stale(
        self, item: WorkItem, ctx: StageContext, batch: CuratedBatch
    ) -> tuple[list[StampedOp], dict[str, dict[str, Any]]]:
        """The operations to apply after asking about the stale ones, and per stale operation
        what was decided ({op_id: {"decision", "reason", "conflict"}})."""
        version = ctx.pool.pool_version
        stale = [s for s in batch.ops if s.stamp < version]
        if not stale:
            return list(batch.ops), {}
        if ctx.runtime is None:
            raise RuntimeError("ACE judges stale operations through the runtime (ctx.runtime)")
        now = self._book(self._head(ctx).artifact)
        views: list[StaleItem] = []
        for s in stale:
            then = self._book_at(ctx, s.stamp) or now
            kind, reason = classify(s, then, now, self.dedup_threshold)
            if kind not in (CLEAN, CONFLICT):
                continue  # invalid from the start: the normal rules reject it
            views.append(self._op_view(ctx, s, batch, then, conflict=reason))
        decisions = await asyncio.gather(
            *(ctx.runtime.judge_stale(v, stage="apply") for v in views)
        )
        conflicts = {v.item_id: v.conflict for v in views}
        by_op = {v.item_id: d for v, d in zip(views, decisions, strict=True)}
        judged: dict[str, dict[str, Any]] = {}
        ops: list[StampedOp] = []
        for s in batch.ops:
            d = by_op.get(s.op_id)
            if d is None or d.action == ACCEPT:
                ops.append(s)
            elif d.action == PATCH and d.repair is not None:
                ops.extend(d.repair.value)  # the rebased operations take its place
            if d is not None:
                judged[s.op_id] = {
                    "decision": d.action,
                    "reason": d.reason,
                    "conflict": conflicts[s.op_id],
                }
        return ops, judged

    def _op_view(
        self, ctx: StageContext, s: StampedOp, batch: CuratedBatch, then: Playbook,
        *, conflict: str | None,
    ) -> StaleItem:  # fmt: skip
        lag = ctx.pool.pool_version - s.stamp
        return StaleItem(
            item_id=s.op_id,
            stage="apply",
            shares_worker=True,  # every operation of the batch is judged from one apply worker
            lag=lag,
            frontier_lag=max(0, ctx.pool.frontier_version - s.frontier_stamp),
            age_s=ctx.now() - s.written_at,
            version_stamp=s.stamp,
            artifact=None,
            parent=self._record_at(ctx, s.stamp),
            feedback=[r.record() for r in batch.reflections],
            payload=StaleOp(s, list(batch.reflections), then),
            conflict=conflict,
            clean=conflict is None,
            subject_id=s.op_id,
        )

    def _record_at(self, ctx: StageContext, version: int) -> Artifact | None:
        rec = next((r for r in ctx.pool.records if r.pool_version == version), None)
        return rec.artifact if rec is not None else None

    def stale_view(
        self, item: WorkItem, ctx: StageContext, *, lag: int, frontier_lag: int
    ) -> StaleItem:
        """A whole item as a policy would see it (ACE checks operations one by one inside the
        apply stage; this is for the runtime's per-item path)."""
        payload = item.payload
        conflicts: list[str] = []
        if isinstance(payload, CuratedBatch):
            now = self._book(self._head(ctx).artifact)
            for s in payload.ops:
                then = self._book_at(ctx, s.stamp) or now
                kind, reason = classify(s, then, now, self.dedup_threshold)
                if kind == CONFLICT and reason:
                    conflicts.append(f"{s.op_id}: {reason}")
        return StaleItem.of_item(
            item,
            ctx.now(),
            lag=lag,
            frontier_lag=frontier_lag,
            artifact=None,
            parent=None,
            payload=payload,
            conflict="; ".join(conflicts) or None,
            clean=not conflicts,
            subject_id=item.item_id,
        )

    # -- simulator --------------------------------------------------------------------------------
    def sim_workload(self) -> Any:
        """ACE's workload model for the serving simulator (see :mod:`.sim`)."""
        from flashevolve.workflows.ace.sim import ace_workload

        return ace_workload()
