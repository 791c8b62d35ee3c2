"""Executors: the local default (threads, processes), the run's executor as a context variable,
heavy metrics going through it, and one clear error when Ray is asked for and missing.  Ray
itself runs in tests/test_executor_ray.py."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import sys

import pytest

from flashevolve import Evolver
from flashevolve.backends import openai
from flashevolve.backends.server import ScriptedResponder, serve_in_thread
from flashevolve.errors import ConfigError, UserError
from flashevolve.executors import (
    Executor,
    LocalExecutor,
    current_executor,
    default_executor,
    heavy,
    make_executor,
    run_heavy,
    use_executor,
)
from flashevolve.tasks.base import Example, MetricResult, PromptTask

_marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


def pid_and(value: int) -> tuple[int, int]:
    """Module-level, so a process pool can run it."""
    return os.getpid(), value * 2


def pid_metric(example: Example, output: str) -> MetricResult:
    return MetricResult(1.0 if output else 0.0, "ok", {"pid": os.getpid()})


class CountingExecutor(LocalExecutor):
    """Local threads that count what they ran (an Executor of its own, not a stand-in)."""

    def __init__(self) -> None:
        super().__init__("thread", max_workers=2)
        self.calls = 0
        self.closed = False

    async def run(self, fn, /, *args, **kwargs):
        self.calls += 1
        return await super().run(fn, *args, **kwargs)

    def close(self) -> None:
        self.closed = True
        super().close()


def test_threads_return_values_raise_errors_and_see_context_variables() -> None:
    ex = LocalExecutor()
    assert isinstance(ex, Executor)

    def read_marker(x: int) -> tuple[str, int]:
        return _marker.get(), x + 1

    def boom() -> None:
        raise KeyError("the metric broke")

    async def main():
        _marker.set("set by the caller")
        value = await ex.run(read_marker, 1)
        with pytest.raises(KeyError, match="the metric broke"):
            await ex.run(boom)
        return value

    assert asyncio.run(main()) == ("set by the caller", 2)
    ex.close()


def test_processes_run_module_level_functions_elsewhere() -> None:
    ex = LocalExecutor("process", max_workers=1)
    try:
        pid, doubled = asyncio.run(ex.run(pid_and, 21))
    finally:
        ex.close()
    assert doubled == 42 and pid != os.getpid()


def test_executor_names_and_bad_ones() -> None:
    assert make_executor(None).name == "local"
    assert make_executor("thread").name == "local"
    assert make_executor("process").name == "local-process"
    mine = LocalExecutor()
    assert make_executor(mine) is mine
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ConfigError, match="Executor object"):
        make_executor(42)
    with pytest.raises(ValueError, match="max_workers"):
        LocalExecutor(max_workers=0)


def test_asking_for_ray_without_ray_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UserError, match=r"pip install 'flashevolve\[ray\]'"):
        make_executor("ray")
    from flashevolve.backends.sim import SimulatedTask

    with pytest.raises(UserError, match="Ray, which is not installed"):
        Evolver(SimulatedTask(seed=0, n_train=4, n_val=4), "sim", executor="ray:auto")


def test_the_current_executor_is_the_runs_and_the_default_outside() -> None:
    mine = CountingExecutor()
    assert current_executor() is default_executor()

    async def main():
        with use_executor(mine):
            inner = await asyncio.create_task(_current_name())  # tasks inherit it
            value = await run_heavy(pid_and, 5)
        return inner, value

    inner, (_, value) = asyncio.run(main())
    assert inner is mine and value == 10 and mine.calls == 1
    assert current_executor() is default_executor()


async def _current_name() -> Executor:
    return current_executor()


def _task(metric) -> PromptTask:
    examples = [Example(f"e{i}", {"prompt": f"say {i}"}, reference=str(i)) for i in range(4)]
    return PromptTask(
        "heavy-demo",
        train=examples[:2],
        val=examples[2:],
        seed={"instruction": "Answer."},
        metric=metric,
    )


def test_a_heavy_metric_runs_on_the_executor_in_another_process() -> None:
    task = _task(heavy(pid_metric))
    ex = LocalExecutor("process", max_workers=1)
    with serve_in_thread(ScriptedResponder("an answer")) as url:
        llm = openai(url, "scripted", api_key_env=None)

        async def main():
            with use_executor(ex):
                return await task.rollout(
                    task.seed_artifact(), task.train[0], llm, stage="rollout", item_id="x"
                )

        try:
            rollout = asyncio.run(main())
        finally:
            ex.close()
    assert rollout.score == 1.0 and rollout.error is None
    assert rollout.trace["details"]["pid"] != os.getpid()


def test_evolver_runs_heavy_metrics_on_its_executor_and_closes_one_it_made() -> None:
    mine = CountingExecutor()
    metric = heavy(functools.partial(pid_metric))
    with serve_in_thread(ScriptedResponder("```\nAnswer well.\n```")) as url:
        llm = openai(url, "scripted", api_key_env=None)
        evolver = Evolver(
            _task(metric), llm, mode="sync", budget={"metric_calls": 6}, executor=mine
        )
        evolver.run_sync()
        owned = Evolver(
            _task(heavy(pid_metric)),
            llm,
            mode="sync",
            budget={"metric_calls": 2},
            executor="process",
        )
        assert owned.run_sync()["errors"] == 0
    assert mine.calls >= 6 and not mine.closed  # the caller's executor stays open
    # made by the run from a name: its worker processes were shut down at the end
    assert owned._owns_executor and owned.executor._pool is None
    assert owned.pool.best().mean_score == 1.0  # the metric ran there (a failure scores 0)
    started = evolver.event_list()[0]
    assert started.kind == "run_started" and started.data["executor"] == "local"


def test_command_line_options_become_an_executor_spec() -> None:
    from flashevolve.executors import executor_from_options

    assert executor_from_options(None, None) is None
    assert executor_from_options("process", None) == "process"
    assert executor_from_options("ray", "auto") == "ray:auto"
    assert executor_from_options("ray", None) == "ray"
    with pytest.raises(ConfigError, match="--ray-address needs --executor ray"):
        executor_from_options(None, "10.0.0.1:6379")
    with pytest.raises(ConfigError, match="unknown executor"):
        executor_from_options("rayy", None)
