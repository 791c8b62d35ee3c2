"""The ACE workflow on the serving simulator (virtual time) and over real HTTP."""

from __future__ import annotations

import json
from itertools import groupby

import polars as pl
import pytest

from flashevolve import Evolver
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.server import FixedLatency, ScriptedResponder, serve_in_thread
from flashevolve.backends.sim import SimulatedTask
from flashevolve.errors import ConfigError
from flashevolve.events.schema import Kind
from flashevolve.workflows.ace import Playbook
from flashevolve.workflows.ace.sim import AceContent, ace_sim_task, ace_simulated

CLEAN = {"malformed_rate": 0.0, "invalid_op_rate": 0.0}


def make(mode="sync", *, budget=600, seed=0, task=None, llm=None, **kw):
    return Evolver(
        task or SimulatedTask(n_train=12, n_val=4, seed=seed),
        llm or ace_simulated(seed=seed, **CLEAN),
        workflow="ace",
        mode=mode,
        budget=budget,
        seed=seed,
        **kw,
    )


def kinds(ev, kind):
    return [e for e in ev.event_list() if e.kind == kind]


def request_stages(ev) -> list[str]:
    """Stages of the backend requests in order, each sweep of evaluations collapsed into one."""
    stages = [e.stage for e in ev.event_list() if e.kind == Kind.REQUEST_STARTED]
    out: list[str] = []
    for stage, group in groupby(stages):
        out += [stage] if stage == "evaluate" else [stage] * len(list(group))
    return out


def official_order(ev, *, curator_frequency, eval_steps, rounds):
    """The request order of the official ACE loop, replayed from this run's own outcomes
    (rollout scores, which curator calls produced an update)."""
    rollouts = iter(kinds(ev, Kind.ROLLOUT_FINISHED))
    updates = iter(
        [e.kind == Kind.ADMITTED for e in ev.event_list()
         if e.kind in (Kind.ADMITTED, Kind.PROPOSAL_REJECTED) and e.stage in ("apply", "curate")
         and (e.data or {}).get("scope") != "operation" and (e.data or {}).get("origin") != "seed"]
    )  # fmt: skip
    order = ["evaluate"]  # the seed's sweep
    accepted = 0
    for step in range(1, len({e.data["step"] for e in kinds(ev, Kind.ROLLOUT_FINISHED)}) + 1):
        order.append("generate")
        score = next(rollouts).score
        order.append("reflect")
        done = 1
        while score < 1.0 and done < rounds:
            order.append("generate")
            score = next(rollouts).score
            if score >= 1.0:
                break
            order.append("reflect")
            done += 1
        if step % curator_frequency == 0:
            order.append("curate")
            if next(updates):
                accepted += 1
                if accepted % eval_steps == 0:
                    order.append("evaluate")
    return order


@pytest.mark.parametrize(
    ("curator_frequency", "eval_steps", "rounds"), [(1, 1, 1), (2, 2, 1), (3, 1, 3)]
)
def test_a_sync_run_follows_the_official_loop(curator_frequency, eval_steps, rounds):
    ev = make(
        "sync",
        budget={"proposals": 5},
        curator_frequency=curator_frequency,
        eval_steps=eval_steps,
        reflect_rounds=rounds,
    )
    ev.run_virtual()
    assert request_stages(ev) == official_order(
        ev, curator_frequency=curator_frequency, eval_steps=eval_steps, rounds=rounds
    )
    made = kinds(ev, Kind.PROPOSAL_MADE)
    assert len(made) == 5 and all(e.data["reflections"] == curator_frequency for e in made)
    # the curator sees the reflections of consecutive steps, in order, none twice
    seen = [s for e in made for s in e.data["steps"]]
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    if rounds > 1:
        assert any(e.data["retry"] for e in kinds(ev, Kind.ROLLOUT_FINISHED))
    assert not kinds(ev, Kind.STALE_DETECTED) and not kinds(ev, Kind.ERROR)


