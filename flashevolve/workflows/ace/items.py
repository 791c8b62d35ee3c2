"""What travels between ACE's stages, and the reflection record the workflow buffers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flashevolve.artifacts import Artifact
from flashevolve.tasks.base import Example, Rollout
from flashevolve.workflows.ace.operations import StampedOp


@dataclass(slots=True)
class Step:
    """One training example, the entry of a job (the official loop's "step")."""

    step: int  # 0-based count of training steps taken in the run
    epoch: int
    example: Example


@dataclass(slots=True)
class Generated:
    """The generator's answer to a step, with the playbook version it read."""

    step: Step
    playbook: Artifact
    rollout: Rollout


@dataclass(slots=True)
class Reflection:
    """A reflector's verdict on one step (JSON-able: it waits in the workflow's state)."""

    step: int
    example_id: str
    question: str
    answer: str
    score: float
    feedback: str
    diagnosis: str
    insight: str
    tags: list[tuple[str, str]] = field(default_factory=list)  # (bullet id, tag)
    rounds: int = 1  # reflections made for this step (reflect-and-retry rounds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "example_id": self.example_id,
            "question": self.question,
            "answer": self.answer,
            "score": self.score,
            "feedback": self.feedback,
            "diagnosis": self.diagnosis,
            "insight": self.insight,
            "tags": [list(t) for t in self.tags],
            "rounds": self.rounds,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Reflection:
        return cls(
            step=int(raw["step"]),
            example_id=str(raw["example_id"]),
            question=str(raw["question"]),
            answer=str(raw["answer"]),
            score=float(raw["score"]),
            feedback=str(raw["feedback"]),
            diagnosis=str(raw["diagnosis"]),
            insight=str(raw["insight"]),
            tags=[(str(i), str(t)) for i, t in raw.get("tags", [])],
            rounds=int(raw.get("rounds", 1)),
        )

    def record(self) -> dict[str, Any]:
        """As a feedback record for generic consumers of StaleItem.feedback."""
        return {
            "example_id": self.example_id,
            "input": self.question,
            "score": self.score,
            "feedback": f"{self.feedback} | diagnosis: {self.diagnosis} | insight: {self.insight}",
        }


@dataclass(slots=True)
class CurateTicket:
    """A nudge to the curator: reflections are waiting in the buffer."""

    step: int


@dataclass(slots=True)
class CuratedBatch:
    """The curator's operations, stamped with the playbook version it saw."""

    ops: list[StampedOp]
    reflections: list[Reflection]
    base_id: str  # the playbook artifact the curator saw
    stamp: int
    rejected: list[dict[str, Any]] = field(default_factory=list)  # schema-invalid operations


@dataclass(slots=True)
class EvalTicket:
    """A playbook version to score on the validation set."""

    artifact: Artifact
    version: int
