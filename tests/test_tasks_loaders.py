"""Loaders for user task files: each kind, its metric, and the error messages for bad files."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
from aiohttp import web

from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.errors import TaskFileError, UserError
from flashevolve.tasks import Example, PromptTask, load_task_file
from flashevolve.tasks.loaders import load_task_file as _direct_load  # noqa: F401
from flashevolve.tasks.sandbox import CodeTask, build_program, humaneval_metric
from flashevolve.tasks.scoring import (
    aime_metric,
    exact_metric,
    extract_answer,
    extract_final_number,
    extract_label,
    hotpot_metric,
    hover_metric,
    normalize_answer,
    token_f1,
)

DATA = Path(__file__).resolve().parent / "data"


# ---------------------------------------------------------------------------- good files


def test_aime_jsonl_and_metric() -> None:
    task = load_task_file(DATA / "aime.jsonl")
    assert task.name == "aime:aime"
    assert (len(task.train), len(task.val), len(task.test)) == (2, 2, 1)
    assert "boxed" in task.seed_artifact()["instruction"]
    ex = Example("a", {"problem": "p"}, "099")
    assert aime_metric(ex, "so the answer is \\boxed{99}").score == 1.0
    wrong = aime_metric(ex, "I think 98.")
    assert wrong.score == 0.0 and "expected 099, got 98" in wrong.feedback
    none = aime_metric(ex, "no idea")
    assert none.score == 0.0 and "found no number" in none.feedback
    assert extract_final_number("first 3 then \\boxed{1,024} and 7") == ("1024", "\\boxed{}")
    assert extract_final_number("x = 12.0") == ("12.0", "the last number")
    assert aime_metric(Example("b", {}, "12"), "12.0").score == 1.0


def test_json_list_file_is_accepted_and_split_is_deterministic() -> None:
    one = load_task_file(DATA / "aime_list.json", seed=1)
    two = load_task_file(DATA / "aime_list.json", seed=1)
    assert [e.id for e in one.train] == [e.id for e in two.train]
    assert len(one.train) + len(one.val) + len(one.test) == 3
    custom = load_task_file(DATA / "aime.jsonl", n_train=3, n_val=1)
    assert (len(custom.train), len(custom.val), len(custom.test)) == (3, 1, 1)


def test_hotpot_context_forms_and_f1() -> None:
    task = load_task_file(DATA / "hotpot.jsonl", n_train=1, n_val=1)
    everything = {e.inputs["question"]: e for e in task.train + task.val + task.test}
    verne = everything["Who wrote the novel that features Captain Nemo?"]
    assert "Jules Verne" in verne.inputs["context"]
    assert "context" not in everything["What color do you get by mixing blue and yellow?"].inputs
    ex = Example("h", {}, "the Nile")
    assert hotpot_metric(ex, "Reasoning...\nAnswer: Nile.").score == 1.0
    partial = hotpot_metric(Example("j", {}, "Jules Verne"), "Answer: Verne")
    assert 0 < partial.score < 1 and "'Jules Verne'" in partial.feedback
    assert normalize_answer("The  Nile!") == "nile"
    assert token_f1("a b c", "x y") == 0.0
    assert extract_answer("line one\nfinal line") == "final line"


def test_hover_labels() -> None:
    task = load_task_file(DATA / "hover.jsonl", n_train=1, n_val=1)
    labels = {e.inputs["claim"]: e.reference for e in task.train + task.val + task.test}
    assert labels["The Moon is larger than the Earth."] == "NOT_SUPPORTED"
    ex = Example("c", {}, "NOT_SUPPORTED")
    assert hover_metric(ex, "It might look supported, but Answer: NOT SUPPORTED").score == 1.0
    wrong = hover_metric(ex, "Answer: SUPPORTED")
    assert wrong.score == 0.0 and "expected NOT_SUPPORTED" in wrong.feedback
    assert hover_metric(ex, "I cannot tell").score == 0.0
    assert extract_label("not_supported") == "NOT_SUPPORTED"


def test_prompt_kind_uses_split_field_and_exact_match() -> None:
    task = load_task_file(DATA / "prompt_split.jsonl")
    assert [e.id for e in task.train] == ["p1", "p4"]
    assert [e.id for e in task.val] == ["p2"] and [e.id for e in task.test] == ["p3"]
    assert task.val[0].inputs == {"prompt": "Capital of Spain?"}
    ex = task.train[1]
    assert exact_metric(ex, "4").score == 1.0
    assert exact_metric(task.train[0], "Let me think.\nAnswer: rome.").score == 1.0
    assert "expected 'Rome'" in exact_metric(task.train[0], "Paris").feedback


def test_kind_can_be_forced_and_options_are_checked() -> None:
    task = load_task_file(
        DATA / "prompt_split.jsonl",
        kind="generic",
        name="caps",
        instruction="Answer tersely.",
        max_tokens=32,
    )
    assert task.name == "caps" and task.max_tokens == 32
    assert task.seed_artifact() == {"instruction": "Answer tersely."}
    with pytest.raises(UserError, match="no option 'bogus'"):
        load_task_file(DATA / "prompt_split.jsonl", bogus=True)


# ---------------------------------------------------------------------------- bad files


def _error(path: Path, **kwargs) -> TaskFileError:
    with pytest.raises(TaskFileError) as info:
        load_task_file(path, **kwargs)
    return info.value


def test_bad_json_on_line_3() -> None:
    err = _error(DATA / "bad_json_line3.jsonl")
    assert err.line == 3
    assert str(err).startswith(f"{DATA / 'bad_json_line3.jsonl'}:3:")
    assert "invalid JSON" in str(err)


def test_missing_field_names_line_and_field() -> None:
    err = _error(DATA / "missing_field.jsonl", kind="hotpotqa")
    assert (err.line, err.field) == (2, "answer")
    assert "missing_field.jsonl:2: field 'answer': is required but missing; add it" in str(err)


def test_wrong_type_names_line_and_field() -> None:
    err = _error(DATA / "wrong_type.jsonl")
    assert (err.line, err.field) == (3, "label")
    assert "got 3" in str(err)


def test_bad_item_in_json_list_reports_its_line() -> None:
    err = _error(DATA / "bad_item.json")
    assert (err.line, err.field) == (3, "answer")


def test_duplicate_ids_unknown_kind_partial_split_and_missing_file() -> None:
    dup = _error(DATA / "duplicate_ids.jsonl")
    assert (dup.line, dup.field) == (3, "id") and "first on line 1" in str(dup)
    unknown = _error(DATA / "unknown_kind.jsonl")
    assert unknown.line == 1 and "pass kind=" in str(unknown)
    assert "unknown kind 'trivia'" in str(_error(DATA / "aime.jsonl", kind="trivia"))
    partial = _error(DATA / "partial_split.jsonl")
    assert (partial.line, partial.field) == (2, "split")
    missing = _error(DATA / "nope.jsonl")
    assert "file not found" in str(missing)


def test_too_few_rows_and_bad_sizes(tmp_path: Path) -> None:
    single = tmp_path / "one.jsonl"
    single.write_text(json.dumps({"input": "a", "answer": "b"}) + "\n")
    assert "at least 2 examples" in str(_error(single))
    assert "do not fit" in str(_error(DATA / "aime.jsonl", n_train=5, n_val=1))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "empty" in str(_error(empty))
    scalar = tmp_path / "scalars.jsonl"
    scalar.write_text("1\n2\n")
    err = _error(scalar)
    assert err.line == 1 and "expected a JSON object" in str(err)


# ---------------------------------------------------------------------------- humaneval


@pytest.fixture(scope="module")
def add_example() -> Example:
    task = load_task_file(DATA / "humaneval.jsonl", n_train=1, n_val=1, seed=0)
    assert isinstance(task, CodeTask)
    return next(e for e in task.train + task.val + task.test if e.id == "toy/0")


def test_humaneval_correct_body_and_full_function(add_example: Example) -> None:
    assert humaneval_metric(add_example, "    return a + b\n", timeout_s=5).score == 1.0
    fenced = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    result = humaneval_metric(add_example, fenced, timeout_s=5)
    assert result.score == 1.0 and result.feedback == "All tests passed."
    # the model forgot to indent the body: still runs
    assert humaneval_metric(add_example, "return a + b", timeout_s=5).score == 1.0


def test_humaneval_wrong_names_the_failing_assertion(add_example: Example) -> None:
    result = humaneval_metric(add_example, "    return a - b\n", timeout_s=5)
    assert result.score == 0.0
    assert "assert candidate(1, 2) == 3" in result.feedback
    assert "AssertionError" in result.feedback and "/tmp" not in result.feedback


def test_humaneval_crash_and_syntax_error(add_example: Example) -> None:
    crash = humaneval_metric(add_example, "    raise RuntimeError('boom')\n", timeout_s=5)
    assert crash.score == 0.0 and "RuntimeError: boom" in crash.feedback
    broken = humaneval_metric(add_example, "    return (a +\n", timeout_s=5)
    assert broken.score == 0.0 and "SyntaxError" in broken.feedback
    exit_code = humaneval_metric(add_example, "    import os; os._exit(3)\n", timeout_s=5)
    assert exit_code.score == 0.0 and "exit code 3" in exit_code.feedback


def test_humaneval_hang_is_killed(add_example: Example) -> None:
    start = time.monotonic()  # measures the kill, does not wait on the clock
    result = humaneval_metric(add_example, "    while True:\n        pass\n", timeout_s=1.0)
    assert result.score == 0.0 and "did not finish within 1 s" in result.feedback
    assert time.monotonic() - start < 10


def test_humaneval_network_is_blocked(add_example: Example) -> None:
    """A program that connects to a real listener on the host's 127.0.0.1 fails and scores 0;
    the listener never sees a connection (the sandbox has its own network namespace and/or
    Landlock; tests/test_sandbox_attacks.py covers the rest)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        code = f"    import socket\n    socket.create_connection(('127.0.0.1', {port}))\n"
        result = humaneval_metric(add_example, code, timeout_s=5)
        assert result.score == 0.0 and "Error" in result.feedback
        with pytest.raises(BlockingIOError):
            server.accept()


