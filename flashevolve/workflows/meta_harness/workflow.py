"""Meta-Harness as a flashevolve workflow: propose -> validate -> evaluate.

Semantics follow Meta-Harness (arXiv 2603.28052, stanford-iris-lab/meta-harness; see
docs/meta-harness.md): a proposer reads the history -- the harness to improve with its code,
score, failures and traces, every harness tried so far, other strong harnesses' code -- and
writes a new harness with a hypothesis; an import check in a separate sandboxed process rejects
broken ones; each valid harness is benchmarked on the validation set only, and every benchmarked
harness that scored enters the pool, whose per-example Pareto front picks what to improve next.
``mode="sync"`` is Meta-Harness's own loop (one candidate at a time, a barrier after each stage);
``mode="async"`` overlaps proposers with evaluations, and a proposal written before newer
harnesses were admitted meets the staleness policy at ``validate``.

Deliberate differences: one harness per proposal (Meta-Harness asks its agent for three per
iteration; several proposers in flight play that role here); the proposer is one model call
with the history in its prompt (Meta-Harness's is a tool-using agent reading files); parents are
chosen by the Pareto selector, so concurrent proposers work from different frontier harnesses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from flashevolve.artifacts import Artifact
from flashevolve.backends.base import ChatRequest, LLMError
from flashevolve.errors import ConfigError
from flashevolve.events.schema import Kind
from flashevolve.policies.staleness import StaleDecision, StaleItem
from flashevolve.pool import make_selector
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import StageSpec, WorkItem
from flashevolve.workflows.artifact_review import CHARS_PER_TOKEN, ArtifactReview
from flashevolve.workflows.base import Accounting
from flashevolve.workflows.meta_harness.harness import (
    EvaluationReport,
    HarnessTask,
    check_harness_task,
    parse_proposal,
)
from flashevolve.workflows.meta_harness.history import History
from flashevolve.workflows.meta_harness.items import Checked, Job, Proposal
from flashevolve.workflows.meta_harness.prompt import build_proposer_prompt
from flashevolve.workflows.meta_harness.runners import HarnessRunner, SandboxRunner
from flashevolve.workflows.meta_harness.sim_runner import SimulatedRunner
from flashevolve.workflows.meta_harness.sweep import STAGE_EVALUATE, validation_sweep

ACCOUNTING = Accounting(
    proposal="a harness written by the proposer (its code taken from a fenced block)",
    acceptance="a harness that passed the import check, ran on the whole validation set and "
    "scored on at least one example; it joins the pool (Meta-Harness keeps every benchmarked "
    "harness)",
    sweep="a harness run on the whole validation set (in the sandbox)",
    gate="the harness imports in a sandboxed process and defines the task's interface",
)

#: The event that records, at the start of every session of a run, which sandbox protections
#: are active (or that the simulated runner runs no code).  A plain string kind until the event
#: schema has a name for it.
PROTECTIONS_EVENT = Kind.SANDBOX_PROTECTIONS

STAGE_PROPOSE, STAGE_VALIDATE = "propose", "validate"


class MetaHarnessWorkflow(ArtifactReview):
    name = "meta-harness"
    accounting = ACCOUNTING
    artifact_kind = (
        "Python harness programs: the code around a fixed language model that decides what "
        "the model is shown, what is remembered from the training data and how its answers "
        "become predictions (one file, harness.py, with setup() and predict())"
    )
    item_types = (Job, Proposal, Checked)

    def __init__(
        self,
        *,
        runner: str | HarnessRunner = "auto",
        selector: Any = "pareto",
        context_tokens: int = 12_000,
        failures_shown: int = 6,
        proposer_max_tokens: int | None = None,
        proposer_temperature: float | None = None,
        proposer_extra_body: dict[str, Any] | None = None,
        eval_concurrency: int = 16,
        processes: int = 2,
        check_timeout_s: float = 30.0,
        setup_timeout_s: float = 120.0,
        predict_timeout_s: float = 60.0,
        candidate_timeout_s: float = 900.0,
        max_llm_calls: int = 400,
        allow_unsandboxed: bool = False,
    ) -> None:
        """``runner``: ``"auto"`` (the simulated runner on a ``sim:`` backend, else the
        sandbox), ``"sandbox"``, ``"simulated"`` or a :class:`HarnessRunner`.  The timeouts,
        ``processes`` and ``max_llm_calls`` (model calls per candidate) bound the sandbox
        runner; ``eval_concurrency`` is the simulated runner's examples at once.
        ``allow_unsandboxed`` runs generated code even where nothing isolates it (loud on
        purpose: the code can then read your files and reach the network)."""
        if context_tokens < 500:
            raise ConfigError("context_tokens must be at least 500")
        if eval_concurrency < 1 or processes < 1:
            raise ConfigError("eval_concurrency and processes must be at least 1")
        if isinstance(runner, str) and runner not in ("auto", "sandbox", "simulated"):
            raise ConfigError(
                f"runner must be 'auto', 'sandbox', 'simulated' or a HarnessRunner, not {runner!r}"
            )
        self.runner_spec = runner
        self.selector = make_selector(selector)
        self.context_tokens = context_tokens
        self.proposer_max_tokens = proposer_max_tokens
        self.proposer_temperature = proposer_temperature
        self.proposer_extra_body = proposer_extra_body
        self.eval_concurrency = eval_concurrency
        self.allow_unsandboxed = allow_unsandboxed
        self.sandbox_options: dict[str, Any] = {
            "processes": processes,
            "check_timeout_s": check_timeout_s,
            "setup_timeout_s": setup_timeout_s,
            "predict_timeout_s": predict_timeout_s,
            "candidate_timeout_s": candidate_timeout_s,
            "max_llm_calls": max_llm_calls,
            "allow_unsandboxed": allow_unsandboxed,
        }
        self.runner: HarnessRunner | None = None if isinstance(runner, str) else runner
        # -- state (snapshot/restore) --
        self.history = History(keep_failures=failures_shown)
        self._iteration = 0

    def stages(self) -> list[StageSpec]:
        return [
            StageSpec(
                STAGE_PROPOSE,
                self._propose,
                role="reflection",
                default_workers=4,
                description="read the history and write a new harness with a hypothesis",
            ),
            StageSpec(
                STAGE_VALIDATE,
                self._validate,
                role="task",
                check_staleness=True,
                default_workers=2,
                description="import the harness in the sandbox and check its interface",
            ),
            StageSpec(
                STAGE_EVALUATE,
                self._evaluate,
                role="task",
                default_workers=2,
                description="run the harness on the validation set in the sandbox; admit it",
            ),
        ]

    # -- state ------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {"iteration": self._iteration, "history": self.history.snapshot()}

    def restore(self, state: Mapping[str, Any], ctx: StageContext) -> None:
        self._iteration = int(state.get("iteration", 0))
        self.history.restore(state.get("history", []))

    def sim_workload(self) -> Any:
        """What Meta-Harness's requests look like to the serving simulator (:mod:`.sim`)."""
        from flashevolve.workflows.meta_harness.sim import META_HARNESS_WORKLOAD

        return META_HARNESS_WORKLOAD

    def resolve_runner(self, ctx: StageContext) -> HarnessRunner:
        if self.runner is not None:
            return self.runner
        spec = self.runner_spec
        simulated = str(getattr(ctx.task_llm, "endpoint", "")).startswith("sim:")
        if spec == "simulated" or (spec == "auto" and simulated):
            self.runner = SimulatedRunner(concurrency=self.eval_concurrency)
        else:
            self.runner = SandboxRunner(**self.sandbox_options)
        return self.runner

    # -- before the loop ---------------------------------------------------------------------------
    async def initialize(self, ctx: StageContext) -> None:
        task = check_harness_task(ctx.task)
        runner = self.resolve_runner(ctx)
        info = runner.describe()  # the sandbox refuses here when nothing isolates the code
        ctx.emit(PROTECTIONS_EVENT, reason=info.get("summary"), data=info)
        if len(ctx.pool):  # resumed: the pool already holds the seed and its descendants
            return
        seed = Artifact(task.seed_artifact(), origin="seed")
        verdict = await runner.check(seed.components, task)
        if not verdict.ok:
            raise ConfigError(
                f"the seed harness of task {task.name!r} fails the check: {verdict.reason}"
            )
        report = await validation_sweep(self.runner, ctx, task, seed, "seed")
        scores = report.scores()
        record = ctx.pool.admit(seed, scores, ts=ctx.now())
        assert record is not None  # the pool was empty
        self._record(ctx, task, seed, None, "", report, admitted=True)
        ctx.emit(
            Kind.ADMITTED,
            stage=STAGE_EVALUATE,
            artifact_id=seed.id,
            score=record.mean_score,
            data={"origin": "seed", "parents": [], "val_scores": scores},
        )

    async def make_job(self, ctx: StageContext) -> Job:
        """A harness to improve (Pareto selection) and the proposer's prompt, built now."""
        task: HarnessTask = ctx.task  # type: ignore[assignment]
        parent = self.selector.select(ctx.pool, ctx.rng("select"))
        parts = build_proposer_prompt(
            task,
            parent,
            self.history,
            ctx.pool,
            budget_chars=self.context_tokens * CHARS_PER_TOKEN,
        )
        iteration = self._iteration
        self._iteration += 1
        ctx.emit(
            Kind.PARENT_SELECTED,
            artifact_id=parent.id,
            score=parent.mean_score,
            version_stamp=ctx.pool.pool_version,
            frontier_stamp=ctx.pool.frontier_version,
            data={
                "iteration": iteration,
                "selector": self.selector.name,
                "prompt_chars": len(parts.text),
                "attempts_listed": parts.attempts_listed,
                "code_shown": parts.code_shown,
                "clipped": parts.clipped,
            },
        )
        return Job(
            parent.artifact,
            parent.mean_score,
            parts.text,
            iteration,
            parts.attempts_listed,
            parts.code_shown,
            ctx.rng("seed:propose").randrange(2**31),
        )

    # -- stages ------------------------------------------------------------------------------------
    async def _propose(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        job: Job = item.payload
        task: HarnessTask = ctx.task  # type: ignore[assignment]
        request = ChatRequest(
            messages=[{"role": "user", "content": job.prompt}],
            max_tokens=self.proposer_max_tokens,
            temperature=self.proposer_temperature,
            seed=job.request_seed,
            stage=STAGE_PROPOSE,
            item_id=item.item_id,
            metadata={"parent": job.parent.id, "iteration": job.iteration},
            extra_body=self.proposer_extra_body,
        )
        try:
            result = await ctx.reflection_llm.complete(request)
        except LLMError as err:
            if not err.infrastructure and ctx.runtime is not None:
                # The server refused the prompt itself (too long for its context, invalid):
                # every next proposal would be refused the same way, at once -- a hot loop that
                # proposes nothing.  Stop the run and say what to change.
                ctx.runtime.request_stop(
                    f"Meta-Harness: the server refused the proposer's prompt ({err}); lower "
                    "--proposer-context (context_tokens) or give the server more context per "
                    "request (--ctx-per-slot for --backend local)",
                    graceful=True,
                )
            return self._reject(ctx, item, job, f"the proposer's call failed: {err}")
        parsed = parse_proposal(result.text)
        if parsed.code is None:
            reason = parsed.reason or "no code"
            if result.finish_reason == "length":
                reason += " (the answer hit max_tokens)"
            return self._reject(ctx, item, job, reason, hypothesis=parsed.hypothesis)
        main = task.harness.main_file
        child = Artifact(
            {**dict(job.parent.components), main: parsed.code},
            parents=(job.parent.id,),
            version_stamp=item.version_stamp,
            frontier_stamp=item.frontier_stamp,
            origin="proposer",
            meta={"hypothesis": parsed.hypothesis},
        )
        if child.id == job.parent.id:
            return self._reject(ctx, item, job, "the proposer returned the harness unchanged")
        if child.id in ctx.pool or self.history.get(child.id) is not None:
            return self._reject(ctx, item, job, f"duplicate of harness {child.id}, tried before")
        ctx.emit(
            Kind.PROPOSAL_MADE,
            stage=STAGE_PROPOSE,
            item_id=item.item_id,
            artifact_id=child.id,
            parent_id=job.parent.id,
            version_stamp=item.version_stamp,
            frontier_stamp=item.frontier_stamp,
            data={
                "origin": "proposer",
                "iteration": job.iteration,
                "hypothesis": parsed.hypothesis,
                "code_chars": len(parsed.code),
                "prompt_chars": len(job.prompt),
            },
        )
        return [(STAGE_VALIDATE, Proposal(job, child, parsed.hypothesis))]

    def _reject(
        self, ctx: StageContext, item: WorkItem, job: Job, reason: str, **data: Any
    ) -> list[tuple[str, Any]]:
        ctx.emit(
            Kind.PROPOSAL_REJECTED,
            stage=STAGE_PROPOSE,
            item_id=item.item_id,
            parent_id=job.parent.id,
            reason=reason,
            data={"iteration": job.iteration, **data},
        )
        return []

    async def _validate(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        prop: Proposal = item.payload
        task: HarnessTask = ctx.task  # type: ignore[assignment]
        assert self.runner is not None
        verdict = await self.runner.check(prop.child.components, task)
        ctx.emit(
            Kind.GATE_PASSED if verdict.ok else Kind.GATE_FAILED,
            stage=STAGE_VALIDATE,
            item_id=item.item_id,
            artifact_id=prop.child.id,
            parent_id=prop.job.parent.id,
            version_stamp=item.version_stamp,
            reason=None if verdict.ok else verdict.reason,
            data={"check": verdict.reason, "patched": bool(prop.patched_from), **verdict.details},
        )
        if not verdict.ok:
            code = prop.child.components.get(task.harness.main_file, "")
            self.history.rejected(
                prop.child.id, prop.job.parent.id, prop.hypothesis, verdict.reason, code, ctx.now()
            )
            return []
        return [(STAGE_EVALUATE, Checked(prop))]

    async def _evaluate(self, item: WorkItem, ctx: StageContext) -> list[tuple[str, Any]]:
        prop = item.payload.proposal
        task: HarnessTask = ctx.task  # type: ignore[assignment]
        child = prop.child
        report = await validation_sweep(self.runner, ctx, task, child, item.item_id, item=item)
        scores = report.scores()
        admitted = False
        if any(score > 0 for score in scores.values()):
            record = ctx.pool.admit(child, scores, ts=ctx.now(), patched_from=prop.patched_from)
            if record is None:
                why = "an identical harness was admitted meanwhile"
            else:
                admitted = True
                ctx.emit(
                    Kind.ADMITTED,
                    stage=STAGE_EVALUATE,
                    item_id=item.item_id,
                    artifact_id=child.id,
                    parent_id=prop.job.parent.id,
                    score=record.mean_score,
                    latency_s=ctx.now() - item.created_at,
                    version_stamp=item.version_stamp,
                    frontier_stamp=item.frontier_stamp,
                    data={
                        "origin": child.origin,
                        "parents": list(child.parents),
                        "patched_from": list(prop.patched_from),
                        "hypothesis": prop.hypothesis,
                        "val_scores": scores,
                    },
                )
        else:
            why = report.aborted or "it scored 0 on every validation example"
        if not admitted:
            ctx.emit(
                Kind.ITEM_DROPPED,
                stage=STAGE_EVALUATE,
                item_id=item.item_id,
                artifact_id=child.id,
                reason=f"not admitted: {why}",
            )
        self._record(
            ctx, task, child, prop.job.parent.id, prop.hypothesis, report, admitted=admitted
        )
        return []

    def _record(
        self,
        ctx: StageContext,
        task: HarnessTask,
        harness: Artifact,
        parent_id: str | None,
        hypothesis: str,
        report: EvaluationReport,
        *,
        admitted: bool,
    ) -> None:
        self.history.evaluated(
            harness.id,
            parent_id,
            hypothesis,
            report,
            task.val,
            [task.harness_input(ex) for ex in task.val],
            admitted=admitted,
            code=harness.components.get(task.harness.main_file, ""),
            ts=ctx.now(),
        )

    # -- staleness ---------------------------------------------------------------------------------
    def stale_view(
        self, item: WorkItem, ctx: StageContext, *, lag: int, frontier_lag: int
    ) -> StaleItem:
        payload = item.payload
        artifact = parent = None
        feedback: Sequence[dict[str, Any]] = ()
        if isinstance(payload, Proposal | Checked):
            prop = payload if isinstance(payload, Proposal) else payload.proposal
            artifact, parent = prop.child, prop.job.parent
            attempt = self.history.get(parent.id)
            if attempt is not None:
                feedback = [
                    {
                        "example_id": f.example_id,
                        "input": f.input,
                        "score": 0.0,
                        "feedback": f.feedback,
                    }
                    for f in attempt.failures
                ]
        elif isinstance(payload, Job):
            parent = payload.parent
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
        """A repaired harness re-enters ``validate``: it is checked like any other (a reviewer
        wrote code too), whatever the policy's ``gate_patches`` says."""
        prop: Proposal = item.payload
        repair = decision.repair
        if repair is None or not isinstance(repair.value, Artifact):
            raise ValueError("a Meta-Harness patch decision must carry a repaired Artifact")
        base_id = repair.parent_id
        if base_id is not None and base_id in ctx.pool:
            base = ctx.pool.get(base_id)
        else:
            base = ctx.pool.best()
        job = replace(prop.job, parent=base.artifact, parent_score=base.mean_score)
        return Proposal(
            job,
            repair.value,
            "repair: the current best with the stale proposals' ideas merged in",
            decision.patched_from or (item.item_id,),
        )
