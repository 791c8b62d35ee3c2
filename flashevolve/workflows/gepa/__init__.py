"""GEPA (reflective prompt evolution, gepa 0.1.4 semantics) as a flashevolve workflow.

- :mod:`.workflow` -- the stages (rollout -> propose -> gate -> validate) and the admission rule;
- :mod:`.items` -- the payloads that travel between the stages;
- :mod:`.propose` -- the propose stage: one reflection call, or Combee (:mod:`.combee`);
- :mod:`.reflection` -- the reflection prompt and the parser of its answer;
- :mod:`.merge`, :mod:`.merge_jobs` -- gepa's merge (crossover) and its jobs in the pipeline;
- :mod:`.speculative` -- the rollout and validate handlers with speculative completion;
- :mod:`.combee_sim` -- what the serving simulator answers to Combee's reduce calls.

docs/gepa.md lists what is kept from gepa and every difference.
"""

from flashevolve.workflows.gepa.combee import Combee
from flashevolve.workflows.gepa.events import emit_admitted
from flashevolve.workflows.gepa.items import GatedChild, Job, MergeInfo, Proposal, Reflectable
from flashevolve.workflows.gepa.workflow import GepaWorkflow

__all__ = [
    "Combee",
    "GatedChild",
    "GepaWorkflow",
    "Job",
    "MergeInfo",
    "Proposal",
    "Reflectable",
    "emit_admitted",
]
