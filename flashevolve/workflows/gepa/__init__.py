"""GEPA (reflective prompt evolution, gepa 0.1.4 semantics) as a flashevolve workflow.

- :mod:`.workflow` -- the stages (rollout -> propose -> gate -> validate) and the admission rule;
- :mod:`.items` -- the payloads that travel between the stages;
- :mod:`.speculative` -- the rollout and validate handlers with speculative completion;
- :mod:`.review` -- what a reviewing staleness policy sees of a stale proposal, and the repair;
- :mod:`.reflection` -- the reflection prompt and the strict parser of its answer.
"""

from flashevolve.workflows.gepa.items import GatedChild, Job, Proposal, Reflectable
from flashevolve.workflows.gepa.workflow import GepaWorkflow, emit_admitted

__all__ = ["GatedChild", "GepaWorkflow", "Job", "Proposal", "Reflectable", "emit_admitted"]
