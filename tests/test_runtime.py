"""Runtime behaviour on the serving simulator (virtual time: nothing here sleeps)."""

import asyncio
import json

import polars as pl
import pytest

from flashevolve import Evolver, run_virtual
from flashevolve.backends.sim import SimulatedTask, simulated
from flashevolve.errors import ConfigError
from flashevolve.events.schema import Kind
from flashevolve.workflows.gepa.sim import WorkloadContent

# fixed workers and bound: these tests are about the runtime, not the (default) controller
ASYNC = {
    "workers": {"rollout": 4, "propose": 4, "evaluate": 4},
    "max_in_flight": 16,
    "control": None,
}


def make(mode="async", minutes=10.0, seed=0, **kw):
    kw = {**(ASYNC if mode == "async" else {}), **kw}
    return Evolver(
        SimulatedTask(n_train=30, n_val=20, seed=seed),
        simulated(seed=seed),
        mode=mode,
        budget=kw.pop("budget", minutes * 60),
        seed=seed,
        **kw,
    )


def kinds(ev, kind):
    return ev.events.filter(pl.col("kind") == kind)


def test_sync_runs_one_job_at_a_time_and_never_sees_staleness():
    ev = make("sync")
    ev.run_virtual()
    deq = kinds(ev, Kind.ITEM_DEQUEUED)
    assert deq.height > 0 and set(deq["lag"].to_list()) == {0}
    assert kinds(ev, Kind.STALE_DETECTED).height == 0
    # one job at a time: every enqueue into the entry stage happens after the previous job ended
    assert ev.status()["stages"]["rollout"]["workers"] == 1


def test_async_stamps_and_lags_are_consistent():
    ev = make("async")
    ev.run_virtual()
    deq = kinds(ev, Kind.ITEM_DEQUEUED)
    assert (deq["lag"] == deq["pool_version"] - deq["version_stamp"]).all()
    assert (deq["frontier_lag"] == deq["frontier_version"] - deq["frontier_stamp"]).all()
    assert deq["lag"].max() > 0  # overlapping steps do produce stale work
    stale = kinds(ev, Kind.STALE_DETECTED)
    assert stale.height > 0 and (stale["lag"] > 0).all()
    assert set(stale["decision"].to_list()) == {"accept"}  # FullAsync is the default
    assert stale.filter(pl.col("stage") != "gate").height == 0


def test_pools_are_valid_after_sync_and_async_runs_on_the_same_seed():
    for mode in ("sync", "async"):
        ev = make(mode, seed=3)
        summary = ev.run_virtual()
        pool = ev.pool
        assert pool.pool_version == len(pool) == summary["accepted"] + 1
        val_ids = {ex.id for ex in ev.task.val}
        for rec in pool.records:
            assert set(rec.val_scores) == val_ids
            assert all(p in pool for p in rec.parents)
        admitted = kinds(ev, Kind.ADMITTED)["artifact_id"].to_list()
        assert admitted == [r.id for r in pool.records]
        assert ev.best.id == pool.best().id


def test_async_makes_more_proposals_per_minute_than_sync():
    s = make("sync", minutes=20).run_virtual()
    a = make("async", minutes=20).run_virtual()
    assert a["proposals_per_min"] > 3 * s["proposals_per_min"]
    assert a["mean_concurrency"] > s["mean_concurrency"]


def test_same_seed_gives_identical_event_frames_apart_from_wall_time():
    a, b = make("async", minutes=5, seed=7), make("async", minutes=5, seed=7)
    a.run_virtual()
    b.run_virtual()
    fa, fb = a.events.drop("wall"), b.events.drop("wall")
    assert fa.height > 100 and fa.equals(fb)


class MalformedReflections(WorkloadContent):
    """Every reflection is cut off: an opening fence and no closing one."""

    def reflect(self, text, rng, *, truncated=False):
        return "Here is the improved instruction:\n```\nAlways answer carefully and"


