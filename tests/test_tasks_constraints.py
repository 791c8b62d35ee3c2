"""Every ifeval-lite constraint checker on a passing and a failing answer; the dataset file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from flashevolve.errors import TaskFileError, UserError
from flashevolve.tasks import Example, PromptTask, get_task
from flashevolve.tasks.constraints import (
    CONSTRAINT_TYPES,
    evaluate,
    parse_constraints,
    split_sentences,
)
from flashevolve.tasks.ifeval_lite import constraint_metric, dataset_path, load_rows

ROOT = Path(__file__).resolve().parent.parent

# (constraint, passing answer, failing answer, a word the failing feedback must contain)
CASES = [
    ({"type": "lowercase"}, "the moon is bright.", "The moon is bright.", "'The'"),
    ({"type": "uppercase"}, "THE MOON IS BRIGHT.", "THE MOON is BRIGHT.", "'is'"),
    (
        {"type": "include_keywords", "keywords": ["moon", "night"]},
        "The Moon shines at night.",
        "The moon shines.",
        "night",
    ),
    ({"type": "forbidden_words", "words": ["sky"]}, "It is blue.", "The sky is blue.", "sky"),
    ({"type": "word_count", "max": 5}, "one two three", "one two three four five six", "6"),
    ({"type": "word_count", "min": 3, "max": 4}, "one two three", "one two", "2"),
    ({"type": "bullet_count", "n": 2}, "- apple\n* pear", "- apple\n- pear\n- fig", "3"),
    ({"type": "paragraph_count", "n": 2}, "First.\n\nSecond.", "Only one paragraph.", "1"),
    (
        {"type": "end_with", "phrase": "Hope this helps."},
        "Rain is water. Hope this helps.\n",
        "Hope this helps. Bye.",
        "Bye",
    ),
    (
        {"type": "start_with", "phrase": "My suggestion is"},
        "  My suggestion is Bubbles.",
        "I suggest Bubbles.",
        "I suggest",
    ),
    ({"type": "quoted"}, '"Hello neighbor!"', "Hello neighbor!", "'H'"),
    ({"type": "title"}, "<<Autumn>>\nleaves fall", "Autumn\nleaves fall", "<<title>>"),
    ({"type": "json"}, '```json\n{"name": "Ada", "age": 36}\n```', "name: Ada", "line 1"),
    ({"type": "no_commas"}, "Batteries store energy.", "Batteries store energy, and more.", "1"),
    ({"type": "max_sentences", "n": 2}, "One. Two!", "One. Two. Three?", "3"),
    (
        {"type": "placeholders", "min": 2},
        "Dear [name], see you at [place].",
        "Dear [name].",
        "found 1",
    ),
    (
        {"type": "repeat_request", "text": "What is a rainbow?"},
        "What is a rainbow? A rainbow is light.",
        "A rainbow is light.",
        "What is a rainbow?",
    ),
    ({"type": "keyword_frequency", "word": "sun", "min": 2}, "Sun, sun, sun!", "The sun.", "1"),
    (
        {"type": "postscript", "marker": "P.S."},
        "Good luck.\nP.S. Sleep well.",
        "Good luck.",
        "P.S.",
    ),
]


def test_every_constraint_type_has_a_case() -> None:
    assert {c["type"] for c, *_ in CASES} == set(CONSTRAINT_TYPES)


@pytest.mark.parametrize(
    ("raw", "good", "bad", "seen"),
    CASES,
    ids=[f"{c['type']}-{i}" for i, (c, *_) in enumerate(CASES)],
)
def test_checker_pass_and_fail(raw: dict, good: str, bad: str, seen: str) -> None:
    (constraint,) = parse_constraints([raw])
    ok = constraint.check(good)
    assert ok.passed, ok.feedback
    fail = constraint.check(bad)
    assert not fail.passed
    assert fail.feedback.startswith("Expected"), fail.feedback  # says what was expected...
    assert seen in fail.feedback  # ...and what was seen
    assert "\n" not in fail.feedback and "\n" not in ok.feedback  # one sentence, one line
    assert constraint.instruction()  # every type can phrase itself for a prompt


def test_empty_answer_fails_casing() -> None:
    for kind in ("lowercase", "uppercase"):
        (constraint,) = parse_constraints([{"type": kind}])
        assert not constraint.check("   ").passed


def test_sentences_split_on_bullets_and_punctuation() -> None:
    assert split_sentences("- one thing\n- two things. Three!") == [
        "one thing",
        "two things.",
        "Three!",
    ]


def test_evaluate_gives_partial_credit_and_one_line_per_constraint() -> None:
    constraints = parse_constraints(
        [{"type": "lowercase"}, {"type": "no_commas"}, {"type": "word_count", "max": 3}]
    )
    verdict = evaluate(constraints, "hello, world")
    assert verdict.score == pytest.approx(2 / 3)
    lines = verdict.feedback.splitlines()
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL", "PASS"]
    assert lines[1].startswith("FAIL no_commas:")


def test_bad_constraint_params_are_rejected() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        parse_constraints([{"type": "word_count"}])  # neither min nor max
    with pytest.raises(ValidationError):
        parse_constraints([{"type": "no_such_type"}])
    with pytest.raises(ValidationError):
        parse_constraints([{"type": "bullet_count", "n": 0}])


# ---------------------------------------------------------------------------- the dataset


def test_dataset_file_is_valid() -> None:
    rows = load_rows(ROOT / "datasets" / "ifeval_lite.jsonl")
    assert 90 <= len(rows) <= 120
    assert len({r.id for r in rows}) == len(rows)
    splits = Counter(r.split for r in rows)
    assert splits == {"train": 30, "val": 30, "test": len(rows) - 60}
    for split in ("train", "val", "test"):  # every type is exercised in every split
        kinds = {c.type for r in rows if r.split == split for c in r.constraints}
        assert kinds == set(CONSTRAINT_TYPES), split
    for row in rows:  # the prompt states each constraint (the build script guarantees it)
        for constraint in row.constraints:
            assert constraint.instruction() in row.prompt, row.id


def test_packaged_copy_matches_canonical_file() -> None:
    canonical = (ROOT / "datasets" / "ifeval_lite.jsonl").read_bytes()
    packaged = (ROOT / "flashevolve" / "data" / "ifeval_lite.jsonl").read_bytes()
    assert packaged == canonical, "run: python datasets/build_ifeval_lite.py"
    assert dataset_path().read_bytes() == canonical


def test_get_task_ifeval_lite_defaults_and_subsampling() -> None:
    task = get_task("ifeval-lite")
    assert isinstance(task, PromptTask)
    assert (len(task.train), len(task.val)) == (30, 30) and len(task.test) > 20
    assert task.seed_artifact() == {"instruction": "You are a helpful assistant."}
    assert task.max_tokens == 200 and task.temperature == 0.0
    small = get_task("ifeval-lite", n_train=5, n_val=4, seed=3)
    again = get_task("ifeval-lite", n_train=5, n_val=4, seed=3)
    assert [e.id for e in small.train] == [e.id for e in again.train]
    assert (len(small.train), len(small.val)) == (5, 4)
    with pytest.raises(UserError, match="n_train=99"):
        get_task("ifeval-lite", n_train=99)


def test_metric_on_a_dataset_example() -> None:
    task = get_task("ifeval-lite")
    example = next(e for e in task.train if "lowercase" in e.meta["constraint_types"])
    result = task.metric(example, "THIS IS SHOUTING")
    assert result.score < 1.0
    assert "FAIL lowercase" in result.feedback


def test_bad_dataset_line_is_reported(tmp_path: Path) -> None:
    good = {"id": "a", "prompt": "p", "constraints": [{"type": "lowercase"}], "split": "train"}
    bad = {"id": "b", "prompt": "p", "constraints": [{"type": "bullet_count"}], "split": "val"}
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TaskFileError) as info:
        load_rows(path)
    assert info.value.line == 2 and "constraints.0.bullet_count.n" in str(info.value)


def test_constraint_metric_on_direct_example() -> None:
    example = Example("x", {"prompt": "p"}, tuple(parse_constraints([{"type": "quoted"}])))
    assert constraint_metric(example, '"yes"').score == 1.0
