"""What the proposer reads: every harness tried so far, and how it did.

Meta-Harness gives its proposer the whole history on disk -- earlier candidates' code, their
validation scores, per-example results and traces -- and its ablation finds full traces beat
scores or summaries alone.  :class:`History` keeps one :class:`Attempt` per candidate that got
as far as the import check (code of candidates the pool does not hold, failures with their
model calls, clipped), and :func:`~.prompt.build_proposer_prompt` renders it within a context
budget.  The history is part of the workflow's state (``snapshot``/``restore``), so a resumed
run shows its proposer the same history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from flashevolve.tasks.base import Example
from flashevolve.workflows.meta_harness.harness import EvaluationReport, ExampleOutcome

#: statuses of an attempt
ADMITTED, NOT_ADMITTED, REJECTED = "admitted", "not admitted", "failed the import check"
#: characters of a non-admitted candidate's code kept in the history
CODE_KEEP = 6000
#: characters of one failure's trace (model calls, printed output) kept in the history
TRACE_KEEP = 1200


@dataclass(slots=True)
class Failure:
    """One validation example a harness got wrong: what it saw, answered and did."""

    example_id: str
    input: str
    output: str
    feedback: str
    trace: str  # the model calls and printed output, clipped

    @classmethod
    def of(cls, outcome: ExampleOutcome, example: Example | None, task_input: Any) -> Failure:
        parts = []
        for call in outcome.trace.get("calls", []) or []:
            parts.append(f"model call:\n{call.get('prompt', '')}\n-> {call.get('answer', '')}")
        if outcome.trace.get("stdout"):
            parts.append(f"printed: {outcome.trace['stdout']}")
        if outcome.trace.get("traceback"):
            parts.append(f"traceback:\n{outcome.trace['traceback']}")
        trace = "\n".join(parts)
        if len(trace) > TRACE_KEEP:
            trace = trace[: TRACE_KEEP - 14] + " [... clipped]"
        return cls(
            outcome.example_id,
            str(task_input)[:300],
            outcome.output[:300],
            outcome.feedback[:400],
            trace,
        )


@dataclass(slots=True)
class Attempt:
    """One candidate harness and what became of it."""

    artifact_id: str
    parent_id: str | None
    hypothesis: str
    status: str
    ts: float
    score: float | None = None
    correct: int = 0
    total: int = 0
    reason: str = ""  # why it failed the check, or why its evaluation stopped early
    failures: list[Failure] = field(default_factory=list)
    #: the code of a candidate the pool does not hold (admitted ones are read from the pool)
    code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Attempt:
        data = dict(raw)
        data["failures"] = [Failure(**f) for f in data.get("failures", [])]
        return cls(**data)


class History:
    """Every attempt, in the order they ended."""

    def __init__(self, keep_failures: int = 6) -> None:
        self.keep_failures = keep_failures
        self.attempts: list[Attempt] = []
        self._by_id: dict[str, Attempt] = {}

    def __len__(self) -> int:
        return len(self.attempts)

    def get(self, artifact_id: str) -> Attempt | None:
        return self._by_id.get(artifact_id)

    def add(self, attempt: Attempt) -> Attempt:
        self.attempts.append(attempt)
        self._by_id[attempt.artifact_id] = attempt
        return attempt

    def rejected(
        self,
        artifact_id: str,
        parent_id: str | None,
        hypothesis: str,
        reason: str,
        code: str,
        ts: float,
    ) -> Attempt:
        return self.add(
            Attempt(
                artifact_id,
                parent_id,
                hypothesis,
                REJECTED,
                ts,
                reason=reason,
                code=code[:CODE_KEEP],
            )
        )

    def evaluated(
        self,
        artifact_id: str,
        parent_id: str | None,
        hypothesis: str,
        report: EvaluationReport,
        examples: Sequence[Example],
        inputs: Sequence[Any],
        *,
        admitted: bool,
        code: str,
        ts: float,
    ) -> Attempt:
        by_id = {ex.id: (ex, inp) for ex, inp in zip(examples, inputs, strict=True)}
        failures: list[Failure] = []
        for outcome in report.outcomes:
            if outcome.score < 1.0 and len(failures) < self.keep_failures:
                example, task_input = by_id.get(outcome.example_id, (None, ""))
                failures.append(Failure.of(outcome, example, task_input))
        return self.add(
            Attempt(
                artifact_id,
                parent_id,
                hypothesis,
                ADMITTED if admitted else NOT_ADMITTED,
                ts,
                score=report.mean,
                correct=sum(1 for o in report.outcomes if o.score >= 1.0),
                total=len(report.outcomes),
                reason=report.aborted or "",
                failures=failures,
                code=None if admitted else code[:CODE_KEEP],
            )
        )

    def snapshot(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.attempts]

    def restore(self, raw: Sequence[Mapping[str, Any]]) -> None:
        self.attempts, self._by_id = [], {}
        for item in raw:
            self.add(Attempt.from_dict(item))
