"""What travels between Meta-Harness's stages: propose -> validate -> evaluate."""

from __future__ import annotations

from dataclasses import dataclass

from flashevolve.artifacts import Artifact


@dataclass(slots=True)
class Job:
    """A harness to improve and the proposer's prompt, written at one pool version (the job's
    stamp): what the proposer sees is what the pool held when the job was made."""

    parent: Artifact
    parent_score: float
    prompt: str
    iteration: int
    attempts_listed: int = 0
    code_shown: int = 1
    #: the proposer request's seed (drawn when the job is made): two jobs with the same prompt
    #: still get different answers from a sampling server
    request_seed: int | None = None


@dataclass(slots=True)
class Proposal:
    """A new harness waiting for the import and interface check (and, if stale, the policy)."""

    job: Job
    child: Artifact
    hypothesis: str
    patched_from: tuple[str, ...] = ()


@dataclass(slots=True)
class Checked:
    """A harness that passed the check, waiting for its evaluation on the validation set."""

    proposal: Proposal
