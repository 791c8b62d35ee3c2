"""The built-in ``intent-lite`` task: classify requests to a home assistant, with a harness.

The data is the project's own (``datasets/intent_lite.jsonl``, built by
``datasets/build_intent_lite.py`` with a fixed seed; a byte-identical copy ships as
``flashevolve/data/intent_lite.jsonl``): sixteen intents with confusable pairs and house
conventions, 10 train / 3 val / 6 test utterances per intent.

The artifact is a *harness* (Meta-Harness): a Python module with ``setup(memory)`` -- given the
labelled training examples once -- and ``predict(text)``, which may call the model through
``fe_llm.complete`` and returns an intent.  It runs in :mod:`flashevolve.sandbox`.  The seed
harness works zero-shot (it ignores the memory); retrieving similar examples, writing label
descriptions or voting are the proposer's to discover.  The score is accuracy (1 or 0 per
example) with feedback naming the predicted and the expected intent.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flashevolve.backends.base import LLM
from flashevolve.errors import TaskFileError, UserError
from flashevolve.tasks.base import Example, MetricResult, Rollout
from flashevolve.tasks.loaders import pydantic_problem, read_records
from flashevolve.workflows.meta_harness.harness import HarnessSpec

DATA_FILE = "intent_lite.jsonl"

DESCRIPTION = (
    "Each example is one short request a user said to a home assistant (alarms, timers, "
    "weather, music, lights, shopping list, reminders, calendar, messages, calls). The harness "
    "must return exactly one of 16 intent names. Several intents are easy to confuse (an alarm "
    "at a clock time vs a timer for a duration, weather now vs a forecast, adding vs removing "
    "a shopping item, a reminder vs a calendar entry, a message vs a call) and the house has "
    "conventions that only the labelled examples show. The harness gets those labelled "
    "training examples once, as its memory, and decides how to use them. The score is "
    "accuracy on the validation requests."
)

INTERFACE = """\
A harness is one Python file, `harness.py`, run in a sandbox (no network, no files outside its
scratch directory, the standard library only). It must define two functions:

    def setup(memory: dict) -> None
        Called once, before any prediction. memory = {
            "labels": [the 16 intent names, sorted],
            "examples": [{"text": "<a request>", "label": "<its intent>"}, ...]  # training set
        }
        Keep what you need in module-level variables.

    def predict(text: str) -> str | dict
        Called once per request. Return the intent name, or a dict {"label": <intent name>,
        ...anything else you want kept as a trace}.

The model is reachable only through the module `fe_llm` (import fe_llm):

    fe_llm.complete(messages, max_tokens=None, temperature=None) -> str
        messages: a list of {"role": "system"|"user"|"assistant", "content": str}, or one str.
        Raises fe_llm.ModelError when a call is refused (call budget spent) or fails.

Budgets: each predict() call has a time limit (about a minute, model calls included) and the
whole candidate a budget of model calls (a few per request); setup() may also call the model.
Anything printed is kept (clipped) as part of the trace you see next time.
"""

SEED_HARNESS = '''\
"""Zero-shot intent classifier: show the model the intent names, read back the one it names.

