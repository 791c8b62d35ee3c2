"""ACE (Agentic Context Engineering, arXiv 2510.04618) as a flashevolve workflow.

- :mod:`.playbook` -- the playbook (sections of ``[id] helpful=H harmful=X :: text`` bullets),
  its text form and exact parser;
- :mod:`.operations` -- the four delta operations (ADD, UPDATE, MERGE, DELETE), validated with
  pydantic and applied deterministically, with the batch rule for conflicts;
- :mod:`.prompts` -- the generator, reflector and curator prompts and their strict parsers;
- :mod:`.generator` -- ACE's generator as a task view (the task's metric scores the answer);
- :mod:`.workflow` / :mod:`.steps` -- the stages and the state;
- :mod:`.review` -- staleness of delta operations and the reviewer's rebased operations;
- :mod:`.sim` -- the simulator's workload model for ACE requests.
"""

from flashevolve.workflows.ace.operations import (
    AddOp,
    DeleteOp,
    MergeOp,
    StampedOp,
    UpdateOp,
    apply_operations,
    validate_operation,
)
from flashevolve.workflows.ace.playbook import Bullet, Playbook, PlaybookFormatError
from flashevolve.workflows.ace.workflow import AceWorkflow

__all__ = [
    "AceWorkflow",
    "AddOp",
    "Bullet",
    "DeleteOp",
    "MergeOp",
    "Playbook",
    "PlaybookFormatError",
    "StampedOp",
    "UpdateOp",
    "apply_operations",
    "validate_operation",
]
