"""What travels between GEPA's stages: a job, the parent's rollouts, a proposal, a gated child.

A reflective job enters at ``rollout`` as a :class:`Job`; a merge enters there too, already a
:class:`Proposal` (with :class:`MergeInfo`), and ``rollout`` hands it straight to ``gate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flashevolve.artifacts import Artifact
from flashevolve.tasks.base import Example, Rollout


@dataclass(slots=True)
class Job:
    """A parent and a minibatch, chosen at one pool version (entry of the pipeline).

    ``component`` and ``child_pointer`` are filled in once the parent's rollout is past gepa's
    skip checks (the round-robin pointer moves only then); a merge's job carries its validation
    subsample as ``minibatch``.
    """

    parent: Artifact
    minibatch: list[Example]
    component: str
    iteration: int
    child_pointer: int  # round-robin pointer the child inherits


@dataclass(slots=True)
class MergeInfo:
    """How a merged child was made (gepa's merge): its two parents (lower pool index first),
    their common ancestor, where each component came from, and the parents' score sums on the
    validation subsample the child is screened on (``Job.minibatch``)."""

    parents: tuple[str, str]
    ancestor: str
    sources: dict[str, str]  # component -> artifact id its text was taken from
    parent_sums: tuple[float, float]


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
    #: set for a merge: the gate compares the child's subsample sum with the parents' sums
    merge: MergeInfo | None = None


@dataclass(slots=True)
class GatedChild:
    """A child that passed the gate, waiting for full validation."""

    proposal: Proposal
    child_rollouts: list[Rollout] = field(default_factory=list)