It ignores the labelled examples in the memory.
"""

import re

import fe_llm

LABELS: list[str] = []


def setup(memory):
    LABELS[:] = memory["labels"]


def predict(text):
    prompt = (
        "Classify the user's request into exactly one of these intents:\\n"
        + "\\n".join(f"- {label}" for label in LABELS)
        + f"\\n\\nRequest: {text}\\nAnswer with the intent name only."
    )
    answer = fe_llm.complete([{"role": "user", "content": prompt}], max_tokens=16, temperature=0)
    return {"label": parse_label(answer), "raw": answer}


def parse_label(answer):
    """The first intent named in the answer, else the one sharing most words with it."""
    lowered = answer.lower()
    named = [(lowered.find(label), label) for label in LABELS if label in lowered]
    if named:
        return min(named)[1]
    words = set(re.findall(r"[a-z]+", lowered))
    return max(LABELS, key=lambda label: len(words & set(label.split("_"))))
'''


class IntentRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    label: str = Field(min_length=1, pattern=r"^[a-z_]+$")
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
        f"the intent-lite data file {DATA_FILE} is missing from the installed package; "
        "reinstall flashevolve (pip install --force-reinstall flashevolve)"
    )


def load_rows(path: str | Path | None = None) -> list[IntentRow]:
    """Read and validate the dataset; every problem names file, line and field."""
    source = Path(path) if path is not None else dataset_path()
    rows: list[IntentRow] = []
    seen: dict[str, int] = {}
    for line, raw in read_records(source):
        try:
            row = IntentRow.model_validate(raw)
        except ValidationError as err:
            field, problem = pydantic_problem(err)
            raise TaskFileError(str(source), line, field, problem) from None
        if row.id in seen:
            raise TaskFileError(
                str(source), line, "id", f"duplicate id {row.id!r} (first on line {seen[row.id]})"
            )
        seen[row.id] = line
        rows.append(row)
    return rows


def normalize_label(value: Any) -> str:
    """``"Set Timer"``, ``"set-timer"``, ``{"label": "set_timer"}`` -> ``"set_timer"``."""
    if isinstance(value, Mapping):
        value = value.get("label", "")
    text = str(value if value is not None else "").strip().strip("'\"`.").lower()
    return "_".join(text.replace("-", " ").replace("_", " ").split())


class IntentLiteTask:
    """A harness task (:class:`~flashevolve.workflows.meta_harness.HarnessTask`).

    It is also a plain :class:`~flashevolve.tasks.base.Task`: ``rollout`` runs the harness on
    one example in the sandbox, so any workflow can score a harness artifact.
    """

    name = "intent-lite"

    def __init__(
        self,
        train: Sequence[Example],
        val: Sequence[Example],
        test: Sequence[Example],
        labels: Iterable[str],
        *,
        allow_unsandboxed: bool = False,
    ) -> None:
        if not train or not val:
            raise UserError("intent-lite needs at least one train and one val example")
        self.train, self.val, self.test = list(train), list(val), list(test)
        self.labels = sorted(labels)
        self.harness = HarnessSpec(interface=INTERFACE)
        self.allow_unsandboxed = allow_unsandboxed
        self._runner: Any = None

    def seed_artifact(self) -> dict[str, str]:
        return {self.harness.main_file: SEED_HARNESS}

    def describe(self) -> str:
        return DESCRIPTION

    def memory(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "examples": [{"text": ex.inputs["text"], "label": ex.reference} for ex in self.train],
        }

    def harness_input(self, example: Example) -> str:
        return str(example.inputs["text"])

    def score(self, example: Example, value: Any) -> MetricResult:
        expected = str(example.reference)
        got = normalize_label(value)
        if got == expected:
            return MetricResult(1.0, f"Correct: {expected}.", {"predicted": got})
        if not got:
            feedback = (
                f"Wrong: the harness returned no intent ({str(value)[:80]!r}); expected {expected}."
            )
        elif got not in self.labels:
            feedback = f"Wrong: {got!r} is not one of the intents; expected {expected}."
        else:
            feedback = f"Wrong: predicted {got}, expected {expected}."
        return MetricResult(0.0, feedback, {"predicted": got, "expected": expected})

    async def rollout(
        self,
        components: Mapping[str, str],
        example: Example,
        llm: LLM,
        *,
        stage: str,
        item_id: str,
        seed: int | None = None,
    ) -> Rollout:
        """The harness on one example, in its own sandboxed process (setup, then predict)."""
        from flashevolve.workflows.meta_harness.runners import SandboxRunner

        if self._runner is None:
            self._runner = SandboxRunner(processes=1, allow_unsandboxed=self.allow_unsandboxed)
        report = await self._runner.evaluate(
            components, self, [example], llm, stage=stage, item_id=item_id
        )
        outcome = report.outcomes[0]
        return Rollout(
            example.id,
            outcome.output,
            outcome.score,
            outcome.feedback,
            trace=outcome.trace,
            error=outcome.error,
        )


def _subsample(
    items: Sequence[Example], n: int | None, rng: random.Random, option: str
) -> list[Example]:
    if n is None:
        return list(items)
    if n < 1 or n > len(items):
        raise UserError(
            f"intent-lite option {option}={n} is out of range; choose 1..{len(items)} or None"
        )
    return sorted(rng.sample(list(items), n), key=lambda e: e.id)


def intent_lite(
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    path: str | Path | None = None,
    allow_unsandboxed: bool = False,
) -> IntentLiteTask:
    """Build the task; ``n_*`` subsample a split (seeded), ``path`` swaps in another file."""
    rows = load_rows(path)
    by_split: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for row in rows:
        example = Example(
            id=row.id, inputs={"text": row.text}, reference=row.label, meta={"split": row.split}
        )
        by_split[row.split].append(example)
    rng = random.Random(seed)
    return IntentLiteTask(
        _subsample(by_split["train"], n_train, rng, "n_train"),
        _subsample(by_split["val"], n_val, rng, "n_val"),
        _subsample(by_split["test"], n_test, rng, "n_test") if by_split["test"] else [],
        labels={row.label for row in rows},
        allow_unsandboxed=allow_unsandboxed,
    )