def test_build_program_keeps_stub_imports() -> None:
    program = build_program(
        "from typing import List\n\ndef f(x: List[int]):\n    '''doc'''\n",
        "```python\ndef f(x):\n    return 1\n```",
        "def check(c): pass",
        "f",
    )
    assert program.index("from typing import List") < program.index("return 1")
    assert program.rstrip().endswith("check(f)")


# ---------------------------------------------------------------------------- end to end


class _ChatServer:
    """A real OpenAI-compatible endpoint on 127.0.0.1 that answers with a fixed text."""

    def __init__(self, reply: str) -> None:
        self.reply = reply

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": self.reply},
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            }
        )


async def _rollout_against(reply: str, task: PromptTask, example: Example) -> object:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _ChatServer(reply).handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    llm = OpenAICompatLLM(f"http://127.0.0.1:{port}/v1", "toy", api_key="test", max_retries=0)
    try:
        return await task.rollout(task.seed_artifact(), example, llm, stage="rollout", item_id="r1")
    finally:
        await llm.aclose()
        await runner.cleanup()


def test_code_task_rollout_runs_tests_off_the_event_loop(add_example: Example) -> None:
    task = load_task_file(DATA / "humaneval.jsonl", n_train=1, n_val=1, seed=0)
    reply = "```python\ndef add(a, b):\n    return a + b\n```"
    rollout = asyncio.run(_rollout_against(reply, task, add_example))
    assert rollout.score == 1.0 and rollout.feedback == "All tests passed."
    assert rollout.completion_tokens == 7 and rollout.error is None
