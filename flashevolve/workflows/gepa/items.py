"""What travels between GEPA's stages: a job, the parent's rollouts, a proposal, a gated child."""

from __future__ import annotations

from dataclasses import dataclass, field

from flashevolve.artifacts import Artifact
from flashevolve.tasks.base import Example, Rollout


@dataclass(slots=True)
class Job:
    """A parent and a minibatch, chosen at one pool version (entry of the pipeline)."""

    parent: Artifact
    minibatch: list[Example]
    component: str
    iteration: int
    child_pointer: int  # round-robin pointer the child inherits


@dataclass(slots=True)
class Reflectable:
    """The parent's rollouts on the minibatch, ready for reflection."""

    job: Job
    parent_rollouts: list[Rollout]


@dataclass(slots=True)
class Proposal:
    """A child artifact waiting for the minibatch gate."""

    job: Job
    child: Artifact
    parent_rollouts: list[Rollout] | None  # None after a patch: the gate re-runs the parent
    patched_from: tuple[str, ...] = ()
    #: a repaired proposal skips the gate when the reviewing policy says so (gate_patches=False)
    skip_gate: bool = False


@dataclass(slots=True)
class GatedChild:
    """A child that passed the gate, waiting for full validation."""

    proposal: Proposal
    child_rollouts: list[Rollout] = field(default_factory=list)
