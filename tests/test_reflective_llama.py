"""End to end: the Reflective staleness policy against the real embedded llama-server.

A short asynchronous GEPA run on ``ifeval-lite`` prompts with many proposals in flight, so that
admissions make in-flight proposals stale and the reviewer (the same SmolLM2-135M model, with
schema-constrained decoding: ``Reflective(review_schema=True)``, what ``flashevolve run
--staleness reflective --backend local`` uses) is asked about them.  Every request goes to the
real model, but the task's score is made deterministic -- any changed instruction beats the seed
-- so that the first admission certainly finds other proposals of the seed still in flight:
staleness is guaranteed, not left to how fast a 135M model happens to be.  What the
model decides is its own business: the test pins the invariants -- every stale item got a
recorded decision with a reason, unusable answers were discarded and never became artifacts, and
every patch names real stale items -- and prints what the model did.  The 12-minute version of
this run, through the CLI, is in docs/results/reflective-local-smollm2.json.
"""

from __future__ import annotations

import asyncio
import json
import time

import polars as pl
import pytest

from flashevolve.events.schema import Kind


class _SeedLoses:
    """ifeval-lite with every request sent to the model, but scored without looking at the
    answer: the seed instruction scores 0 and any other instruction 1.  Children of the seed
    then pass the gate and are admitted for sure; their siblings in flight go stale."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.name = "ifeval-lite-seed-loses"
        self.train, self.val, self.test = inner.train[:12], inner.val[:2], []
        self.inner.max_tokens = 48
        self._seed = {name: "Reply in capital letters." for name in inner.seed_artifact()}

    def seed_artifact(self) -> dict[str, str]:
        return dict(self._seed)

    def describe(self) -> str:
        return self.inner.describe()

    async def rollout(self, components, example, llm, *, stage, item_id, seed=None):  # noqa: ANN001, ANN201
        out = await self.inner.rollout(
            components, example, llm, stage=stage, item_id=item_id, seed=seed
        )
        out.score = 0.0 if dict(components) == self._seed else 1.0
        out.feedback = "Follow the constraints more closely." if out.score == 0 else "Good."
        return out


@pytest.mark.llama
@pytest.mark.timeout(1000)
def test_reflective_run_against_llama_server(tmp_path) -> None:
    from flashevolve.backends.llama_build import find_llama_server

    if find_llama_server() is None:
        pytest.skip("llama-server is not built: run `make llama-server`")
    from flashevolve import Evolver, backends
    from flashevolve.policies.reflective import Reflective
    from flashevolve.tasks import get_task
    from flashevolve.workflows.gepa.reflection import fenced_block_grammar

    run_dir = tmp_path / "run"
    task = _SeedLoses(get_task("ifeval-lite"))
    llm = backends.local(slots=4, ctx_per_slot=4096, startup_timeout_s=180)
    try:
        policy = Reflective(
            k=2,
            max_wait_s=1.0,
            history_tokens=200,
            max_tokens=1024,  # above the schema's length bound: a constrained answer completes
            artifact_chars=800,
            feedback_chars=120,
            review_schema=True,
            patch_chars=600,
        )
        ev = Evolver(
            task,
            llm,
            staleness=policy,
            budget={"seconds": 900},  # a cap; the run stops at the second stale decision
            workers={"rollout": 4, "propose": 4, "evaluate": 2},
            max_in_flight=16,
            minibatch_size=1,
            skip_perfect=False,
            # short reflections: more proposals (and so earlier admissions) in the budget
            reflection_max_tokens=120,
            reflection_extra_body={"grammar": fenced_block_grammar(max_chars=300)},
            eval_concurrency=4,
            seed=0,
            run_dir=run_dir,
        )
        ev.start()
        # Stop once two stale decisions are recorded (that is all the invariants need) or at the
        # budget; a bound on a readiness poll, not a timing assertion.
        while ev.status()["state"] == "running" and sum(ev.status()["stale"].values()) < 2:
            time.sleep(1.0)
        ev.stop()
        summary = ev.wait(timeout=300)
    finally:
        llm.close()
    df = ev.events
    stale = df.filter(pl.col("kind") == Kind.STALE_DETECTED)
    keys = ("proposals", "accepted", "stale_seen", "stale_accepted", "stale_patched")
    print("summary:", {k: summary[k] for k in (*keys, "stale_discarded", "stale_merged")})
    print(stale.select("item_id", "lag", "decision", "reason").to_dicts())
    print("positions shown:", [json.loads(d).get("position") for d in stale["data"]])
    assert summary["proposals"] >= 2
    assert stale.height >= 1, "the first admission must have found stale proposals in flight"
    assert stale["decision"].null_count() == 0
    assert stale["reason"].null_count() == 0
    assert set(stale["decision"].to_list()) <= {"accept", "discard", "patch", "merged"}
    assert summary["stale_seen"] == stale.height
    data = [json.loads(d) for d in stale["data"]]
    # Unusable answers are discarded and never carry an artifact of their own.
    for row, d in zip(stale.iter_rows(named=True), data, strict=True):
        assert d.get("review_schema") is True
        # the order the reviewer saw the batch in, and where this item was in it
        assert d["shown_order"][d["position"]] == row["item_id"]
        assert len(d["shown_order"]) == d["batch_size"]
        if d.get("malformed"):
            assert row["decision"] == "discard" and "unusable review answer" in row["reason"]
    # A patch exists only with its patch_made event, and names stale items folded into it.
    folded = set(stale.filter(pl.col("decision").is_in(["patch", "merged"]))["item_id"])
    patches = df.filter(pl.col("kind") == Kind.PATCH_MADE)
    assert patches.height == summary["stale_patched"]
    for row in patches.iter_rows(named=True):
        made = json.loads(row["data"])
        assert made["patched_from"] and set(made["patched_from"]) <= folded
        assert stale.filter(pl.col("artifact_id") == row["artifact_id"]).height >= 1


@pytest.fixture(scope="module")
def reviewer_server():
    from flashevolve.backends.llama_build import find_llama_server

    if find_llama_server() is None:
        pytest.skip("llama-server is not built: run `make llama-server`")
    from flashevolve import backends

    llm = backends.local(slots=2, ctx_per_slot=4096, startup_timeout_s=180)
    try:
        yield llm
    finally:
        llm.close()


@pytest.mark.llama
@pytest.mark.timeout(600)
@pytest.mark.parametrize("constrained", [False, True], ids=["free", "json-schema"])
def test_reflective_review_call_against_llama_server(reviewer_server, constrained) -> None:
    """One batched review of two hand-made stale proposals, answered by the real model.

    ``free``: no constraint -- SmolLM2-135M usually rambles, so the answer is recorded as
    unusable and both items are discarded.  ``json-schema``: ``Reflective(review_schema=True)``
    asks llama-server for schema-constrained decoding with this batch's item ids and the best's
    component names (``review_json_schema``), which makes a valid answer (and so a real accept /
    discard / patch) likely.  Either way every item gets a recorded decision with a reason, and a
    patch exists only with its ``patch_made`` event.
    """
    from support import make_stage_context

    from flashevolve.artifacts import Artifact
    from flashevolve.backends.openai_compat import OpenAICompatLLM
    from flashevolve.policies.reflective import Reflective
    from flashevolve.policies.staleness import StaleItem
    from flashevolve.pool import ArtifactPool
    from flashevolve.tasks import get_task

    task = get_task("ifeval-lite")
    pool = ArtifactPool([ex.id for ex in task.val])
    seed = Artifact(task.seed_artifact())
    pool.admit(seed, {ex.id: 0.4 for ex in task.val}, ts=0.0)
    name = seed.names[0]
    best = seed.with_component(
        name, seed[name] + "\nCount bullet points before answering.", parents=(seed.id,)
    )
    pool.admit(best, {ex.id: 0.5 for ex in task.val}, ts=1.0)
    feedback = [
        {
            "example_id": task.train[0].id,
            "input": task.train[0].inputs,
            "score": 0.0,
            "feedback": "The answer used capital letters although lowercase was required.",
        }
    ]
    extras = [
        "\nWrite in lowercase when asked.",
        "\nNever use capitals if the request forbids them.",
    ]
    items = [
        StaleItem(
            item_id=f"i{k}",
            stage="gate",
            lag=1,
            frontier_lag=1,
            age_s=5.0,
            version_stamp=1,
            parent=seed,
            feedback=feedback,
            artifact=seed.with_component(name, seed[name] + extra, parents=(seed.id,)),
        )
        for k, extra in enumerate(extras)
    ]

    async def go():
        client = OpenAICompatLLM(reviewer_server.endpoint, reviewer_server.model, max_retries=0)
        ctx = make_stage_context(task, client, pool=pool, instrument=True)
        ctx.clock.start()
        policy = Reflective(
            k=2,
            max_tokens=384 if not constrained else 1024,
            temperature=0.0,
            history_tokens=200,
            review_schema=constrained,
            patch_chars=600,
        )
        try:
            decisions = await asyncio.gather(*(policy.decide(it, ctx) for it in items))
        finally:
            await client.aclose()
        return decisions, ctx.log

    decisions, log = asyncio.run(go())
    for it, d in zip(items, decisions, strict=True):
        head = d.data.get("answer_head", "")[:160].replace("\n", " ")
        print(
            f"[{'schema' if constrained else 'free'}] {it.item_id} shown at {d.data['position']}: "
            f"{d.action} | {d.reason} | {head}"
        )
    assert len(decisions) == 2
    assert sorted(d.data["position"] for d in decisions) == [0, 1]
    assert all(d.data["shown_order"] == decisions[0].data["shown_order"] for d in decisions)
    assert all(d.action in ("accept", "discard", "patch", "merged") and d.reason for d in decisions)
    assert len(log.of_kind(Kind.REQUEST_FINISHED)) == 1  # one call for the batch of two
    patches = log.of_kind(Kind.PATCH_MADE)
    assert len(patches) == sum(d.action == "patch" for d in decisions)
    for p in patches:
        assert p.data["patched_from"] and p.data["stale_artifacts"]
    for d in decisions:
        if d.data.get("malformed"):
            assert d.action == "discard" and d.repair is None
