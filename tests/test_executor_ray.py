"""The Ray executor against a real local Ray cluster (started here, on 127.0.0.1 only): the
HumanEval code task's metric runs as Ray tasks and scores exactly as locally; a metric that
raises on a worker is the same evaluator failure as locally; cancelling cancels the Ray task;
an Evolver run with ``executor=`` a Ray executor.  Ray is in the dev extra; these tests skip only
where it is not installed."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

# A local Ray binds the loopback address only if this is set before Ray is first imported
# (RayExecutor sets it itself when it imports Ray first; here the test imports Ray first).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")

from flashevolve import Evolver  # noqa: E402
from flashevolve.backends import openai  # noqa: E402
from flashevolve.backends.base import ChatRequest  # noqa: E402
from flashevolve.backends.server import ScriptedResponder, serve_in_thread  # noqa: E402
from flashevolve.executors import LocalExecutor, RayExecutor, heavy, use_executor  # noqa: E402
from flashevolve.tasks.base import Example, MetricResult, PromptTask  # noqa: E402
from flashevolve.tasks.loaders import load_task_file  # noqa: E402
from flashevolve.tasks.sandbox import humaneval_metric  # noqa: E402

DATA = Path(__file__).parent / "data" / "humaneval.jsonl"

#: What the scripted model answers, per function asked for: two right, one wrong.
ANSWERS = {
    "add": "```python\ndef add(a, b):\n    return a + b\n```",
    "is_even": "```python\ndef is_even(n):\n    return n % 2 == 1\n```",
    "total": "```python\ndef total(xs):\n    return sum(xs)\n```",
}


def answer(request: ChatRequest) -> str:
    asked = request.messages[-1]["content"]
    for name, code in ANSWERS.items():
        if f"def {name}(" in asked:
            return code
    return "```\nComplete the function; reply with one python code block.\n```"  # reflection


@pytest.fixture(scope="module")
def ray_executor():
    executor = RayExecutor(local_cpus=2)
    t0 = time.perf_counter()
    executor.start()
    print(f"\nlocal Ray started in {time.perf_counter() - t0:.1f}s")  # shown with -s
    assert ray.util.get_node_ip_address() == "127.0.0.1"  # nothing but loopback traffic
    try:
        yield executor
    finally:
        executor.close()
    assert not ray.is_initialized()  # it stopped the Ray it started


@pytest.fixture(scope="module")
def scripted_url():
    with serve_in_thread(ScriptedResponder(answer)) as url:
        yield url


def _rollouts(task, url: str, executor) -> list:
    llm = openai(url, "scripted", api_key_env=None)
    examples = task.train + task.val + task.test

    async def main():
        with use_executor(executor):
            return await asyncio.gather(
                *(
                    task.rollout(task.seed_artifact(), e, llm, stage="rollout", item_id=e.id)
                    for e in examples
                )
            )

    return asyncio.run(main())


def test_the_code_task_scores_the_same_on_ray_as_locally(ray_executor, scripted_url) -> None:
    task = load_task_file(DATA, n_train=1, n_val=1, seed=0)
    before = ray_executor.stats()["finished"]
    remote = _rollouts(task, scripted_url, ray_executor)
    local = _rollouts(task, scripted_url, LocalExecutor())
    assert ray_executor.stats()["finished"] - before == 3  # each metric ran as a Ray task
    seen = [(r.example_id, r.score, r.feedback, r.error_kind) for r in remote]
    assert seen == [(r.example_id, r.score, r.feedback, r.error_kind) for r in local]
    scores = {r.example_id: r.score for r in remote}
    assert scores == {"toy/0": 1.0, "toy/1": 0.0, "toy/2": 1.0}
    wrong = next(r for r in remote if r.example_id == "toy/1")
    assert "AssertionError" in wrong.feedback


def test_a_metric_that_raises_on_a_worker_is_an_evaluator_failure_as_locally(
    ray_executor, scripted_url
) -> None:
    def picky(example: Example, output: str) -> MetricResult:  # pickled by value for Ray
        raise ValueError(f"cannot grade {example.id} on pid {os.getpid()}")

    examples = [Example(f"e{i}", {"prompt": f"q{i}"}) for i in range(2)]
    task = PromptTask(
        "picky", train=examples[:1], val=examples[1:], seed={"i": "x"}, metric=heavy(picky)
    )
    remote = _rollouts(task, scripted_url, ray_executor)
    local = _rollouts(task, scripted_url, LocalExecutor())
    for r, loc in zip(remote, local, strict=True):
        assert r.error_kind == loc.error_kind == "evaluator" and r.score == 0.0
        assert r.feedback.startswith("The evaluator crashed: ValueError: cannot grade")
        # the same message, but another process raised it
        assert r.feedback.split(" on pid ")[0] == loc.feedback.split(" on pid ")[0]
        assert r.feedback.split(" on pid ")[1] != str(os.getpid())
    assert ray_executor.stats()["failed"] >= 2


def test_cancelling_the_caller_cancels_the_ray_task(ray_executor) -> None:
    task = load_task_file(DATA, n_train=1, n_val=1, seed=0)
    add = next(e for e in task.train + task.val + task.test if e.id == "toy/0")
    forever = "    while True:\n        pass\n"
    cancelled_before = ray_executor.stats()["cancelled"]

    async def main():
        call = asyncio.create_task(ray_executor.run(humaneval_metric, add, forever, timeout_s=120))
        for _ in range(1000):  # until the call is submitted (bounded)
            if ray_executor.in_flight():
                break
            await asyncio.sleep(0.01)  # polling a real Ray cluster, bounded; not timing
        (ref,) = ray_executor.in_flight()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return ref

    ref = asyncio.run(main())
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(ref, timeout=60)  # the program would have run 120 s: it was stopped
    assert ray_executor.stats()["cancelled"] == cancelled_before + 1
    assert ray_executor.in_flight() == []
    # the cluster goes on: the next call runs
    score = asyncio.run(ray_executor.run(humaneval_metric, add, "    return a + b\n")).score
    assert score == 1.0


def test_an_evolver_run_evaluates_code_on_ray(ray_executor, scripted_url) -> None:
    task = load_task_file(DATA, n_train=1, n_val=1, seed=0)
    llm = openai(scripted_url, "scripted", api_key_env=None)
    runs = {}
    for name, executor in (("ray", ray_executor), ("local", "local")):
        evolver = Evolver(
            task, llm, mode="sync", budget={"metric_calls": 6}, executor=executor, name=name
        )
        before = ray_executor.stats()["finished"]
        summary = evolver.run_sync()
        runs[name] = (evolver, summary, ray_executor.stats()["finished"] - before)
    ray_run, ray_summary, on_ray = runs["ray"]
    local_run, local_summary, on_ray_locally = runs["local"]
    assert on_ray >= 6 and on_ray_locally == 0
    assert ray_summary["errors"] == local_summary["errors"] == 0
    assert ray_run.event_list()[0].data["executor"] == "ray"
    assert ray_run._owns_executor is False and ray.is_initialized()  # the caller's, left running

    def outcomes(evolver) -> list:
        keep = ("admitted", "gate_passed", "gate_failed", "validation_finished")
        return [(e.kind, e.score) for e in evolver.event_list() if e.kind in keep]

    assert outcomes(ray_run) == outcomes(local_run)  # the same run, wherever metrics ran
