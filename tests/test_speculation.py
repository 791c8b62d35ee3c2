"""Speculative completion: confirm, roll back, exact early reject, reordering, late rollouts.

Everything runs on virtual time.  ``TableTask`` is a test task (no LLM): each example answers
after a fixed delay with a score looked up from a table, so outcomes are exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import make_stage_context

from flashevolve.artifacts import Artifact
from flashevolve.backends.sim import SimulatedTask, simulated
from flashevolve.events.schema import Kind
from flashevolve.policies.speculation import Speculation, prefix_size
from flashevolve.pool import ACTIVE, TOMBSTONED, ArtifactPool
from flashevolve.runtime.clock import run_virtual
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import WorkItem
from flashevolve.tasks.base import Example, Rollout
from flashevolve.workflows.gepa import GatedChild, GepaWorkflow, Job, Proposal

N_VAL = 8


class TableTask:
    name = "table"

    def __init__(self, scores: dict[str, list[float]], delays: list[float]) -> None:
        self.train = [Example(f"t{i}", {"prompt": f"t{i}"}) for i in range(4)]
        self.val = [Example(f"v{i}", {"prompt": f"v{i}"}) for i in range(N_VAL)]
        self.test: list[Example] = []
        self.scores = scores  # instruction text -> per-example score (train and val by index)
        self.delays = delays

    def seed_artifact(self) -> dict[str, str]:
        return {"instruction": "parent"}

    def describe(self) -> str:
        return "a table"

    async def rollout(self, components, example, llm, *, stage, item_id, seed=None) -> Rollout:  # noqa: ANN001
        i = int(example.id[1:])
        await asyncio.sleep(self.delays[i])
        score = self.scores[components["instruction"]][i]
        return Rollout(example.id, "out", score, "fb")


def make_ctx(task: Any, spec: Speculation, llm: Any = None) -> StageContext:
    pool = ArtifactPool([ex.id for ex in task.val])
    pool.admit(Artifact({"instruction": "parent"}), {ex.id: 0.5 for ex in task.val}, ts=0.0)
    return make_stage_context(task, llm, pool=pool, instrument=True, speculation=spec)


def gated_item(ctx: StageContext, text: str) -> WorkItem:
    parent = ctx.pool.best().artifact
    child = parent.with_component("instruction", text, parents=(parent.id,), origin="reflection")
    job = Job(parent, list(ctx.task.train[:3]), "instruction", 0, 1)
    return WorkItem("i1", "validate", GatedChild(Proposal(job, child, [])), 0, 0, 0.0, "j1")


def validate(ctx: StageContext, item: WorkItem, wf: GepaWorkflow | None = None) -> None:
    wf = wf or GepaWorkflow(eval_concurrency=2)

    async def main() -> None:
        ctx.clock.start()
        await wf._validate(item, ctx)
        while ctx.speculation.tails:
            await asyncio.gather(*list(ctx.speculation.tails))

    run_virtual(main())


def kinds(ctx: StageContext) -> list[str]:
    interesting = {
        Kind.SPECULATIVE_ADMITTED,
        Kind.SPECULATION_CONFIRMED,
        Kind.ADMITTED,
        Kind.SPECULATION_ROLLED_BACK,
        Kind.EARLY_REJECTED,
        Kind.VALIDATION_FINISHED,
        Kind.ITEM_DROPPED,
    }
    return [e.kind for e in ctx.log.snapshot() if e.kind in interesting]


def test_prefix_size() -> None:
    assert [prefix_size(50, a) for a in (0.25, 0.5, 1.0)] == [13, 25, 50]
    assert prefix_size(3, 0.25) == 1 and prefix_size(3, 0.01) == 1
    with pytest.raises(ValueError):
        Speculation(evaluate_alpha=0.0)


def test_speculative_admission_confirmed() -> None:
    task = TableTask({"parent": [0.5] * N_VAL, "child": [1.0] * N_VAL}, [1.0] * N_VAL)
    ctx = make_ctx(task, Speculation(evaluate_alpha=0.25, reorder=False))
    validate(ctx, gated_item(ctx, "child"))
    assert kinds(ctx) == [
        Kind.SPECULATIVE_ADMITTED,
        Kind.VALIDATION_FINISHED,
        Kind.SPECULATION_CONFIRMED,
        Kind.ADMITTED,
    ]
    spec_event = ctx.log.of_kind(Kind.SPECULATIVE_ADMITTED)[0]
    assert spec_event.data["prefix"] == 2 and spec_event.score == 1.0
    record = ctx.pool.best()
    assert record.status == ACTIVE and len(record.val_scores) == N_VAL


def test_speculative_admission_rolled_back() -> None:
    # Prefix (v0, v1) perfect, the rest zero: the prefix clears the bar of 0.5, the full mean
    # (0.25) does not.  The rollback happens as soon as that is certain (exact early reject).
    task = TableTask({"parent": [0.5] * N_VAL, "child": [1, 1, 0, 0, 0, 0, 0, 0]}, [1.0] * N_VAL)
    ctx = make_ctx(task, Speculation(evaluate_alpha=0.25, reorder=False))
    version = ctx.pool.pool_version
    item = gated_item(ctx, "child")
    validate(ctx, item)
    assert kinds(ctx) == [Kind.SPECULATIVE_ADMITTED, Kind.SPECULATION_ROLLED_BACK]
    child_id = item.payload.proposal.child.id
    assert ctx.pool.get(child_id).status == TOMBSTONED
    assert ctx.pool.pool_version == version + 2  # admit + tombstone: derived work is now stale
    rolled = ctx.log.of_kind(Kind.SPECULATION_ROLLED_BACK)[0]
    assert rolled.data["early"] is True and rolled.data["best_reachable"] < 0.5


def test_work_derived_from_a_rolled_back_candidate_is_dropped() -> None:
    task = TableTask({"parent": [0.5] * N_VAL, "child": [1.0] * N_VAL}, [1.0] * N_VAL)
    ctx = make_ctx(task, Speculation(evaluate_alpha=0.25))
    parent = ctx.pool.best().artifact
    ctx.pool.tombstone(parent.id)
    validate(ctx, _item_with_parent(ctx, parent))
    dropped = ctx.log.of_kind(Kind.ITEM_DROPPED)
    assert dropped and "rolled back" in dropped[0].reason


def _item_with_parent(ctx: StageContext, parent: Artifact) -> WorkItem:
    child = parent.with_component("instruction", "child", parents=(parent.id,))
    job = Job(parent, list(ctx.task.train[:3]), "instruction", 0, 1)
    return WorkItem("i9", "validate", GatedChild(Proposal(job, child, [])), 0, 0, 0.0, "j9")


def test_below_bar_without_speculative_admission_is_not_admitted() -> None:
    # evaluate_alpha=1: no speculation, but the bar and the exact early reject still apply.
    task = TableTask({"parent": [0.5] * N_VAL, "child": [0.5] * 7 + [0.0]}, [1.0] * N_VAL)
    ctx = make_ctx(task, Speculation(reorder=False))
    validate(ctx, gated_item(ctx, "child"))
    assert kinds(ctx) == [Kind.EARLY_REJECTED]  # once v7 lands: 3.5 + 0 < 4 = 0.5 * 8
    ev = ctx.log.of_kind(Kind.EARLY_REJECTED)[0]
    assert ev.data["best_reachable"] < 0.5


def test_exact_early_reject_cancels_backend_requests() -> None:
    # The simulated server: a child of latent quality 0.01 fails every example; bar 0.9 means
    # the first failure out of 8 already makes 0.9 unreachable.
    task = SimulatedTask(n_train=4, n_val=N_VAL, seed=0)
    llm = simulated(seed=0)
    spec = Speculation(bar=0.9, reorder=False)
    ctx = make_ctx(task, spec, llm=llm)
    item = gated_item(ctx, "Do anything.\n[[sim-quality=0.010]]")
    validate(ctx, item, GepaWorkflow(eval_concurrency=8))
    ev = ctx.log.of_kind(Kind.EARLY_REJECTED)
    assert len(ev) == 1 and ev[0].data["cancelled_requests"] >= 1
    assert ctx.log.of_kind(Kind.REQUEST_CANCELLED)
    assert llm.stats()["cancelled_requests"] >= 1  # the simulated engine freed them
    assert item.payload.proposal.child.id not in ctx.pool


def test_reordering_puts_discriminative_first_and_rotates_passed_examples() -> None:
    task = TableTask({"parent": [0.5] * N_VAL}, [1.0] * N_VAL)
    ctx = make_ctx(task, Speculation())
    other = Artifact({"instruction": "other"})
    scores = {ex.id: 0.5 for ex in task.val}
    scores["v5"] = 1.0  # the only example on which the two candidates disagree
    ctx.pool.admit(other, scores, ts=1.0)
    spec = ctx.speculation
    assert [ex.id for ex in spec.order(task.val, ctx.pool)][0] == "v5"
    for _ in range(spec.window):
        assert spec.order(task.val, ctx.pool)[0].id == "v5"
        spec.record_results({"v5": 1.0})
    order = [ex.id for ex in spec.order(task.val, ctx.pool)]
    assert order[-1] == "v5"  # passed w=3 rounds in a row: rotated out of the prefix
    spec.record_results({"v5": 0.0})
    assert spec.order(task.val, ctx.pool)[0].id == "v5"  # failed again: back in front
    assert [ex.id for ex in Speculation(reorder=False).order(task.val, ctx.pool)] == [
        ex.id for ex in task.val
    ]


def test_rollout_alpha_releases_early_and_records_late_results() -> None:
    task = TableTask({"parent": [0.0, 0.5, 1.0, 0.0] + [0.5] * 4}, [1.0, 2.0, 3.0, 50.0])
    ctx = make_ctx(task, Speculation(rollout_alpha=0.5))
    wf = GepaWorkflow(eval_concurrency=4)
    job = Job(
        ctx.pool.best().artifact, [Example(f"v{i}", {}) for i in range(4)], "instruction", 0, 1
    )
    item = WorkItem("i1", "rollout", job, 0, 0, 0.0, "j1")
    out: list = []

    async def main() -> None:
        ctx.clock.start()
        out.extend(await wf._rollout(item, ctx))
        out.append(ctx.now())
        while ctx.speculation.tails:
            await asyncio.gather(*list(ctx.speculation.tails))

    run_virtual(main())
    (stage, payload), released_at = out[0], out[1]
    assert stage == "propose" and released_at == pytest.approx(2.0)
    assert [ex.id for ex in payload.job.minibatch] == ["v0", "v1"]
    finished = ctx.log.of_kind(Kind.ROLLOUT_FINISHED)
    assert [(e.data["example_id"], e.data["late"]) for e in finished] == [
        ("v0", False),
        ("v1", False),
        ("v2", True),
        ("v3", True),
    ]
    assert ctx.speculation.counters["late_rollouts"] == 2


def test_no_speculation_keeps_gepa_admission() -> None:
    # Without a Speculation object every gate-passed child is admitted, even below its parent.
    task = TableTask({"parent": [0.5] * N_VAL, "child": [0.0] * N_VAL}, [1.0] * N_VAL)
    ctx = make_ctx(task, None)  # type: ignore[arg-type]
    item = gated_item(ctx, "child")

    async def main() -> None:
        ctx.clock.start()
        await GepaWorkflow(eval_concurrency=2)._validate(item, ctx)

    run_virtual(main())
    assert ctx.pool.get(item.payload.proposal.child.id).status == ACTIVE