def test_pool_versions_scores_and_events_are_consistent():
    ev = make("async", budget=900, workers={"curate": 2}, max_in_flight=8)
    summary = ev.run_virtual()
    pool = ev.pool
    admitted = kinds(ev, Kind.ADMITTED)
    assert [e.artifact_id for e in admitted] == [r.id for r in pool.records]
    assert pool.pool_version == len(pool) == summary["accepted"] + 1 > 3
    for e, rec in zip(admitted[1:], pool.records[1:], strict=True):
        Playbook.parse(rec.artifact["playbook"])  # every version is a well-formed playbook
        assert rec.parents == (pool.records[rec.index - 1].id,)  # a chain of versions
        assert e.data["applied"] >= 1 and e.score is None
        assert len(Playbook.parse(rec.artifact["playbook"])) == e.data["bullets"]
    for e in kinds(ev, Kind.SCORED):
        assert e.score == pytest.approx(pool.get(e.artifact_id).mean_score)
    scored = [r for r in pool.records if r.scored]
    assert ev.best.id == max(scored, key=lambda r: (r.mean_score, -r.index)).id
    stale = kinds(ev, Kind.STALE_DETECTED)
    assert stale and all(e.lag > 0 and e.stage == "apply" for e in stale)
    # clean operations are accepted by the workflow; conflicting ones go to the policy
    assert all((e.data["policy"] == "workflow") == (e.data["conflict"] is None) for e in stale)


def test_same_seed_gives_identical_event_frames():
    a, b = make("async", budget=300), make("async", budget=300)
    a.run_virtual()
    b.run_virtual()
    fa, fb = a.events.drop("wall"), b.events.drop("wall")
    assert fa.height > 100 and fa.equals(fb)


def test_async_makes_more_accepted_updates_per_minute_than_sync():
    task = ace_sim_task(n_train=60, n_val=100)
    sync = make("sync", budget=900, task=task, llm=ace_simulated(seed=0)).run_virtual()
    asyn = make("async", budget=900, task=task, llm=ace_simulated(seed=0)).run_virtual()
    assert asyn["accepted_per_min"] > 2 * sync["accepted_per_min"] > 0
    assert asyn["mean_concurrency"] > sync["mean_concurrency"]


