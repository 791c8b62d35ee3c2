"""Meta-Harness (evolving the code around a fixed model) as a flashevolve workflow.

- :mod:`.workflow` -- the stages (propose -> validate -> evaluate) and the admission rule;
- :mod:`.harness` -- what a harness and a harness task are, the proposer's answer parser;
- :mod:`.runners` -- :class:`HarnessRunner` and the :class:`SandboxRunner` (real code, real
  sandbox); :mod:`.sim_runner` -- the :class:`SimulatedRunner` (virtual time, no code);
- :mod:`.history`, :mod:`.prompt` -- what the proposer reads, within a context budget;
- :mod:`.sweep` -- one validation sweep and its events;
- :mod:`.sim` -- the serving simulator's Meta-Harness workload;
- :mod:`.cli` -- the command-line options (the unsandboxed opt-out) for the commands to wire.

docs/meta-harness.md says what is kept from Meta-Harness and every difference.
"""

from flashevolve.workflows.meta_harness.harness import (
    CheckResult,
    EvaluationReport,
    ExampleOutcome,
    HarnessSpec,
    HarnessTask,
    parse_proposal,
)
from flashevolve.workflows.meta_harness.runners import HarnessRunner, SandboxRunner, ThreadsafeLLM
from flashevolve.workflows.meta_harness.sim_runner import SimulatedRunner
from flashevolve.workflows.meta_harness.workflow import PROTECTIONS_EVENT, MetaHarnessWorkflow

__all__ = [
    "PROTECTIONS_EVENT",
    "CheckResult",
    "EvaluationReport",
    "ExampleOutcome",
    "HarnessRunner",
    "HarnessSpec",
    "HarnessTask",
    "MetaHarnessWorkflow",
    "SandboxRunner",
    "SimulatedRunner",
    "ThreadsafeLLM",
    "parse_proposal",
]
