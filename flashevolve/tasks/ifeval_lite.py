"""The built-in ``ifeval-lite`` task: short requests with verifiable formatting constraints.

The data is the project's own (``datasets/ifeval_lite.jsonl``, built by
``datasets/build_ifeval_lite.py``); a byte-identical copy ships inside the package as
``flashevolve/data/ifeval_lite.jsonl`` so a regular wheel install finds it through
``importlib.resources`` and an editable install finds the same file in the source tree.
The artifact is one system prompt; the score of an example is the fraction of its
constraints met (partial credit gives evolution a gradient on a tiny model).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flashevolve.errors import TaskFileError, UserError
from flashevolve.tasks.base import Example, MetricResult, PromptTask
from flashevolve.tasks.constraints import Constraint, evaluate
from flashevolve.tasks.loaders import pydantic_problem, read_records

DATA_FILE = "ifeval_lite.jsonl"
SEED_INSTRUCTION = "You are a helpful assistant."
DESCRIPTION = (
    "Each example is a short user request followed by explicit, mechanically checked "
    "formatting constraints (lowercase or all caps, word and sentence limits, exact bullet or "
    "paragraph counts, a required ending or opening phrase, quotes, a <<title>>, JSON, no "
    "commas, placeholders in [brackets], repeating the request). The artifact is the system "
    "prompt of a small chat model. The score is the fraction of an example's constraints the "
    "answer satisfies; the feedback has one PASS/FAIL line per constraint saying what was "
    "expected and what was seen."
)


class IfevalLiteRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    constraints: list[Constraint] = Field(min_length=1)
    split: Literal["train", "val", "test"]


def dataset_path() -> Path:
    """The packaged copy; falls back to the repository's ``datasets/`` in a bare checkout."""
    packaged = resources.files("flashevolve").joinpath("data", DATA_FILE)
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "datasets" / DATA_FILE
    if checkout.is_file():
        return checkout
    raise UserError(
        f"the ifeval-lite data file {DATA_FILE} is missing from the installed package; "
        "reinstall flashevolve (pip install --force-reinstall flashevolve)"
    )


def load_rows(path: str | Path | None = None) -> list[IfevalLiteRow]:
    """Read and validate the dataset; every problem names file, line and field."""
    source = Path(path) if path is not None else dataset_path()
    rows: list[IfevalLiteRow] = []
    seen: dict[str, int] = {}
    for line, raw in read_records(source):
        try:
            row = IfevalLiteRow.model_validate(raw)
        except ValidationError as err:
            field, problem = pydantic_problem(err)
            raise TaskFileError(str(source), line, field, problem) from None
        if row.id in seen:
            raise TaskFileError(
                str(source),
                line,
                "id",
                f"duplicate id {row.id!r} (first used on line {seen[row.id]}); "
                "give every item a unique id",
            )
        seen[row.id] = line
        rows.append(row)
    return rows


def to_example(row: IfevalLiteRow) -> Example:
    return Example(
        id=row.id,
        inputs={"prompt": row.prompt},
        reference=tuple(row.constraints),
        meta={"split": row.split, "constraint_types": [c.type for c in row.constraints]},
    )


def constraint_metric(example: Example, output: str) -> MetricResult:
    verdict = evaluate(example.reference, output)
    return MetricResult(
        score=verdict.score,
        feedback=verdict.feedback,
        details={"passed": {kind: check.passed for kind, check in verdict.checks}},
    )


def _subsample(
    items: Sequence[Example], n: int | None, rng: random.Random, option: str
) -> list[Example]:
    if n is None:
        return list(items)
    if n < 1 or n > len(items):
        raise UserError(
            f"ifeval-lite option {option}={n} is out of range; "
            f"choose 1..{len(items)} or None for all"
        )
    return sorted(rng.sample(list(items), n), key=lambda e: e.id)


def ifeval_lite(
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    max_tokens: int = 200,
    temperature: float = 0.0,
    instruction: str = SEED_INSTRUCTION,
    path: str | Path | None = None,
) -> PromptTask:
    """Build the task; ``n_*`` subsample a split (seeded), ``path`` swaps in another file."""
    examples = [to_example(row) for row in load_rows(path)]
    by_split: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for ex in examples:
        by_split[ex.meta["split"]].append(ex)
    rng = random.Random(seed)
    return PromptTask(
        "ifeval-lite",
        train=_subsample(by_split["train"], n_train, rng, "n_train"),
        val=_subsample(by_split["val"], n_val, rng, "n_val"),
        test=_subsample(by_split["test"], n_test, rng, "n_test") if by_split["test"] else [],
        seed={"instruction": instruction},
        metric=constraint_metric,
        description=DESCRIPTION,
        max_tokens=max_tokens,
        temperature=temperature,
    )