class MalformedAt(AceContent):
    """Every answer of one stage is cut off mid-JSON."""

    def __init__(self, stage: str) -> None:
        super().__init__(malformed_rate=0.0, invalid_op_rate=0.0)
        self.bad = stage

    def respond(self, messages, stage, rng, *, truncated=False):  # noqa: ANN001
        text = super().respond(messages, stage, rng, truncated=truncated)
        return text[: len(text) // 2] if stage == self.bad else text


@pytest.mark.parametrize("stage", ["generate", "reflect", "curate"])
def test_malformed_outputs_are_recorded_and_the_run_goes_on(stage):
    from flashevolve.backends.sim import SimulatedLLM
    from flashevolve.workflows.ace.sim import ace_length

    llm = SimulatedLLM(content=MalformedAt(stage), length_fn=ace_length)
    ev = make("sync", budget=600, llm=llm)
    ev.run_virtual()
    assert not kinds(ev, Kind.ERROR)
    rollouts = kinds(ev, Kind.ROLLOUT_FINISHED)
    assert len(rollouts) >= 3
    if stage == "generate":
        assert all(e.data["malformed"] and e.score == 0 for e in rollouts)
        assert kinds(ev, Kind.PROPOSAL_MADE)  # the reflector still learns from the failure
        assert ev.pool.records[0].mean_score == 0
    if stage == "reflect":
        skipped = kinds(ev, Kind.REFLECTION_SKIPPED)
        assert len(skipped) == len(rollouts) and "unusable reflection" in skipped[0].reason
        assert not kinds(ev, Kind.PROPOSAL_MADE)
    if stage == "curate":
        rejected = kinds(ev, Kind.PROPOSAL_REJECTED)
        assert rejected and all("unusable curator answer" in e.reason for e in rejected)
        assert len(ev.pool) == 1  # only the seed


def test_a_resumed_sync_run_continues_exactly_where_it_stopped(tmp_path):
    """Stop after 7 metric calls (one reflection still waits for the curator), resume to 6
    proposals: the same steps, answers, playbook versions and operations as one uninterrupted
    run (playbook head, id counter, buffered reflections and tags, cursor, cadence restored)."""
    options = {"curator_frequency": 2, "eval_steps": 2}

    def trace(ev):
        steps = [
            (e.data["step"], e.data["example_id"], e.artifact_id, e.score)
            for e in kinds(ev, Kind.ROLLOUT_FINISHED)
        ]
        ops = [e.data["operations"] for e in kinds(ev, Kind.ADMITTED)[1:]]
        return steps, ops, [r.artifact["playbook"] for r in ev.pool.records]

    whole = make("sync", budget={"proposals": 6}, **options)
    whole.run_virtual()
    first = make("sync", budget={"metric_calls": 7}, run_dir=tmp_path, **options)
    first.run_virtual()
    state = json.loads((tmp_path / "state.json").read_text())["workflow"]
    assert state["cursor"] == 3 and len(state["pending"]) == 1 and state["pending_tags"] is not None
    second = make("sync", budget={"proposals": 6}, run_dir=tmp_path, resume=True, **options)
    second.run_virtual()
    assert trace(second) == trace(whole)
    assert second.workflow.snapshot() == whole.workflow.snapshot()
    enqueued = [e.item_id for e in second.event_list() if e.kind == Kind.ITEM_ENQUEUED]
    assert len(enqueued) == len(set(enqueued))


def test_bad_options_and_tasks_are_clear_errors():
    with pytest.raises(ConfigError, match="curator_frequency"):
        make(curator_frequency=0)
    with pytest.raises(ConfigError, match="workflow 'ace'"):
        make(curator_frequenc=2)

    class NoMetric:
        name, train, val, test = "bare", SimulatedTask().train, SimulatedTask().val, []

        def seed_artifact(self):
            return {"x": "y"}

        async def rollout(self, *a, **k):  # pragma: no cover - never reached
            raise AssertionError

    with pytest.raises(ConfigError, match="metric"):
        make(task=NoMetric()).run_virtual()


def test_ace_runs_over_real_http():
    """A sync ACE run against the scripted OpenAI-compatible server (the ACE content model)."""
    responder = ScriptedResponder(AceContent(**CLEAN), latency=FixedLatency(0.0))
    with serve_in_thread(responder) as url:
        llm = OpenAICompatLLM(url, "scripted")
        ev = make("sync", budget={"proposals": 2}, llm=llm, load_every_s=None)
        summary = ev.run_sync()
    assert summary["proposals"] == 2 and summary["accepted"] >= 1 and summary["errors"] == 0
    requests = ev.requests
    assert set(requests["stage"].to_list()) >= {"generate", "reflect", "curate", "evaluate"}
    assert requests.filter(pl.col("outcome") != "finished").height == 0


def test_epochs_end_the_run_by_themselves():
    ev = make("sync", budget=3600, task=SimulatedTask(n_train=3, n_val=2), epochs=2)
    summary = ev.run_virtual()
    steps = [e.data["step"] for e in kinds(ev, Kind.ROLLOUT_FINISHED)]
    assert steps == [0, 1, 2, 3, 4, 5] and summary["duration_s"] < 3600
    assert "2 epoch(s)" in kinds(ev, Kind.BUDGET_STOP)[0].reason


def test_json_mode_asks_the_server_for_each_roles_schema():
    from flashevolve.workflows.ace import AceWorkflow

    wf = AceWorkflow(json_mode="schema", max_ops=3)
    curate = wf.extra_body("curate")["response_format"]["json_schema"]["schema"]
    assert curate["properties"]["operations"]["maxItems"] == 3
    generate = wf.extra_body("generate")["response_format"]["json_schema"]["schema"]
    assert generate["required"] == ["reasoning", "bullet_ids", "final_answer"]
    assert AceWorkflow(json_mode="object").extra_body("reflect") == {
        "response_format": {"type": "json_object"}
    }
    assert AceWorkflow().extra_body("generate") is None
    with pytest.raises(ConfigError, match="json_mode"):
        make(json_mode="yaml")
    with pytest.raises(ConfigError, match="playbook line 2"):
        make(initial_playbook="## A\nnot a bullet")
