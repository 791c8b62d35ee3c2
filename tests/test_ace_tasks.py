"""formula-lite and the loaders of the ACE paper's data files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from flashevolve import Evolver
from flashevolve.errors import TaskFileError, UserError
from flashevolve.events.schema import Kind
from flashevolve.tasks import get_task
from flashevolve.tasks.ace_data import load_ace_file, load_ace_task, read_ace_examples
from flashevolve.tasks.formula_lite import KINDS, formula_lite, last_number
from flashevolve.workflows.ace.sim import ace_simulated

DATA = Path(__file__).parent / "data"


# -- formula-lite -------------------------------------------------------------------------------


def test_formula_lite_is_seeded_split_and_covers_every_kind():
    a, b = formula_lite(seed=3), get_task("formula-lite", seed=3)
    assert [e.inputs for e in a.val] == [e.inputs for e in b.val]
    assert [e.inputs for e in formula_lite(seed=4).val] != [e.inputs for e in a.val]
    ids = [e.id for split in (a.train, a.val, a.test) for e in split]
    assert len(ids) == len(set(ids)) == 64 + 48 + 64
    assert set(Counter(e.reference["kind"] for e in a.val)) == {k.name for k in KINDS}
    with pytest.raises(UserError, match="n_trian"):
        get_task("formula-lite", n_trian=3)


@pytest.mark.parametrize("kind", [k.name for k in KINDS])
def test_the_expected_answer_follows_the_house_convention(kind):
    task = formula_lite(n_train=64, n_val=1, n_test=0, seed=1)
    example = next(e for e in task.train if e.reference["kind"] == kind)
    expected = example.reference["answer"]
    unit = example.reference["unit"]
    assert unit == ("percent" if kind in {"gross_margin", "operating_margin", "net_margin",
                    "roe", "roa", "revenue_growth", "cagr", "payout_ratio"} else
                    "dollars" if kind == "eps" else "times")  # fmt: skip
    if unit == "percent":
        assert 0.5 < abs(expected) < 200  # a percentage, never a fraction
    right = task.metric(example, f"Work...\n{expected:.2f}")
    assert right.score == 1.0 and "Correct" in right.feedback


def test_feedback_says_what_was_expected_and_what_was_seen():
    task = formula_lite(seed=0)
    margin = next(e for e in task.train if e.reference["kind"] == "net_margin")
    expected = margin.reference["answer"]
    fraction = task.metric(margin, f"The margin is {expected / 100:.4f}")
    assert fraction.score == 0.0 and f"expected {expected:.2f}" in fraction.feedback
    assert "percentage, not a fraction" in fraction.feedback
    assert "No number" in task.metric(margin, "I cannot tell.").feedback
    tol = max(0.01, 0.01 * abs(expected))
    assert task.metric(margin, f"{expected + 0.9 * tol}").score == 1.0
    assert task.metric(margin, f"{expected + 1.1 * tol}").score == 0.0
    assert last_number("EPS: $1,234.50 (up 3%)") == 3.0 and last_number("$1,234.50") == 1234.5


def test_gepa_runs_on_formula_lite_with_its_plain_instruction():
    """The task keeps a GEPA-style instruction and render (system = instruction)."""
    task = formula_lite(n_train=4, n_val=3, n_test=0)
    messages = task.messages(task.seed_artifact(), task.train[0])
    assert messages[0]["content"].startswith("Answer the financial question")
    assert messages[1]["content"] == task.train[0].inputs["question"]


def test_ace_runs_on_formula_lite_on_the_simulator():
    ev = Evolver(
        formula_lite(n_train=8, n_val=4, n_test=0),
        ace_simulated(seed=0),
        workflow="ace",
        mode="sync",
        budget={"proposals": 2},
    )
    summary = ev.run_virtual()
    assert summary["proposals"] == 2 and summary["errors"] == 0
    rollouts = [e for e in ev.event_list() if e.kind == Kind.ROLLOUT_FINISHED]
    # the simulator's generator answers "ANSWER: ..." (it knows no finance); the task's own
    # metric scores those answers, and the run goes on
    assert rollouts and {e.score for e in rollouts} <= {0.0, 1.0}


# -- ACE data files -----------------------------------------------------------------------------


def test_formula_files_keep_the_question_and_score_numbers_at_two_decimals():
    examples = read_ace_examples(DATA / "ace_formula_small.jsonl", "formula")
    assert [e.id for e in examples] == [
        "ace_formula_small-1", "ace_formula_small-2", "payback-1", "ace_formula_small-4"
    ]  # fmt: skip
    q = examples[0].inputs["question"]
    assert q.startswith("A bakery has current assets") and "Formula" not in q
    assert q.endswith("(write 5 million as 5000000.0).")
    assert (
        examples[2].inputs["question"].startswith("A press costing")
        and examples[2].reference == "3"
    )
    assert examples[3].inputs["question"].startswith("Compute the interest")  # no "Question:"
    task = load_ace_task("formula", train=DATA / "ace_formula_small.jsonl",
                         val=DATA / "ace_formula_small.jsonl")  # fmt: skip
    ex = task.train[0]
    assert task.metric(ex, "1.50").score == 1.0 and task.metric(ex, "1.504").score == 1.0
    assert task.metric(ex, "1.51").score == 0.0
    assert "expected 1.5, got 1.51" in task.metric(ex, "1.51").feedback


def test_finer_files_score_tags_by_position():
    task = load_ace_file(DATA / "ace_finer_small.jsonl", "finer", n_train=2, n_val=1)
    two = next(e for e in task.train + task.val if "," in e.reference)
    assert task.metric(two, "revenues , InterestExpense").score == 1.0
    half = task.metric(two, "Revenues,Goodwill")
    assert half.score == 0.5 and "position 2: expected 'InterestExpense', got 'Goodwill'" in (
        half.feedback
    )
    assert task.metric(two, "Revenues").score == 0.5  # a short answer is padded, not an error


def test_malformed_ace_files_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "q", "target": "1"}) + "\n" + json.dumps({"target": 2}))
    with pytest.raises(TaskFileError) as err:
        read_ace_examples(bad, "formula")
    assert f"{bad}:2" in str(err.value) and "'context'" in str(err.value)
    bad.write_text('{"context": "q", "target": ""}\n')
    with pytest.raises(TaskFileError, match=r":1: field 'target'"):
        read_ace_examples(bad, "finer")
    bad.write_text('{"context": "q", "target": "1"}\n{"context": "q", "target": "1"\n')
    with pytest.raises(TaskFileError, match=r"bad.jsonl:2"):
        read_ace_examples(bad, "finer")
    with pytest.raises(TaskFileError, match="'finer' or 'formula'"):
        read_ace_examples(bad, "ner")
    with pytest.raises(TaskFileError, match="do not fit"):
        load_ace_file(DATA / "ace_finer_small.jsonl", "finer", n_train=3, n_val=1)
