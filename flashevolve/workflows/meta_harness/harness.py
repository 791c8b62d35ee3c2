"""What a harness is, what a harness task provides, and what evaluating one reports.

A *harness* is the Python program around a fixed model that decides what to store, what to
retrieve and what to show it (Meta-Harness, arXiv 2603.28052).  Here a candidate is an
:class:`~flashevolve.artifacts.Artifact` whose components are file names and sources
(``{"harness.py": "..."}``); the task says which module and functions form the interface
(:class:`HarnessSpec`), what the harness is given once (:meth:`HarnessTask.memory`, e.g. the
labelled training examples), what it gets per example and how its answer is scored.

This module also reads a proposer's answer (:func:`parse_proposal`): the code comes from a
fenced block, the hypothesis from a ``HYPOTHESIS:`` line; anything else is a rejection with a
reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

from flashevolve.tasks.base import Example, MetricResult


@dataclass(frozen=True, slots=True)
class HarnessSpec:
    """The interface a harness implements, as the task defines it.

    The harness module (``module``, shipped as ``<module>.py``) defines ``setup(memory)``,
    called once per process with :meth:`HarnessTask.memory`, and ``predict(example_input)``,
    called once per example; ``interface`` is the text shown to the proposer (signatures, what
    the arguments hold, what to return, what ``fe_llm`` offers).
    """

    interface: str
    module: str = "harness"
    setup: str = "setup"
    predict: str = "predict"

    @property
    def main_file(self) -> str:
        return f"{self.module}.py"

    def functions(self) -> dict[str, int]:
        """Interface functions and how many positional arguments each takes."""
        return {self.setup: 1, self.predict: 1}


@runtime_checkable
class HarnessTask(Protocol):
    """What the Meta-Harness workflow needs from a task (beyond the generic Task)."""

    name: str
    train: Sequence[Example]
    val: Sequence[Example]
    test: Sequence[Example]
    harness: HarnessSpec

    def seed_artifact(self) -> dict[str, str]:
        """``{file name: source}`` of the seed harness (works without any memory use)."""
        ...

    def describe(self) -> str: ...

    def memory(self) -> Any:
        """The JSON value handed to ``setup`` (e.g. the labelled training examples)."""
        ...

    def harness_input(self, example: Example) -> Any:
        """The JSON value handed to ``predict`` for one example."""
        ...

    def score(self, example: Example, value: Any) -> MetricResult:
        """Score what ``predict`` returned for ``example`` (with feedback for the proposer)."""
        ...


def check_harness_task(task: Any) -> HarnessTask:
    """The task, or a clear error saying what a Meta-Harness task lacks."""
    missing = [
        name
        for name in ("harness", "memory", "harness_input", "score", "seed_artifact")
        if not hasattr(task, name)
    ]
    if missing:
        from flashevolve.errors import ConfigError

        raise ConfigError(
            f"task {getattr(task, 'name', task)!r} is not a harness task (it lacks {missing}); "
            "the meta-harness workflow needs one such as 'intent-lite' "
            "(see flashevolve.workflows.meta_harness.HarnessTask)"
        )
    # the harness-specific members were checked by name above; the rest is the generic Task's
    return cast(HarnessTask, task)


# -- what an evaluation reports -------------------------------------------------------------------


@dataclass(slots=True)
class CheckResult:
    """The import-and-interface check of one harness."""

    ok: bool
    reason: str  # one line: "imports and defines setup(1), predict(1)" or what went wrong
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ExampleOutcome:
    """One example run through a harness: its score, and the trace the proposer reads."""

    example_id: str
    score: float
    feedback: str
    output: str = ""  # what predict returned, as text
    error: str | None = None  # why it scored 0 without an answer (crash, timeout, not run)
    #: model calls ({"prompt", "answer"}), captured stdout, seconds
    trace: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "example_id": self.example_id,
            "score": self.score,
            "feedback": self.feedback,
            "output": self.output,
            "error": self.error,
            "trace": self.trace,
        }


@dataclass(slots=True)
class EvaluationReport:
    """A harness run on a list of examples (in their order)."""

    outcomes: list[ExampleOutcome]
    #: set when the harness was stopped before every example ran (setup failed, the process
    #: was killed, the candidate's budget ran out): the rest scored 0 with this reason
    aborted: str | None = None
    llm_calls: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        return {o.example_id: o.score for o in self.outcomes}

    @property
    def mean(self) -> float:
        return sum(o.score for o in self.outcomes) / len(self.outcomes) if self.outcomes else 0.0


# -- reading the proposer's answer ----------------------------------------------------------------

#: a fenced block: opening fence with an optional language tag, body, closing fence on its own line
_BLOCK = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
_OPENING = re.compile(r"^[ \t]*```", re.M)
_HYPOTHESIS = re.compile(r"^[ \t*#_-]*hypothesis[ \t*_]*[:\-][ \t*_]*(.+)$", re.I | re.M)
PYTHON_TAGS = frozenset({"", "python", "py", "python3"})
MAX_HYPOTHESIS_CHARS = 300


@dataclass(slots=True)
class ParsedProposal:
    code: str | None
    hypothesis: str
    reason: str | None  # why there is no code


def parse_proposal(answer: str) -> ParsedProposal:
    """The harness code and the one-line hypothesis in a proposer's answer, or why not.

    The code is the longest closed fenced block tagged as Python (or untagged); a block opened
    but never closed (a truncated answer), a block in another language only, or an empty block
    is a rejection.  The hypothesis is the first ``HYPOTHESIS:`` line outside the code
    (optional: a missing one is recorded as empty, not a rejection).
    """
    text = answer or ""
    blocks = [(m.group(1).lower(), m.group(2), m.span()) for m in _BLOCK.finditer(text)]
    outside = text
    for _, _, (start, end) in reversed(blocks):
        outside = outside[:start] + outside[end:]
    found = _HYPOTHESIS.search(outside)
    hypothesis = found.group(1).strip()[:MAX_HYPOTHESIS_CHARS] if found else ""
    if not blocks:
        if _OPENING.search(text):
            return ParsedProposal(None, hypothesis, "the code block was never closed (truncated?)")
        return ParsedProposal(None, hypothesis, "no fenced code block in the proposer's answer")
    python = [body for tag, body, _ in blocks if tag in PYTHON_TAGS]
    if not python:
        tags = sorted({tag for tag, _, _ in blocks})
        return ParsedProposal(None, hypothesis, f"no Python code block (blocks tagged {tags})")
    code = max(python, key=len).strip("\n")
    if not code.strip():
        return ParsedProposal(None, hypothesis, "the code block is empty")
    return ParsedProposal(code + "\n", hypothesis, None)


def harness_files(components: Mapping[str, str]) -> dict[str, str]:
    """An artifact's components as the files a runner ships (names are relative paths)."""
    return {str(name): str(text) for name, text in components.items()}
