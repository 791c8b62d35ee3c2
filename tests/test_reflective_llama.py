"""End to end: the Reflective staleness policy against the real embedded llama-server.

A short asynchronous GEPA run on ``ifeval-lite`` with many proposals in flight and a small
validation split, so that admissions make in-flight proposals stale and the reviewer (the same
SmolLM2-135M model) is asked about them.  A 135M model often answers with something that is not
the required JSON; that must be recorded and treated as discard.  The test pins that every stale
item got a recorded decision, that unusable answers never became artifacts, and that the
decisions carry reasons; it reports what the model actually did.
"""

from __future__ import annotations

import asyncio

import polars as pl
import pytest

from flashevolve.events.schema import Kind


@pytest.mark.llama
@pytest.mark.timeout(400)
def test_reflective_run_against_llama_server(tmp_path) -> None:
    from flashevolve.backends.llama_build import find_llama_server

    if find_llama_server() is None:
        pytest.skip("llama-server is not built: run `make llama-server`")
    from flashevolve import Evolver, backends
    from flashevolve.backends.openai_compat import OpenAICompatLLM
    from flashevolve.policies.reflective import Reflective, review_json_schema
    from flashevolve.tasks import get_task
    from flashevolve.workflows.reflection import fenced_block_grammar

    run_dir = tmp_path / "run"
    task = get_task("ifeval-lite")
    # Small and short everywhere: two CPU cores, a 135M model, and we need several proposals in
    # flight while the first admissions land (that is what makes them stale).  A deliberately
    # poor seed instruction makes early gate passes (and so early admissions) likelier.
    task.val = task.val[:2]
    task.max_tokens = 64
    task._seed = {name: "Reply in capital letters, in one long paragraph." for name in task._seed}
    llm = backends.local(slots=4, ctx_per_slot=4096, startup_timeout_s=180)
    # Short texts: a constrained answer must fit max_tokens or it is (rightly) discarded.
    schema = review_json_schema(max_items=2, max_text=400)
    reviewer = OpenAICompatLLM(
        llm.endpoint,
        llm.model,
        max_retries=0,
        extra_body={
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "review", "schema": schema},
            }
        },
    )
    try:
        policy = Reflective(
            k=2,
            max_wait_s=1.0,
            history_tokens=200,
            max_tokens=512,
            temperature=0.0,
            artifact_chars=800,
            feedback_chars=120,
            reviewer=reviewer,
        )
        ev = Evolver(
            task,
            llm,
            staleness=policy,
            budget={"seconds": 150},  # CI-sized; a 10-minute run is in docs/benchmarks.md
            workers={"rollout": 4, "propose": 4, "evaluate": 2},
            max_in_flight=16,
            minibatch_size=1,
            skip_perfect=False,
            reflection_max_tokens=200,
            reflection_extra_body={"grammar": fenced_block_grammar()},
            eval_concurrency=4,
            seed=0,
            run_dir=run_dir,
        )
        summary = asyncio.run(ev.run())
    finally:
        llm.close()
    df = ev.events
    stale = df.filter(pl.col("kind") == Kind.STALE_DETECTED)
    print(
        "summary:",
        {
            k: summary[k]
            for k in (
                "proposals",
                "accepted",
                "stale_seen",
                "stale_accepted",
                "stale_patched",
                "stale_discarded",
                "stale_merged",
            )
        },
    )
    print(stale.select("item_id", "lag", "decision", "reason").to_dicts())
    assert summary["proposals"] >= 1
    if stale.is_empty():
        pytest.skip("no proposal went stale in this short run (nothing was admitted in time)")
    assert stale["decision"].null_count() == 0
    assert stale["reason"].null_count() == 0
    assert set(stale["decision"].to_list()) <= {"accept", "discard", "patch", "merged"}
    patched = df.filter(pl.col("kind") == Kind.PATCH_MADE)
    # A patch exists only if a valid answer produced it; every patch names its stale items.
    for row in patched.iter_rows(named=True):
        assert '"patched_from"' in row["data"]


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

    ``free``: the plain client -- SmolLM2-135M usually rambles, so the answer is recorded as
    unusable and both items are discarded.  ``json-schema``: the reviewer's client asks
    llama-server for schema-constrained decoding (``review_json_schema``), which makes a valid
    answer (and so a real accept / discard / patch) likely.  Either way every item gets a
    recorded decision with a reason, and a patch exists only with its ``patch_made`` event.
    """
    from flashevolve.artifacts import Artifact
    from flashevolve.backends.openai_compat import OpenAICompatLLM
    from flashevolve.events.log import EventLog
    from flashevolve.policies.reflective import Reflective, review_json_schema
    from flashevolve.policies.staleness import StaleItem
    from flashevolve.pool import ArtifactPool
    from flashevolve.runtime.budget import Budget, BudgetTracker
    from flashevolve.runtime.clock import LoopClock
    from flashevolve.runtime.context import StageContext
    from flashevolve.runtime.instrument import InFlight, InstrumentedLLM
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
    extra_body = None
    if constrained:
        schema = review_json_schema(max_items=2, item_ids=["i0", "i1"])
        extra_body = {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "review", "schema": schema},
            }
        }

    async def go():
        clock = LoopClock()
        clock.start()
        log = EventLog(clock=clock)
        client = OpenAICompatLLM(
            reviewer_server.endpoint, reviewer_server.model, max_retries=0, extra_body=extra_body
        )
        inst = InstrumentedLLM(client, "reflection", log, InFlight())
        ctx = StageContext(
            task=task,
            pool=pool,
            log=log,
            clock=clock,
            task_llm=inst,
            reflection_llm=inst,
            tracker=BudgetTracker(Budget()),
        )
        policy = Reflective(k=2, max_tokens=384, temperature=0.0, history_tokens=200)
        try:
            decisions = await asyncio.gather(*(policy.decide(it, ctx) for it in items))
        finally:
            await client.aclose()
        return decisions, log

    decisions, log = asyncio.run(go())
    for it, d in zip(items, decisions, strict=True):
        head = d.data.get("answer_head", "")[:160].replace("\n", " ")
        print(
            f"[{'schema' if constrained else 'free'}] {it.item_id} {d.action} | {d.reason} | {head}"
        )
    assert len(decisions) == 2
    assert all(d.action in ("accept", "discard", "patch", "merged") and d.reason for d in decisions)
    assert len(log.of_kind(Kind.REQUEST_FINISHED)) == 1  # one call for the batch of two
    patches = log.of_kind(Kind.PATCH_MADE)
    assert len(patches) == sum(d.action == "patch" for d in decisions)
    for p in patches:
        assert p.data["patched_from"] and p.data["stale_artifacts"]
    for d in decisions:
        if d.data.get("malformed"):
            assert d.action == "discard" and d.artifact is None
