"""The ``intent-lite`` harness task: its data (rebuilt byte for byte by its seeded script), its
splits, the scoring and feedback, and bad input."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from flashevolve.errors import TaskFileError, UserError
from flashevolve.tasks import get_task
from flashevolve.tasks.intent_lite import dataset_path, normalize_label
from flashevolve.workflows.meta_harness import HarnessTask

ROOT = Path(__file__).resolve().parents[1]


def test_the_data_file_is_what_the_seeded_script_builds() -> None:
    spec = importlib.util.spec_from_file_location(
        "build_intent_lite", ROOT / "datasets" / "build_intent_lite.py"
    )
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    expected = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in builder.build())
    canonical = (ROOT / "datasets" / "intent_lite.jsonl").read_text(encoding="utf-8")
    assert canonical == expected
    assert dataset_path().read_text(encoding="utf-8") == canonical  # the packaged copy


def test_splits_labels_and_memory() -> None:
    task = get_task("intent-lite")
    assert isinstance(task, HarnessTask)
    assert (len(task.train), len(task.val), len(task.test)) == (160, 48, 96)
    assert len(task.labels) == 16
    for split in (task.train, task.val, task.test):
        per_label = Counter(ex.reference for ex in split)
        assert set(per_label) == set(task.labels) and len(set(per_label.values())) == 1
    texts = [ex.inputs["text"].lower() for ex in [*task.train, *task.val, *task.test]]
    assert len(set(texts)) == len(texts)
    memory = task.memory()
    assert memory["labels"] == task.labels and len(memory["examples"]) == 160
    assert set(memory["examples"][0]) == {"text", "label"}
    assert "def predict(text)" in task.seed_artifact()["harness.py"]
    small = get_task("intent-lite", n_train=20, n_val=5, seed=1)
    assert (len(small.train), len(small.val)) == (20, 5)


def test_scoring_accepts_label_spellings_and_explains_mistakes() -> None:
    task = get_task("intent-lite", n_val=3)
    example = task.val[0]
    gold = example.reference
    assert task.score(example, gold).score == 1.0
    assert task.score(example, {"label": gold.replace("_", " ").title()}).score == 1.0
    assert task.score(example, f"`{gold}`.").score == 1.0
    other = next(label for label in task.labels if label != gold)
    wrong = task.score(example, other)
    assert wrong.score == 0 and f"predicted {other}, expected {gold}" in wrong.feedback
    assert "not one of the intents" in task.score(example, "banana").feedback
    assert "returned no intent" in task.score(example, None).feedback
    assert normalize_label({"label": " Set-Timer "}) == "set_timer"


def test_bad_options_and_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="n_val=500 is out of range"):
        get_task("intent-lite", n_val=500)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "hi", "label": "Not A Label", "split": "train"}\n')
    with pytest.raises(TaskFileError, match="label"):
        get_task("intent-lite", path=bad)