def test_a_malformed_reflection_never_becomes_an_artifact():
    ev = Evolver(
        SimulatedTask(n_train=30, n_val=20),
        simulated(content=MalformedReflections()),
        mode="async",
        budget=300,
        **ASYNC,
    )
    summary = ev.run_virtual()
    rejected = kinds(ev, Kind.PROPOSAL_REJECTED)
    assert rejected.height > 0 and summary["proposals"] == 0
    assert all("never closed" in r for r in rejected["reason"].to_list())
    assert len(ev.pool) == 1 and ev.pool.records[0].artifact.origin == "seed"


def test_proposal_budget_stops_gracefully_without_leaking_tasks():
    async def main():
        ev = make("async", budget={"proposals": 5})
        summary = await ev.run()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return ev, summary, others

    ev, summary, leftovers = run_virtual(main)
    assert leftovers == []
    assert summary["proposals"] >= 5
    stop = kinds(ev, Kind.BUDGET_STOP)
    assert stop.height == 1 and "proposal budget" in stop["reason"][0]
    # graceful: nothing in flight was cut off
    assert kinds(ev, Kind.REQUEST_CANCELLED).height == 0


def test_time_budget_cancels_in_flight_requests_and_ends_on_time():
    ev = make("async", minutes=3)
    summary = ev.run_virtual()
    assert summary["duration_s"] == pytest.approx(180.0)
    assert kinds(ev, Kind.REQUEST_CANCELLED).height > 0
    started = kinds(ev, Kind.REQUEST_STARTED).height
    ended = sum(
        kinds(ev, k).height
        for k in (Kind.REQUEST_FINISHED, Kind.REQUEST_FAILED, Kind.REQUEST_CANCELLED)
    )
    assert started == ended  # every request is accounted for


def test_metric_call_budget_counts_every_scored_example():
    ev = make("async", budget={"metric_calls": 300})
    ev.run_virtual()
    scored = kinds(ev, Kind.REQUEST_FINISHED).filter(pl.col("role") == "task").height
    assert scored >= 300


def test_worker_counts_can_change_while_running():
    async def main():
        ev = make("async", minutes=5)
        task = asyncio.create_task(ev.run())
        await asyncio.sleep(60)
        ev.runtime.set_workers("validate", 1, reason="test")
        await asyncio.sleep(60)
        busy = ev.runtime.status()["stages"]["validate"]
        await task
        return ev, busy

    ev, busy = run_virtual(main)
    changed = kinds(ev, Kind.WORKERS_CHANGED)
    assert changed["workers"].to_list() == [1] and changed["stage"].to_list() == ["validate"]
    assert busy["workers"] == 1


def test_the_job_bound_can_move_while_running():
    """Raising max_in_flight lets more jobs in at once; lowering it interrupts nobody and lets
    no new job in until the pipeline has drained below the new bound."""

    async def main():
        ev = make("async", minutes=15)  # 15 virtual minutes
        task = asyncio.create_task(ev.run())
        samples = []  # (virtual s, jobs holding a slot, bound in force)

        async def watch():
            while not task.done():
                await asyncio.sleep(2)
                if ev.runtime is not None and ev.runtime.state == "running":
                    status = ev.status()
                    samples.append(
                        (ev.runtime.ctx.now(), status["jobs_in_flight"], status["max_in_flight"])
                    )

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(200)
        ev.runtime.set_max_in_flight(4 * ev.runtime.max_in_flight, reason="test: wider")
        await asyncio.sleep(200)
        ev.runtime.set_max_in_flight(2, reason="test: narrower")
        await task
        watcher.cancel()
        return ev, samples

    ev, samples = run_virtual(main)
    changed = kinds(ev, Kind.JOB_BOUND_CHANGED)
    first, start = changed["data"][0], json.loads(changed["data"][0])["from"]
    assert [json.loads(d)["to"] for d in changed["data"]] == [4 * start, 2], first
    assert changed["reason"].to_list() == ["test: wider", "test: narrower"]
    assert all(used <= limit for _, used, limit in samples if _ < 195)
    assert max(used for t, used, _ in samples if 200 < t < 400) > start  # more jobs got in
    after = [(t, used) for t, used, _ in samples if t > 400]
    # Shrinking: the count only falls until it is within the new bound, then stays there.
    under = next(i for i, (_, used) in enumerate(after) if used <= 2)
    assert all(b[1] <= a[1] for a, b in zip(after[:under], after[1 : under + 1], strict=True))
    assert under > 0 and all(used <= 2 for _, used in after[under:])  # a drain was seen


