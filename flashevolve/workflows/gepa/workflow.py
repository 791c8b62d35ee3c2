"""GEPA as a flashevolve workflow: rollout -> propose -> gate -> validate.

Semantics follow GEPA 0.1.4 (see docs/gepa.md): epoch-shuffled minibatches of 3, the parent is
re-run on its minibatch with traces, reflection is skipped when every minibatch score is
perfect, one reflection call rewrites one component chosen round-robin (the pointer moves only
once the rollout is past the skip check), the child runs on the same minibatch and passes only if
its score sum is *strictly* greater, and every child that passes is scored on the whole
validation set and admitted.  Options: Combee reflection over a minibatch of K
(``combee=K``, :mod:`.combee`) and gepa's merge (``use_merge=True``, :mod:`.merge`).

Deliberate differences: a reflection answer without a closed fenced block is rejected (GEPA
adopts the raw text); each stage draws from its own RNG stream unless ``rng="shared"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from flashevolve.artifacts import Artifact
from flashevolve.errors import ConfigError
from flashevolve.events.schema import Kind
from flashevolve.policies.staleness import StaleDecision, StaleItem
from flashevolve.pool import CandidateRecord, make_selector
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import StageSpec, WorkItem
from flashevolve.tasks.base import Rollout
from flashevolve.workflows.artifact_review import ArtifactReview
from flashevolve.workflows.base import Accounting
from flashevolve.workflows.evaluation import run_examples, scores_by_id
from flashevolve.workflows.gepa import speculative
from flashevolve.workflows.gepa.combee import Combee
from flashevolve.workflows.gepa.events import INFRA_ALL, drop, emit_admitted
from flashevolve.workflows.gepa.items import GatedChild, Job, Proposal, Reflectable
from flashevolve.workflows.gepa.merge import MergeSchedule
from flashevolve.workflows.gepa.merge_jobs import make_merge_job, screen_merge
from flashevolve.workflows.gepa.propose import propose
from flashevolve.workflows.gepa.reflection import reflective_records
from flashevolve.workflows.sampling import EpochSampler

ACCOUNTING = Accounting(
    proposal="a child prompt written by reflection (one call, or Combee's map and reduce "
    "calls), or a merge of two candidates",
    acceptance="a child that passed the minibatch gate (and, with speculation, the validation "
    "bar) and joined the pool",
    sweep="a child scored on the whole validation set",
    gate="the child's score sum on the parent's minibatch beats the parent's",
)


class GepaWorkflow(ArtifactReview):
    name = "gepa"
    accounting = ACCOUNTING
    item_types = (Job, Reflectable, Proposal, GatedChild)
    #: ``workers={"evaluate": n}`` sets both evaluation stages (the paper's K3).
    worker_aliases = {"evaluate": ("gate", "validate")}

    def __init__(
        self,
        *,
        minibatch_size: int | None = None,
        selector: Any = "pareto",
        eval_concurrency: int = 32,  # requests per sweep at once: what GEPA/DSPy users run
        skip_perfect: bool = True,
        perfect_score: float = 1.0,
        reflection_max_tokens: int | None = None,
        reflection_temperature: float | None = None,
        reflection_extra_body: dict[str, Any] | None = None,
        combee: int | None = None,
        combee_duplication: int = 2,
        combee_reduce_fanin: int | None = None,
        use_merge: bool = False,
        max_merge_invocations: int = 5,
    ) -> None:
        """``combee=K``: Combee reflection over a minibatch of K examples (it sets the minibatch
        size; ``combee_duplication`` is p, ``combee_reduce_fanin`` the partials per reduce call,
        None for one call).  ``use_merge``/``max_merge_invocations``: gepa's merge."""
        if combee is not None:
            self.combee: Combee | None = Combee(combee, combee_duplication, combee_reduce_fanin)
            if minibatch_size is not None and minibatch_size != combee:
                raise ConfigError(
                    f"combee={combee} sets the reflection minibatch to {combee} examples; "
                    f"drop minibatch_size={minibatch_size} (or make it {combee})"
                )
            minibatch_size = combee
        else:
            self.combee = None
        minibatch_size = 3 if minibatch_size is None else minibatch_size
        if minibatch_size < 1:
            raise ConfigError("minibatch_size must be at least 1")
        if eval_concurrency < 1:
            raise ConfigError("eval_concurrency must be at least 1")
        if max_merge_invocations < 0:
            raise ConfigError("max_merge_invocations must be 0 or more")
        self.minibatch_size = minibatch_size
        self.selector = make_selector(selector)
        self.eval_concurrency = eval_concurrency
        self.skip_perfect = skip_perfect
        self.perfect_score = perfect_score
        self.reflection_max_tokens = reflection_max_tokens
        self.reflection_temperature = reflection_temperature
        # e.g. {"grammar": fenced_block_grammar()} for small local reflection models
        self.reflection_extra_body = reflection_extra_body
        self.merges = MergeSchedule(max_merge_invocations) if use_merge else None
        # -- state (snapshot/restore) --
        self._sampler: EpochSampler | None = None
        self._sampler_state: dict[str, Any] | None = None  # restored, applied on first use
        self._iteration = 0
        #: the round-robin component pointer per candidate (gepa keeps it per program)
        self._pointers: dict[str, int] = {}

    def stages(self) -> list[StageSpec]:
        return [
            StageSpec(
                "rollout",
                self._rollout,
                role="task",
                default_workers=8,
                description="run the parent on a train minibatch, with feedback",
            ),
            StageSpec(
                "propose",
                self._propose,
                role="reflection",
                default_workers=4,
                description="reflect on the records and rewrite one component",
            ),
            StageSpec(
                "gate",
                self._gate,
                role="task",
                check_staleness=True,
                default_workers=8,
                description="run the child on the same minibatch; pass if the sum improves",
            ),
            StageSpec(
                "validate",
                self._validate,
                role="task",
                default_workers=8,
                description="score the child on the full validation set and admit it",
            ),
        ]

    # -- state ------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        sampler = self._sampler.to_state() if self._sampler else self._sampler_state
        state = {
            "iteration": self._iteration,
            "sampler": sampler,
            "pointers": dict(self._pointers),
        }
        if self.merges is not None:
            state["merge"] = self.merges.snapshot()
        return state

    def restore(self, state: Mapping[str, Any], ctx: StageContext) -> None:
        self._iteration = int(state.get("iteration", 0))
        self._pointers = {str(k): int(v) for k, v in dict(state.get("pointers", {})).items()}
        self._sampler, self._sampler_state = None, state.get("sampler")
        if self.merges is not None:
            self.merges.restore(state.get("merge", {}))

    def sim_workload(self) -> Any:
        """What GEPA's requests look like to the serving simulator (:mod:`.sim`)."""
        from flashevolve.workflows.gepa.sim import GEPA_WORKLOAD

        return GEPA_WORKLOAD

    def check_speculation(self, speculation: Any) -> None:
        """GEPA releases the rollout stage on a prefix of the minibatch and the validate stage
        on a prefix of the validation set; every Speculation setting applies."""

    def _pointer(self, record: CandidateRecord, ctx: StageContext) -> int:
        """A candidate's component pointer; one admitted after the last saved state inherits
        the largest of its parents' (gepa's rule for a child)."""
        if record.id not in self._pointers:
            known = [self._pointers[p] for p in record.parents if p in self._pointers]
            self._pointers[record.id] = max(known, default=0)
        return self._pointers[record.id]

    # -- before the loop -----------------------------------------------------------------------
    async def initialize(self, ctx: StageContext) -> None:
        if len(ctx.pool):  # resumed run: the pool already holds the seed and its descendants
            return
        seed = Artifact(ctx.task.seed_artifact(), origin="seed")
        rollouts = await run_examples(
            ctx,
            seed.components,
            ctx.task.val,
            stage="validate",
            item_id="seed",
            concurrency=self.eval_concurrency,
        )
        scores, left_out = scores_by_id(ctx.task.val, rollouts)
        if not scores:
            raise RuntimeError(
                "the seed could not be scored: every validation request failed at the "
                "infrastructure (is the server reachable?)"
            )
        record = ctx.pool.admit(seed, scores, ts=ctx.now())
        assert record is not None  # the pool was empty
        mean = record.mean_score
        ctx.emit(
            Kind.VALIDATION_FINISHED,
            stage="validate",
            artifact_id=seed.id,
            score=mean,
            data={"n": len(scores), "seed": True, **({"left_out": left_out} if left_out else {})},
        )
        ctx.emit(
            Kind.ADMITTED,
            stage="validate",
            artifact_id=seed.id,
            score=mean,
            data={
                "origin": "seed",
                "parents": [],
                "val_scores": scores,
                "size": sum(len(text) for text in seed.components.values()),
                "size_unit": "characters",
            },
        )

    async def make_job(self, ctx: StageContext) -> Job | Proposal:
        """gepa's iteration start: a merge when one is due after an admitted child, otherwise a
        parent (selector draw) and the iteration's minibatch (sampler), in that order of draws."""
        if self._sampler is None:
            self._sampler = EpochSampler(
                len(ctx.task.train), self.minibatch_size, ctx.rng("sample")
            )
            if self._sampler_state:
                self._sampler.load_state(self._sampler_state)
        if self.merges is not None:
            merge, used = make_merge_job(self.merges, ctx, self._iteration)
            self._iteration += used  # a merge uses up its iteration (and minibatch slice)
            if merge is not None:
                return merge
        iteration = self._iteration
        parent: CandidateRecord = self.selector.select(ctx.pool, ctx.rng("select"))
        self._iteration += 1
        batch = [ctx.task.train[i] for i in self._sampler.batch(iteration)]
        job = Job(parent.artifact, batch, "", iteration, 0)
        ctx.emit(
            Kind.PARENT_SELECTED,
            artifact_id=parent.id,
            score=parent.mean_score,
            version_stamp=ctx.pool.pool_version,
            frontier_stamp=ctx.pool.frontier_version,
            data={
                "iteration": iteration,
                "minibatch": [ex.id for ex in batch],
                "selector": self.selector.name,
                "reflection": "combee" if self.combee is not None else "single",
            },
        )
        return job

    # -- stages ------------------------------------------------------------------------------
    async def _rollout(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        if isinstance(item.payload, Proposal):  # a merge: nothing to roll out, screen it
            return [("gate", item.payload)]
        job: Job = item.payload
        spec = ctx.speculation
        if spec is not None:  # a rolled-back parent, or a rollout released on a prefix
            return await speculative.rollout(self, item, ctx, spec)
        rollouts = await run_examples(
            ctx,
            job.parent.components,
            job.minibatch,
            stage="rollout",
            item_id=item.item_id,
            concurrency=self.eval_concurrency,
        )
        return self.to_reflection(ctx, item, job, rollouts)

    def to_reflection(
        self, ctx: StageContext, item: WorkItem, job: Job, rollouts: list[Rollout], **data: Any
    ) -> list[tuple[str, Any]]:
        """After the parent's rollout: gepa's skip check, then the component the job rewrites.

        The parent's round-robin pointer moves here, not when the job is made: an iteration
        skipped for a perfect minibatch uses up no component (gepa).  Several jobs on one parent
        in flight at once take successive components in the order their rollouts finish; each
        child inherits the pointer right after its own job's step.
        Examples whose rollout the infrastructure failed leave the minibatch (they say nothing
        about the parent); a minibatch with none left ends the job.
        """
        failed = [
            ex.id for ex, r in zip(job.minibatch, rollouts, strict=True) if r.infrastructure_failure
        ]
        if failed:
            kept = [
                (ex, r)
                for ex, r in zip(job.minibatch, rollouts, strict=True)
                if not r.infrastructure_failure
            ]
            data["left_out"] = failed
            if not kept:
                return drop(ctx, "rollout", item.item_id, job.parent.id, INFRA_ALL)
            job = replace(job, minibatch=[ex for ex, _ in kept])
            rollouts = [r for _, r in kept]
        if self.skipped_as_perfect(ctx, item, job, rollouts, **data):
            return []
        names = job.parent.names
        pointer = self._pointer(ctx.pool.get(job.parent.id), ctx)
        self._pointers[job.parent.id] = pointer + 1
        job = replace(job, component=names[pointer % len(names)], child_pointer=pointer + 1)
        return [("propose", Reflectable(job, rollouts))]

    def skipped_as_perfect(
        self, ctx: StageContext, item: WorkItem, job: Job, rollouts: list[Rollout], **data: Any
    ) -> bool:
        """GEPA skips reflection when every minibatch score is perfect; says so in an event."""
        if not (self.skip_perfect and all(r.score >= self.perfect_score for r in rollouts)):
            return False
        ctx.emit(
            Kind.REFLECTION_SKIPPED,
            stage="rollout",
            item_id=item.item_id,
            artifact_id=job.parent.id,
            reason="every minibatch score is perfect",
            data=data or None,
        )
        return True

    async def _propose(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        return await propose(self, item, ctx)

    async def _gate(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        prop: Proposal = item.payload
        if prop.merge is not None:
            return await screen_merge(self, item, ctx)
        if prop.skip_gate:
            return [("validate", GatedChild(prop, []))]
        batch = prop.job.minibatch
        child_rollouts = await run_examples(
            ctx,
            prop.child.components,
            batch,
            stage="gate",
            item_id=item.item_id,
            concurrency=self.eval_concurrency,
        )
        parent_rollouts = prop.parent_rollouts
        if parent_rollouts is None:  # a patched proposal: compare against its new parent
            parent_rollouts = await run_examples(
                ctx,
                prop.job.parent.components,
                batch,
                stage="gate",
                item_id=item.item_id,
                concurrency=self.eval_concurrency,
            )
        # compare only where both answered: an example the infrastructure failed is left out
        pairs = [
            (c.score, p.score)
            for c, p in zip(child_rollouts, parent_rollouts, strict=True)
            if not (c.infrastructure_failure or p.infrastructure_failure)
        ]
        left_out = [ex.id for ex, c, p in zip(batch, child_rollouts, parent_rollouts, strict=True)
                    if c.infrastructure_failure or p.infrastructure_failure]  # fmt: skip
        if not pairs:
            return drop(ctx, "gate", item.item_id, prop.child.id, INFRA_ALL)
        child_sum = sum(c for c, _ in pairs)
        parent_sum = sum(p for _, p in pairs)
        passed = child_sum > parent_sum
        ctx.emit(
            Kind.GATE_PASSED if passed else Kind.GATE_FAILED,
            stage="gate",
            item_id=item.item_id,
            artifact_id=prop.child.id,
            parent_id=prop.job.parent.id,
            score=child_sum,
            version_stamp=item.version_stamp,
            data={
                "parent_sum": parent_sum,
                "patched": bool(prop.patched_from),
                **({"left_out": left_out} if left_out else {}),
            },
        )
        return [("validate", GatedChild(prop, child_rollouts))] if passed else []

    async def _validate(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        if ctx.speculation is not None:  # prefix-first scoring with a bar
            return await speculative.validate(self, item, ctx, ctx.speculation)
        gated: GatedChild = item.payload
        child = gated.proposal.child
        val = ctx.task.val
        rollouts = await run_examples(
            ctx,
            child.components,
            val,
            stage="validate",
            item_id=item.item_id,
            concurrency=self.eval_concurrency,
        )
        scores, left_out = scores_by_id(val, rollouts)  # not scored, rather than scored 0
        if not scores:
            return drop(ctx, "validate", item.item_id, child.id, INFRA_ALL)
        mean = sum(scores.values()) / len(scores)
        ctx.emit(
            Kind.VALIDATION_FINISHED,
            stage="validate",
            item_id=item.item_id,
            artifact_id=child.id,
            score=mean,
            data={"n": len(scores), **({"left_out": left_out} if left_out else {})},
        )
        self.admit(ctx, item, gated.proposal, scores)
        return []

    def admit(
        self,
        ctx: StageContext,
        item: WorkItem,
        prop: Proposal,
        scores: dict[str, float],
        *,
        speculative: bool = False,
    ) -> CandidateRecord | None:
        """GEPA's admission rule: every child that passed the gate joins the pool.

        ``speculative=True`` admits on a prefix's scores (the ``admitted`` event comes at
        confirmation, :func:`emit_admitted`); otherwise the ``admitted`` event is emitted here.
        """
        child = prop.child
        record = ctx.pool.admit(
            child, scores, ts=ctx.now(), speculative=speculative, patched_from=prop.patched_from
        )
        if record is None:
            ctx.emit(
                Kind.ITEM_DROPPED,
                stage="validate",
                item_id=item.item_id,
                artifact_id=child.id,
                reason="an identical artifact was admitted meanwhile",
            )
            return None
        if prop.merge is not None:  # gepa: the larger of the parents' pointers at admission
            parents = [ctx.pool.get(p) for p in prop.merge.parents]
            self._pointers[child.id] = max(self._pointer(r, ctx) for r in parents)
        else:
            self._pointers.setdefault(child.id, prop.job.child_pointer)
            if self.merges is not None:
                self.merges.reflective_admitted()
        if not speculative:
            emit_admitted(ctx, item, prop, record, scores)
        return record

    # -- staleness -------------------------------------------------------------------------
    def stale_view(
        self, item: WorkItem, ctx: StageContext, *, lag: int, frontier_lag: int
    ) -> StaleItem:
        payload = item.payload
        artifact = parent = None
        feedback: Sequence[dict[str, Any]] = ()
        if isinstance(payload, Proposal):
            artifact, parent = payload.child, payload.job.parent
            if payload.parent_rollouts is not None:
                feedback = reflective_records(payload.job.minibatch, payload.parent_rollouts)
        elif isinstance(payload, Job | Reflectable):
            parent = payload.parent if isinstance(payload, Job) else payload.job.parent
        return StaleItem.of_item(
            item,
            ctx.now(),
            lag=lag,
            frontier_lag=frontier_lag,
            artifact=artifact,
            parent=parent,
            feedback=feedback,
            payload=payload,
            subject_id=artifact.id if artifact is not None else None,
        )

    def apply_patch(self, item: WorkItem, decision: StaleDecision, ctx: StageContext) -> Proposal:
        """A repaired artifact re-enters the gate against the candidate it was merged into
        (or goes straight to validation when the policy said not to re-gate repairs)."""
        prop: Proposal = item.payload
        repair = decision.repair
        if repair is None or not isinstance(repair.value, Artifact):
            raise ValueError("a GEPA patch decision must carry a repaired Artifact")
        patched: Artifact = repair.value
        base_id = repair.parent_id
        if base_id is not None and base_id in ctx.pool:
            base = ctx.pool.get(base_id)
        else:
            base = ctx.pool.best()
        job = replace(prop.job, parent=base.artifact, child_pointer=self._pointer(base, ctx))
        return Proposal(
            job,
            patched,
            None,
            decision.patched_from or (item.item_id,),
            skip_gate=not decision.recheck,
        )
