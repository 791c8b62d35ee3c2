"""Meta-Harness without running code: the proposer's answer parser, the simulator's workload and
runner, and whole runs on the simulated server on virtual time (sync order, staleness, exact
resume).  The sandbox side lives in tests/test_meta_harness_sandbox.py."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from flashevolve import Evolver
from flashevolve.backends.sim import simulated
from flashevolve.errors import ConfigError
from flashevolve.events.schema import Kind
from flashevolve.policies.guarded import Guarded
from flashevolve.tasks import get_task
from flashevolve.tasks.intent_lite import SEED_HARNESS
from flashevolve.workflows.base import make_workflow
from flashevolve.workflows.meta_harness import (
    PROTECTIONS_EVENT,
    MetaHarnessWorkflow,
    parse_proposal,
)
from flashevolve.workflows.meta_harness.sim import (
    META_HARNESS_WORKLOAD,
    SEED_QUALITY,
    harness_calls,
    harness_quality,
)
from flashevolve.workflows.meta_harness.sim_runner import static_check

CODE = "import fe_llm\n\ndef setup(memory):\n    pass\n\ndef predict(text):\n    return 'x'\n"


def kinds(ev: Evolver, kind: str) -> pl.DataFrame:
    return ev.events.filter(pl.col("kind") == kind)


def make(mode: str = "sync", **kw: object) -> Evolver:
    options = dict(kw)
    task = options.pop("task", None) or get_task("intent-lite", n_val=12, n_train=48)
    seed = int(options.pop("seed", 0))  # type: ignore[arg-type]
    options.setdefault("load_every_s", None)
    return Evolver(
        task,
        simulated(seed=seed, workload="meta-harness"),
        workflow="meta-harness",
        mode=mode,
        seed=seed,
        **options,  # type: ignore[arg-type]
    )


# -- the proposer's answer ---------------------------------------------------------------------


def test_code_comes_from_the_fenced_block_and_the_hypothesis_from_its_line() -> None:
    answer = (
        "Some thinking first.\n**Hypothesis:** retrieval of similar examples helps.\n\n"
        "```python\n" + CODE + "```\nAnd a note after it: ```not code```.\n"
    )
    parsed = parse_proposal(answer)
    assert parsed.reason is None and parsed.code == CODE
    assert parsed.hypothesis == "retrieval of similar examples helps."
    # the longest Python block wins over a short snippet; other languages are ignored
    two = f"HYPOTHESIS: h\n```bash\nls\n```\n```py\nx = 1\n```\n```python\n{CODE}```\n"
    assert parse_proposal(two).code == CODE


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("HYPOTHESIS: nothing to show", "no fenced code block"),
        ("HYPOTHESIS: h\n```python\ndef setup(m):\n    pass\n", "never closed"),
        ('```json\n{"a": 1}\n```', "no Python code block"),
        ("```python\n\n```", "empty"),
        ("", "no fenced code block"),
    ],
)
def test_an_answer_without_usable_code_is_a_rejection_with_its_reason(
    answer: str, reason: str
) -> None:
    parsed = parse_proposal(answer)
    assert parsed.code is None and reason in (parsed.reason or "")


def test_a_run_records_unusable_proposals_as_rejections() -> None:
    """The simulator truncates ~3% of proposals: each one is a proposal_rejected event with
    its reason, never an artifact (and the run goes on)."""
    ev = make("async", budget=20 * 60, workers={"propose": 8}, max_in_flight=12)
    ev.run_virtual()
    rejected = kinds(ev, Kind.PROPOSAL_REJECTED)
    assert rejected.height > 0
    assert all(r for r in rejected["reason"].to_list())
    assert "never closed" in " ".join(rejected["reason"].to_list())
    made = set(kinds(ev, Kind.PROPOSAL_MADE)["artifact_id"].to_list())
    assert set(ev.pool._by_id) - {ev.pool.records[0].id} <= made


# -- the simulator's workload and runner -----------------------------------------------------


def test_the_simulated_proposer_writes_real_code_that_keeps_the_interface() -> None:
    task = get_task("intent-lite", n_val=3, n_train=5)
    prompt = f"HYPOTHESIS and harness:\n```python\n{SEED_HARNESS}```\nANSWER: fail (x)\n"
    seen_broken = seen_good = 0
    for i in range(60):
        text = META_HARNESS_WORKLOAD.content.respond(
            [{"role": "user", "content": prompt}], "propose", random.Random(i)
        )
        parsed = parse_proposal(text)
        if parsed.code is None:
            continue
        verdict = static_check({"harness.py": parsed.code}, task)
        if verdict.ok:
            seen_good += 1
            assert "def predict(text):" in parsed.code and parsed.hypothesis
            assert harness_quality(parsed.code) != SEED_QUALITY
            assert 1 <= harness_calls(parsed.code) <= 3
            compile(parsed.code, "harness.py", "exec")  # real Python
        else:
            seen_broken += 1
            assert "SyntaxError" in verdict.reason
    assert seen_good > 40 and seen_broken >= 1


def test_static_check_names_what_is_missing() -> None:
    task = get_task("intent-lite", n_val=3, n_train=5)
    assert static_check({"harness.py": CODE}, task).ok
    no_predict = static_check({"harness.py": "def setup(memory):\n    pass\n"}, task)
    assert not no_predict.ok and "predict() is not defined" in no_predict.reason
    arity = static_check({"harness.py": CODE.replace("predict(text)", "predict()")}, task)
    assert not arity.ok and "predict() cannot be called with 1" in arity.reason
    assert not static_check({"other.py": CODE}, task).ok


# -- whole runs on virtual time ----------------------------------------------------------------


def test_sync_is_meta_harness_loop_one_harness_at_a_time() -> None:
    ev = make("sync", budget={"proposals": 6})
    summary = ev.run_virtual()
    assert summary["proposals"] == 6 and summary["stale_seen"] == 0
    starts = kinds(ev, PROTECTIONS_EVENT)
    assert starts.height == 1 and "simulated runner" in starts["reason"][0]
    # every stage of a job finishes before the next stage (or the next job) starts
    done = kinds(ev, Kind.ITEM_DEQUEUED).select("ts", "stage", "item_id")
    stages = done["stage"].to_list()
    order = {"propose": 0, "validate": 1, "evaluate": 2}
    for before, after in zip(stages, stages[1:], strict=False):
        assert order[after] == order[before] + 1 or order[after] == 0
    per_job = ev.events.filter(pl.col("kind") == Kind.ITEM_ENQUEUED)
    jobs = [json.loads(d)["job_id"] for d in per_job["data"].to_list()]
    assert jobs == sorted(jobs, key=lambda j: int(j[1:]))  # one job after another
    # the seed was checked and scored; each admitted harness has one sweep and per-example rows
    assert ev.pool.records[0].artifact.origin == "seed"
    sweeps = kinds(ev, Kind.VALIDATION_FINISHED)
    rows = kinds(ev, Kind.ROLLOUT_FINISHED)
    assert rows.height == sweeps.height * len(ev.task.val)
    assert set(kinds(ev, Kind.ADMITTED)["artifact_id"].to_list()) == set(ev.pool._by_id)


def test_harness_model_calls_carry_the_stage_and_the_example_item() -> None:
    ev = make("sync", budget={"proposals": 2})
    ev.run_virtual()
    req = ev.requests
    evaluate = req.filter(pl.col("stage") == "evaluate")
    examples = {ex.id for ex in ev.task.val}
    sweeps = kinds(ev, Kind.VALIDATION_FINISHED)["data"].to_list()
    assert len(sweeps) >= 2  # the seed and at least one proposal
    assert evaluate.height == sum(json.loads(d)["llm_calls"] for d in sweeps)
    assert evaluate.height >= len(sweeps) * len(examples)
    for item in evaluate["item_id"].to_list():
        job_item, example = item.split("/")
        assert example in examples and job_item
    assert set(req.filter(pl.col("stage") == "propose")["role"].to_list()) == {"reflection"}


def test_stale_proposals_go_to_the_staleness_policy() -> None:
    ev = make(
        "async",
        budget=15 * 60,
        workers={"propose": 6, "evaluate": 2},
        max_in_flight=8,
        staleness=Guarded(max_lag=1),
    )
    ev.run_virtual()
    stale = kinds(ev, Kind.STALE_DETECTED)
    assert stale.height > 0 and set(stale["stage"].to_list()) == {"validate"}
    decisions = stale["decision"].to_list()
    lags = stale["lag"].to_list()
    assert all(
        d == ("accept" if lag <= 1 else "discard") for d, lag in zip(decisions, lags, strict=True)
    )
    assert "discard" in decisions
    dropped = kinds(ev, Kind.ITEM_DROPPED)["reason"].to_list()
    assert sum(r == "stale: discard" for r in dropped) == decisions.count("discard")


def test_reflective_review_repairs_stale_harnesses_with_code_that_is_checked_again() -> None:
    ev = make(
        "async",
        budget=15 * 60,
        workers={"propose": 6, "evaluate": 2},
        max_in_flight=8,
        staleness="reflective",
    )
    ev.run_virtual()
    patched = kinds(ev, Kind.STALE_DETECTED).filter(pl.col("decision") == "patch")
    assert patched.height > 0
    repaired = set(patched["artifact_id"].to_list())
    checked = set(
        ev.events.filter(pl.col("kind").is_in([Kind.GATE_PASSED, Kind.GATE_FAILED]))[
            "artifact_id"
        ].to_list()
    )
    assert repaired <= checked  # a repair is code too: it meets the import check
    patches = [r for r in ev.pool.records if r.artifact.origin == "patch"]
    assert patches and all("harness.py" in r.artifact.components for r in patches)


def test_async_overlaps_proposers_and_outpaces_sync() -> None:
    sync = make("sync", budget=20 * 60).run_virtual()
    fast = make("async", budget=20 * 60, workers={"propose": 8, "evaluate": 4}).run_virtual()
    assert fast["proposals_per_min"] > 3 * sync["proposals_per_min"]
    assert fast["peak_concurrency"] > sync["peak_concurrency"]


def test_a_resumed_sync_run_continues_exactly_where_it_stopped(tmp_path) -> None:  # noqa: ANN001
    def trace(ev: Evolver) -> tuple[list, list, list]:
        events = ev.event_list()
        picks = [
            (e.artifact_id, e.data["prompt_chars"])
            for e in events
            if e.kind == Kind.PARENT_SELECTED
        ]
        made = [
            (e.artifact_id, e.data["hypothesis"]) for e in events if e.kind == Kind.PROPOSAL_MADE
        ]
        return picks, made, [r.id for r in ev.pool.records]

    whole = make("sync", seed=3, budget={"proposals": 7})
    whole.run_virtual()
    first = make("sync", seed=3, budget={"proposals": 3}, run_dir=tmp_path)
    first.run_virtual()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["workflow"]["iteration"] >= 3 and state["workflow"]["history"]
    second = make("sync", seed=3, budget={"proposals": 7}, run_dir=tmp_path, resume=True)
    second.run_virtual()
    assert trace(second) == trace(whole)

    # the history the proposer reads (rejected harnesses included) survived the restart
    def attempts(ev: Evolver) -> list[dict]:  # run-clock times differ after a restart
        return [{k: v for k, v in a.items() if k != "ts"} for a in ev.workflow.history.snapshot()]

    assert attempts(second) == attempts(whole)


def test_bad_options_and_tasks_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="runner"):
        make_workflow("meta-harness", runner="docker")
    with pytest.raises(ConfigError, match="context_tokens"):
        MetaHarnessWorkflow(context_tokens=10)
    with pytest.raises(ConfigError, match="speculative"):
        make("async", speculation=object())
    ev = Evolver(
        "ifeval-lite", simulated(workload="meta-harness"), workflow="meta-harness", budget=60
    )
    with pytest.raises(ConfigError, match="not a harness task"):
        ev.run_virtual()


def test_the_bench_rows_are_labelled_simulated_and_compare_with_sync(tmp_path) -> None:  # noqa: ANN001
    from flashevolve.bench import meta_harness as bench

    out = tmp_path / "rows.json"
    bench.main(["--minutes", "6", "--configs", "sync,async", "--json", str(out)])
    payload = json.loads(out.read_text())
    assert payload["simulated"] is True and payload["workflow"] == "meta-harness"
    sync, fast = payload["rows"]
    assert sync["config"] == "sync" and sync["speedup"] == 1.0
    assert fast["accepted_speedup"] == fast["accepted_per_min"] / sync["accepted_per_min"]
    assert fast["proposals_per_min"] > sync["proposals_per_min"]
    assert sync["propose_s"] > sync["evaluate_s"] > sync["validate_s"]  # propose-dominated
    with pytest.raises(ConfigError, match="unknown meta-harness bench config"):
        bench.get_config("fastest")


def test_a_prompt_the_server_refuses_stops_the_run_with_what_to_change() -> None:
    """A 400 on the proposer's prompt (too long for the server's context) would come back for
    every proposal at once: the run stops, saying which option to change, instead of looping
    through thousands of refused proposals."""
    from flashevolve.backends.openai_compat import OpenAICompatLLM
    from flashevolve.backends.server import ScriptedResponder, serve_in_thread
    from flashevolve.workflows.base import sim_workload_of

    def refuse_proposals(request, index):  # noqa: ANN001, ANN202
        return 400 if request.stage == "propose" else None

    responder = ScriptedResponder(
        sim_workload_of("meta-harness").content, error_fn=refuse_proposals
    )
    with serve_in_thread(responder) as url:
        llm = OpenAICompatLLM(url, responder.model)
        ev = Evolver(
            get_task("intent-lite", n_val=6, n_train=12),
            llm,
            workflow="meta-harness",
            runner="simulated",
            mode="sync",
            budget=120,
            load_every_s=None,
        )
        ev.start()
        ev.wait()
    rejected = kinds(ev, Kind.PROPOSAL_REJECTED)
    assert 1 <= rejected.height <= 2  # the refused one (and at most one already on its way)
    assert "HTTP 400" in rejected["reason"][0]
    stop = ev.events.filter(pl.col("kind") == Kind.RUN_FINISHED)["reason"][0]
    assert "--proposer-context" in stop and "--ctx-per-slot" in stop