class CrashingTask(SimulatedTask):
    def metric(self, example, output):
        if example.id.endswith("3"):
            raise ZeroDivisionError("evaluator bug")
        return super().metric(example, output)


def test_a_crashing_evaluator_scores_zero_and_the_run_goes_on():
    ev = Evolver(CrashingTask(n_train=30, n_val=20), simulated(), mode="async", budget=300, **ASYNC)
    summary = ev.run_virtual()
    assert summary["proposals"] > 0 and summary["errors"] == 0
    seed = ev.pool.records[0]
    assert seed.val_scores["val-3"] == 0.0 and seed.val_scores["val-13"] == 0.0


def test_events_and_summary_have_the_documented_columns_and_keys():
    ev = make("async", minutes=2)
    summary = ev.run_virtual()
    for col in (
        "ts",
        "kind",
        "stage",
        "item_id",
        "artifact_id",
        "version_stamp",
        "pool_version",
        "lag",
        "prompt_tokens",
        "completion_tokens",
        "latency_s",
        "decision",
        "reason",
    ):
        assert col in ev.events.columns
    for key in (
        "proposals_per_min",
        "validations_per_min",
        "accepted_per_min",
        "best_score",
        "tokens_per_accepted",
    ):
        assert key in summary


def test_run_directory_resume_keeps_admitted_artifacts(tmp_path):
    first = make("async", minutes=10, run_dir=tmp_path)
    first.run_virtual()
    admitted = [r.id for r in first.pool.records]
    lines = (tmp_path / "artifacts.jsonl").read_text().splitlines()
    assert [json.loads(x)["artifact"]["id"] for x in lines] == admitted
    with pytest.raises(ConfigError, match="resume"):
        make("async", minutes=1, run_dir=tmp_path)
    # a torn last line, as a killed process leaves it, is tolerated
    with (tmp_path / "events.jsonl").open("a") as fh:
        fh.write('{"kind": "item_enq')
    second = make("async", minutes=5, run_dir=tmp_path, resume=True)
    second.run_virtual()
    assert [r.id for r in second.pool.records][: len(admitted)] == admitted
    assert second.events["ts"].max() > first.events["ts"].max()
    assert (tmp_path / "best.json").exists() and (tmp_path / "summary.json").exists()


def test_bad_configuration_names_the_field():
    with pytest.raises(ConfigError, match="mode"):
        make("fast")
    with pytest.raises(ConfigError, match="budget.seconds"):
        make("async", budget={"seconds": -1})
    with pytest.raises(ValueError, match="unknown stages"):
        make("async", workers={"rolout": 2})


def test_the_time_budget_covers_scoring_the_seed():
    # 500 validation examples at 8 concurrent take far longer than 60 simulated seconds
    ev = Evolver(SimulatedTask(n_train=30, n_val=500), simulated(), mode="sync", budget=60)
    summary = ev.run_virtual()
    assert summary["duration_s"] == pytest.approx(60.0)
    assert len(ev.pool) == 0 and summary["proposals"] == 0
    assert kinds(ev, Kind.BUDGET_STOP).height == 1


def test_a_resumed_sync_run_continues_exactly_where_it_stopped(tmp_path):
    """Stop after 4 proposals, resume to 10: the same admissions, parents, minibatches and
    components as one uninterrupted run to 10 (RNG streams, sampler, pointers restored)."""

    def trace(ev):
        events = ev.event_list()
        picks = [
            (e.artifact_id, tuple(e.data["minibatch"]))
            for e in events
            if e.kind == Kind.PARENT_SELECTED
        ]
        components = [
            (e.parent_id, e.data["component"]) for e in events if e.kind == Kind.PROPOSAL_MADE
        ]
        return picks, components, [r.id for r in ev.pool.records]

    whole = make("sync", seed=2, budget={"proposals": 10})
    whole.run_virtual()
    first = make("sync", seed=2, budget={"proposals": 4}, run_dir=tmp_path)
    first.run_virtual()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["workflow"]["iteration"] >= 4 and state["budget"]["proposals"] == 4
    second = make("sync", seed=2, budget={"proposals": 10}, run_dir=tmp_path, resume=True)
    second.run_virtual()
    assert trace(second) == trace(whole)
    # ids continue instead of starting over: no item id is used twice in the run's log
    enqueued = [e.item_id for e in second.event_list() if e.kind == Kind.ITEM_ENQUEUED]
    assert len(enqueued) == len(set(enqueued))


