"""Fuzzing the boundaries users type into: task files and command-line options.

Whatever the bytes or the argv, the answer is a task, a parsed namespace, or one clear
``UserError`` (argparse's own usage error exits 2) -- never another exception.  Cases that
hypothesis once found are kept as explicit examples (``@example``) so they stay fixed.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flashevolve.cli import build_parser
from flashevolve.errors import UserError
from flashevolve.tasks import load_task_file

KINDS = [None, "aime", "hotpotqa", "hover", "humaneval", "prompt", "nonsense"]
FIELDS = [
    "problem", "answer", "question", "context", "claim", "label", "prompt", "test",
    "entry_point", "canonical_solution", "task_id", "input", "output", "split", "id", "supporting",
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
rows = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


def _load(text: str, suffix: str, kind: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"task{suffix}"
        path.write_text(text, encoding="utf-8")
        # a task, or one clear error naming the file (and line): the promise
        with contextlib.suppress(UserError):
            load_task_file(path, kind=kind)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(rows, min_size=0, max_size=6),
    st.sampled_from(KINDS),
    st.sampled_from([".jsonl", ".json"]),
)
@example([{"split": 3, "problem": "x", "answer": 1}], None, ".jsonl")
@example(
    [{"question": "q", "answer": ["a"]}, {"question": "q2", "answer": None}], "hotpotqa", ".jsonl"
)
@example([{"prompt": "p", "test": "t", "entry_point": 7}], "humaneval", ".json")
def test_task_files_of_any_shape_load_or_fail_clearly(records, kind, suffix) -> None:
    text = json.dumps(records) if suffix == ".json" else "\n".join(map(json.dumps, records))
    _load(text, suffix, kind)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.sampled_from(KINDS))
@example('{"problem": "1+1", "answer": 2}\n{"problem": ', None)  # a torn last line
@example("\ufeff[1, 2]", None)  # a byte-order mark and a list of non-objects
@example("[]", "prompt")
def test_arbitrary_text_as_a_task_file_fails_clearly(text, kind) -> None:
    _load(text, ".jsonl", kind)


OPTIONS = {
    "run": ["--task", "--mode", "--minutes", "--workers", "--max-in-flight", "--seed",
            "--backend", "--staleness", "--n-train", "--n-val", "--speculate-validation",
            "--minibatch-size", "--concurrency", "--slots"],
    "bench": ["--profile", "--minutes", "--configs", "--seeds", "--json"],
    "serve-sim": ["--profile", "--port", "--speed", "--seed", "--latency-mean"],
}  # fmt: skip
values = st.sampled_from(
    ["0", "-1", "3", "1.5", "nan", "inf", "", "x", "rollout=2", "rollout=0", "evaluate=a",
     "sync,async", "sim", "sim:nope", "guarded", "2,3", "1e309", "propose=3,gate=-2"]
)  # fmt: skip


def _validate(command: str, args) -> None:  # noqa: ANN001
    """The checks each command makes before doing any work (no server, no run)."""
    from flashevolve.commands import common, policy_options

    if command == "run":
        policy_options.check_policy_arguments(args)
        if args.workers:
            common.parse_workers(args.workers)
    elif command == "serve-sim":
        from flashevolve.backends.sim.profiles import get_profile

        get_profile(args.profile)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(OPTIONS)), st.data())
def test_command_lines_parse_or_fail_clearly(command, data) -> None:
    argv = [command]
    for _ in range(data.draw(st.integers(0, 4))):
        argv += [data.draw(st.sampled_from(OPTIONS[command])), data.draw(values)]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 2  # argparse's usage error: one line on stderr
        return
    with contextlib.suppress(UserError):
        _validate(command, args)


def test_a_wrong_kind_names_the_choices(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"problem": "1+1", "answer": 2}\n{"problem": "2+2", "answer": 4}\n')
    with pytest.raises(UserError, match="aime"):
        load_task_file(path, kind="nonsense")
