"""Loaders for the ACE paper's finance data files (FiNER and Formula), for users who have them.

The official ACE repository ships JSON-lines files, one object per line with two fields:

- ``context`` (string): the whole prompt.  *Formula*: an instruction naming the formula, the
  formula and its terms, then ``Question: "<question>". Answer:``.  *FiNER*: an instruction, the
  list of allowed US GAAP tags, numbered questions "What is best tag for entity "X" in sentence:
  ..." and ``Output US GAAP tags:``.
- ``target`` (string, a number is accepted): *Formula*: the numeric answer ("15.0");
  *FiNER*: the tags, comma-separated, one per numbered question, in order.

An optional ``id`` (string or integer) names the example; otherwise it is ``<file stem>-<line>``.
Other fields are ignored.  Each official file is one split (train/val/test): use
:func:`load_ace_task` with the three paths, or :func:`load_ace_file` to split one file with a
seeded shuffle.  A malformed file raises :class:`~flashevolve.errors.TaskFileError` naming the
file, the line, the field and the fix.

Processing follows the official data processor: a Formula question is the text between
``Question:`` and ``. Answer:`` (the instruction and the formula are dropped, as the official code
does, so the formulas are what a playbook learns), followed by a sentence asking for a plain
number; a FiNER question is the whole context.  Scoring: Formula answers are numbers equal to the
target at two decimals (|answer - target| <= 0.005); FiNER answers score the fraction of positions
whose tag matches (case and surrounding spaces ignored), with feedback naming each wrong position.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flashevolve.errors import TaskFileError
from flashevolve.tasks.base import Example, MetricResult, PromptTask
from flashevolve.tasks.formula_lite import last_number
from flashevolve.tasks.loaders import pydantic_problem, read_records

AceKind = Literal["finer", "formula"]

FORMULA_FORMAT = (
    " Give a plain number rounded to two decimals, with no units or thousands separators "
    "(write 5 million as 5000000.0)."
)
SEEDS = {
    "formula": "Answer with a plain number rounded to two decimals and nothing else.",
    "finer": (
        "For each numbered entity, answer with its best US GAAP tag from the list, in order, "
        "separated by commas, and nothing else."
    ),
}
DESCRIPTIONS = {
    "formula": "Financial formula questions (ACE paper's Formula benchmark); the answer is a "
    "number that must equal the target at two decimals.",
    "finer": "Financial numeric entity recognition (ACE paper's FiNER benchmark): tag each "
    "numbered entity with a US GAAP tag; scored by the fraction of tags in the right position.",
}


class AceRow(BaseModel):
    model_config = ConfigDict(extra="ignore")
    context: str = Field(min_length=1)
    target: str | int | float
    id: str | int | None = None

    @field_validator("target")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("target is empty; give the expected answer")
        return value


_QUESTION_RE = re.compile(r"Question:\s*(.*?)\.?\s*Answer:\s*$", re.DOTALL)


def formula_question(context: str) -> str:
    found = _QUESTION_RE.search(context)
    if not found:
        return context.strip()
    question = found.group(1).strip().strip('"“”').strip()
    return question + FORMULA_FORMAT


def formula_score(example: Example, output: str) -> MetricResult:
    target = str(example.reference)
    got = last_number(output)
    try:
        expected = float(target.replace(",", ""))
    except ValueError:
        ok = output.strip() == target.strip()
        return MetricResult(float(ok), "Correct." if ok else f"Wrong: expected {target!r}.")
    if got is None:
        return MetricResult(0.0, f"No number found in the answer; expected {expected:g}.")
    if abs(got - expected) <= 0.005 + 1e-9:
        return MetricResult(1.0, f"Correct: {got:g}.")
    return MetricResult(0.0, f"Wrong: expected {expected:g}, got {got:g}.")


def finer_score(example: Example, output: str) -> MetricResult:
    labels = [t.strip() for t in str(example.reference).split(",")]
    preds = [t.strip() for t in (output or "").split(",")]
    preds = (preds + [""] * len(labels))[: len(labels)]  # the official padding and truncation
    wrong = [
        f"position {i + 1}: expected {label!r}, got {pred or '(nothing)'!r}"
        for i, (label, pred) in enumerate(zip(labels, preds, strict=True))
        if label.lower() != pred.lower()
    ]
    score = (len(labels) - len(wrong)) / len(labels) if labels else 0.0
    if not wrong:
        return MetricResult(score, "Correct: every tag matches.")
    return MetricResult(score, f"{len(wrong)} of {len(labels)} tags wrong: " + "; ".join(wrong))


def read_ace_examples(path: str | Path, kind: AceKind) -> list[Example]:
    """The examples of one ACE data file (file:line errors for anything malformed)."""
    if kind not in ("finer", "formula"):
        raise TaskFileError(str(path), None, "kind", f"must be 'finer' or 'formula', not {kind!r}")
    where = str(path)
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for line, raw in read_records(path):
        try:
            row = AceRow.model_validate(raw)
        except ValidationError as err:
            field, problem = pydantic_problem(err)
            raise TaskFileError(where, line, field, problem) from None
        ex_id = str(row.id) if row.id is not None else f"{Path(where).stem}-{line}"
        if ex_id in seen:
            raise TaskFileError(
                where, line, "id", f"duplicate id {ex_id!r} (first on line {seen[ex_id]})"
            )
        seen[ex_id] = line
        question = formula_question(row.context) if kind == "formula" else row.context
        target = str(row.target)
        examples.append(Example(ex_id, {"question": question}, target, {"line": line}))
    return examples


def _task(
    kind: AceKind,
    name: str,
    train: list[Example],
    val: list[Example],
    test: list[Example],
    max_tokens: int | None,
) -> PromptTask:
    return PromptTask(
        name,
        train=train,
        val=val,
        test=test,
        seed={"instruction": SEEDS[kind]},
        metric=formula_score if kind == "formula" else finer_score,
        description=DESCRIPTIONS[kind],
        max_tokens=max_tokens,
        temperature=0.0,
    )


def load_ace_task(
    kind: AceKind,
    *,
    train: str | Path,
    val: str | Path,
    test: str | Path | None = None,
    name: str | None = None,
    max_tokens: int | None = 1024,
) -> PromptTask:
    """A task from the official split files (e.g. ``formula_train_subset_500.jsonl``, ...)."""
    return _task(
        kind,
        name or f"ace-{kind}",
        read_ace_examples(train, kind),
        read_ace_examples(val, kind),
        read_ace_examples(test, kind) if test is not None else [],
        max_tokens,
    )


def load_ace_file(
    path: str | Path,
    kind: AceKind,
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    name: str | None = None,
    max_tokens: int | None = 1024,
) -> PromptTask:
    """A task from one ACE data file, split by a seeded shuffle (default 40% train, 30% val,
    the rest test)."""
    examples = read_ace_examples(path, kind)
    if len(examples) < 2:
        raise TaskFileError(str(path), None, None, "a task needs at least 2 examples; add rows")
    random.Random(seed).shuffle(examples)
    k_train = n_train if n_train is not None else max(1, round(0.4 * len(examples)))
    k_val = n_val if n_val is not None else max(1, round(0.3 * len(examples)))
    if k_train < 1 or k_val < 1 or k_train + k_val > len(examples):
        raise TaskFileError(
            str(path), None, None,
            f"n_train={k_train} and n_val={k_val} do not fit {len(examples)} examples; lower them",
        )  # fmt: skip
    return _task(
        kind,
        name or f"ace-{kind}:{Path(path).stem}",
        examples[:k_train],
        examples[k_train : k_train + k_val],
        examples[k_train + k_val :],
        max_tokens,
    )