def test_resume_refuses_another_task_or_workflow(tmp_path):
    make("sync", budget={"proposals": 2}, run_dir=tmp_path).run_virtual()
    other = Evolver(
        SimulatedTask(n_train=31, n_val=20, seed=0),
        simulated(seed=0),
        mode="sync",
        budget={"proposals": 3},
        run_dir=tmp_path,
        resume=True,
    )
    with pytest.raises(ConfigError, match="task changed"):
        other.run_virtual()


class HangingTask(SimulatedTask):
    """Rollouts of one validation example never return (a stuck evaluator): no request of the
    item ever finishes, so only the watchdog can free its worker."""

    async def rollout(self, components, example, llm, *, stage, item_id, seed=None):
        if stage == "validate" and example.id == "val-3" and item_id != "seed":
            await asyncio.Event().wait()  # forever
        return await super().rollout(
            components, example, llm, stage=stage, item_id=item_id, seed=seed
        )


def test_the_watchdog_frees_a_worker_from_an_item_that_stopped_moving():
    ev = Evolver(
        HangingTask(n_train=30, n_val=20, seed=0),
        simulated(seed=0),
        mode="sync",
        budget=3600,
        stall_s=300,
    )
    summary = ev.run_virtual()
    dog = kinds(ev, Kind.WATCHDOG)
    assert dog.height >= 2  # in sync mode a stuck validation would otherwise end the run's work
    assert (dog["stage"] == "validate").all() and (dog["latency_s"] >= 300).all()
    dropped = kinds(ev, Kind.ITEM_DROPPED).filter(pl.col("reason") == "watchdog")
    assert set(dropped["item_id"]) == set(dog["item_id"])
    # the run went on after each cancellation: jobs kept starting until the budget
    last_cancel = float(dog["ts"].max())
    later = kinds(ev, Kind.PARENT_SELECTED).filter(pl.col("ts") > last_cancel)
    assert later.height >= 1 and summary["proposals"] > dog.height


def test_no_watchdog_when_turned_off_and_bad_values_are_named():
    with pytest.raises(ConfigError, match="stall_s"):
        make("sync", stall_s=0)
    ev = make("sync", minutes=2, stall_s=None)
    ev.run_virtual()
    assert kinds(ev, Kind.WATCHDOG).height == 0


class FlakyInfraTask(SimulatedTask):
    """Every request for one validation example fails for good at the infrastructure (what the
    client reports after its own retries): the run must leave the example out, not score it 0."""

    calls = 0

    async def rollout(self, components, example, llm, *, stage, item_id, seed=None):
        if example.id == "val-3":
            type(self).calls += 1
            from flashevolve.tasks.base import Rollout

            return Rollout(example.id, "", 0.0, "connection refused", error="refused",
                           error_kind="infrastructure")  # fmt: skip
        return await super().rollout(
            components, example, llm, stage=stage, item_id=item_id, seed=seed
        )


def test_an_infrastructure_failure_is_left_out_not_scored_zero():
    FlakyInfraTask.calls = 0
    ev = Evolver(FlakyInfraTask(n_train=30, n_val=20, seed=0), simulated(seed=0), mode="sync",
                 budget={"proposals": 20})  # fmt: skip
    ev.run_virtual()
    sweeps = kinds(ev, Kind.VALIDATION_FINISHED)
    assert sweeps.height >= 2
    for raw in sweeps["data"]:
        data = json.loads(raw)
        assert data["left_out"] == ["val-3"] and data["n"] == 19
    # every candidate is scored on the 19 examples that answered; none got a 0 for val-3
    assert all("val-3" not in r.val_scores and len(r.val_scores) == 19 for r in ev.pool.records)
    # each validation asked twice (the rollout is run once more before it is left out)
    assert FlakyInfraTask.calls == 2 * sweeps.height
