"""The task registry, the package exports and one real rollout of a built-in task."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from test_tasks_loaders import _rollout_against  # tests/ is on sys.path (pytest prepend mode)

import flashevolve.tasks as tasks
from flashevolve.errors import UserError
from flashevolve.tasks import Task, available_tasks, get_task


def test_exports_include_base_names() -> None:
    for name in (
        "Task",
        "Example",
        "MetricResult",
        "Rollout",
        "PromptTask",
        "get_task",
        "available_tasks",
        "load_task_file",
    ):
        assert hasattr(tasks, name), name


def test_available_and_unknown() -> None:
    assert available_tasks() == ["formula-lite", "ifbench", "ifeval-lite", "intent-lite", "sim"]
    with pytest.raises(
        UserError,
        match=r"unknown task 'nope'; choose one of: formula-lite, ifbench, "
        r"ifeval-lite, intent-lite, sim",
    ):
        get_task("nope")
    with pytest.raises(UserError, match="has no option 'n_trian'"):
        get_task("ifeval-lite", n_trian=3)


def test_names_are_forgiving_about_case_and_underscores() -> None:
    assert isinstance(get_task("IFEval_Lite"), Task)


def test_sim_is_wired_lazily() -> None:
    assert get_task("sim").name


def test_missing_bench_extra_gives_install_hint() -> None:
    # A fresh interpreter where the extra's packages cannot be imported.
    code = (
        "import sys; sys.modules['ifbench'] = None; sys.modules['if_verifiable'] = None\n"
        "from flashevolve.tasks import get_task\n"
        "try:\n    get_task('ifbench')\nexcept Exception as e:\n    print(type(e).__name__, e)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    ).stdout
    assert "UserError" in out and "pip install 'flashevolve[bench]'" in out


def test_ifeval_lite_rollout_through_a_local_server() -> None:
    task = get_task("ifeval-lite")
    example = next(
        e
        for e in task.train
        if e.meta["constraint_types"] == ["lowercase"] or "lowercase" in e.meta["constraint_types"]
    )
    rollout = asyncio.run(_rollout_against("ALL CAPS ANSWER", task, example))
    assert rollout.error is None and rollout.score < 1.0
    assert "FAIL lowercase" in rollout.feedback
    messages = rollout.trace["messages"]
    assert messages[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert messages[1]["content"] == example.inputs["prompt"]
