"""The Workflow Protocol: how an evolution algorithm plugs into the runtime.

A workflow declares
- its **stages** (``stages()``: names, handlers, which LLM role they use, where staleness is
  checked) -- the first stage is the entry the job source feeds;
- its **item types** (``item_types``: the payload dataclasses that travel between stages);
- its **admission rule** (inside its last stage: what makes a candidate enter the pool);
and how stale work looks to a policy (``stale_view``) and how a patch re-enters (``apply_patch``).
The runtime does the rest: queues, workers, stamps, budgets, policies, events.

GEPA is the first workflow.  ACE (generator -> reflector -> curator over a playbook), Meta-Harness
(proposer -> run-the-harness evaluator) and Combee (map reflections -> shuffle -> reduce) fit the
same shape: different stage lists and payloads, the same runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from flashevolve.policies.staleness import StaleDecision, StaleItem
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import StageSpec, WorkItem


@runtime_checkable
class Workflow(Protocol):
    name: str
    item_types: Sequence[type]

    def stages(self) -> list[StageSpec]: ...

    async def initialize(self, ctx: StageContext) -> None:
        """Before the loop: e.g. score and admit the seed artifact."""
        ...

    async def make_job(self, ctx: StageContext) -> Any | None:
        """A new payload for the entry stage (select a parent, a minibatch, ...)."""
        ...

    def stale_view(
        self, item: WorkItem, ctx: StageContext, *, lag: int, frontier_lag: int
    ) -> StaleItem: ...

    def apply_patch(self, item: WorkItem, decision: StaleDecision, ctx: StageContext) -> Any: ...


WORKFLOWS: dict[str, str] = {"gepa": "flashevolve.workflows.gepa:GepaWorkflow"}


def make_workflow(spec: str | Workflow, **options: Any) -> Workflow:
    if not isinstance(spec, str):
        return spec
    try:
        target = WORKFLOWS[spec]
    except KeyError:
        raise ValueError(f"unknown workflow {spec!r}; choose one of {sorted(WORKFLOWS)}") from None
    import importlib

    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(**options)
