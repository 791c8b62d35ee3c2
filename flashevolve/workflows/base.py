"""The Workflow contract: how an evolution algorithm plugs into the runtime.

A workflow is a plug-in: its own module(s) plus one line in :data:`WORKFLOWS`.  Nothing generic
(runtime, policies, events, views, CLI) names a workflow's stages or reads its payloads; they talk
to it through the small Protocols below.

Every workflow implements :class:`Workflow`:

- ``stages()``: the stage list in flow order (names, handlers, LLM role, where staleness is
  checked); the first stage is the entry the job source feeds;
- ``initialize(ctx)``: before the loop (score and admit the seed; on resume, nothing);
- ``make_job(ctx)``: a new payload for the entry stage, or ``None`` when there is nothing to do;
- ``accounting``: what its events mean for the metrics of PAPER.md section 6 (the metric
  definitions themselves live once, in :mod:`flashevolve.events.metrics`);
- ``snapshot()`` / ``restore(state, ctx)``: its own serialisable state, which the run directory
  saves so a resumed run continues exactly (GEPA: the iteration, the sampler, the component
  pointers; ACE: the playbook head and the pending reflections' cursor);
- ``stale_view(item, ctx, lag=..., frontier_lag=...)``: how a stale item looks to a policy.

Optional capabilities, each a small Protocol a workflow implements only if it can:

- :class:`Repairable` -- Reflective staleness: what a reviewer is shown, how its answer becomes a
  repair, and how a repair re-enters the pipeline (GEPA: a patched prompt merged into the best;
  ACE: delta operations rebased onto the current playbook);
- :class:`Speculative` -- speculative stage completion (GEPA: a validation prefix);
- :class:`Simulated` -- a workload model for the serving simulator (its own stage lengths and
  answer contents), so ``backend="sim"`` works for the workflow.

Asking for a mechanism a workflow does not implement is a :class:`~flashevolve.errors.ConfigError`
at construction, never silently ignored (:func:`check_supports`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from flashevolve.errors import ConfigError
from flashevolve.policies.staleness import StaleDecision, StaleItem
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import StageSpec, WorkItem

if TYPE_CHECKING:
    from flashevolve.policies.staleness import Repair, ReviewMaterial


@dataclass(frozen=True, slots=True)
class Accounting:
    """What a workflow's generic events stand for, in its own words.

    The runtime and the metrics count the same event kinds for every workflow -- ``proposal_made``
    (a proposal), ``admitted`` (an accepted proposal; the seed's is not counted),
    ``validation_finished`` (a validation sweep), ``gate_passed``/``gate_failed`` (a cheap screen
    before full validation, for workflows that have one) -- and this record says what each one
    means here.  It is written into ``run_started`` so a report explains its own numbers.
    """

    proposal: str
    acceptance: str
    sweep: str
    gate: str | None = None  # None: this workflow has no screen before validation

    def as_dict(self) -> dict[str, str | None]:
        return {
            "proposal": self.proposal,
            "acceptance": self.acceptance,
            "sweep": self.sweep,
            "gate": self.gate,
        }


@runtime_checkable
class Workflow(Protocol):
    name: str
    accounting: Accounting

    def stages(self) -> list[StageSpec]: ...

    async def initialize(self, ctx: StageContext) -> None:
        """Before the loop: e.g. score and admit the seed artifact (nothing when resumed)."""
        ...

    async def make_job(self, ctx: StageContext) -> Any | None:
        """A new payload for the entry stage (select a parent, a minibatch, ...)."""
        ...

    def stale_view(
        self, item: WorkItem, ctx: StageContext, *, lag: int, frontier_lag: int
    ) -> StaleItem: ...

    def snapshot(self) -> dict[str, Any]:
        """The workflow's own state as plain JSON values (saved by the run directory)."""
        ...

    def restore(self, state: Mapping[str, Any], ctx: StageContext) -> None:
        """Continue from a :meth:`snapshot` (the pool is already rebuilt when this runs)."""
        ...


@runtime_checkable
class Repairable(Protocol):
    """A workflow whose stale items a reviewer can repair (the Reflective policy)."""

    def review_material(
        self, items: Sequence[StaleItem], ctx: StageContext, *, limits: Mapping[str, int]
    ) -> ReviewMaterial:
        """What the reviewer sees: the current state, what changed since the oldest stamp, each
        stale item, and the shape a repair takes in the answer."""
        ...

    def make_repair(
        self, items: Sequence[StaleItem], patched: Any, ctx: StageContext
    ) -> Repair | str:
        """Turn the reviewer's ``patched`` value for ``items`` into a repair, or say (as a string)
        why it is unusable."""
        ...

    def apply_patch(self, item: WorkItem, decision: StaleDecision, ctx: StageContext) -> Any:
        """The payload with which a repaired item re-enters its stage."""
        ...


@runtime_checkable
class Speculative(Protocol):
    """A workflow that supports speculative stage completion (``Evolver(speculation=...)``)."""

    def check_speculation(self, speculation: Any) -> None:
        """Raise ``ValueError`` for settings this workflow cannot honour."""
        ...


@runtime_checkable
class Simulated(Protocol):
    """A workflow with a workload model for the serving simulator."""

    def sim_workload(self) -> Any:
        """A :class:`flashevolve.backends.sim.SimWorkload` for this workflow's requests."""
        ...


#: name -> "module:Class".  Adding a workflow is one line here plus its own module(s).
WORKFLOWS: dict[str, str] = {
    "gepa": "flashevolve.workflows.gepa:GepaWorkflow",
    "ace": "flashevolve.workflows.ace:AceWorkflow",
    "meta-harness": "flashevolve.workflows.meta_harness:MetaHarnessWorkflow",
}


def available_workflows() -> list[str]:
    return sorted(WORKFLOWS)


def make_workflow(spec: str | Workflow, **options: Any) -> Workflow:
    """A workflow from its registry name (options go to its constructor) or an object."""
    if not isinstance(spec, str):
        if options:
            raise ConfigError(
                f"workflow options {sorted(options)} were given with a workflow object; "
                "pass them to its constructor instead"
            )
        _check_contract(spec)
        return spec
    key = spec.strip().lower().replace("_", "-")
    target = WORKFLOWS.get(key)
    if target is None:
        raise ConfigError(f"unknown workflow {spec!r}; choose one of {available_workflows()}")
    module, _, cls = target.partition(":")
    factory = getattr(importlib.import_module(module), cls)
    try:
        workflow: Workflow = factory(**options)
    except TypeError as err:
        raise ConfigError(f"workflow {key!r}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"workflow {key!r}: {err}") from None
    return workflow


def _check_contract(workflow: Any) -> None:
    missing = [
        name
        for name in ("name", "accounting", "stages", "initialize", "make_job", "stale_view")
        if not hasattr(workflow, name)
    ]
    if missing:
        raise ConfigError(
            f"{type(workflow).__name__} is not a workflow: it lacks {missing} "
            "(implement flashevolve.workflows.base.Workflow)"
        )


def sim_workload_of(name: str) -> Any:
    """The serving simulator's workload of the workflow registered as ``name``."""
    workflow = make_workflow(name)
    if not isinstance(workflow, Simulated):
        raise ConfigError(
            f"workflow {name!r} has no simulator workload (it does not implement sim_workload)"
        )
    return workflow.sim_workload()


def check_supports(workflow: Any, *, speculation: Any = None, policy: Any = None) -> None:
    """A clear error for a mechanism the workflow does not implement (never ignored silently)."""
    name = getattr(workflow, "name", type(workflow).__name__)
    if speculation is not None:
        if not isinstance(workflow, Speculative):
            raise ConfigError(
                f"workflow {name!r} does not support speculative stage completion "
                "(it has no stage whose output can be released early); drop speculation="
            )
        try:
            workflow.check_speculation(speculation)
        except ValueError as err:
            raise ConfigError(f"speculation with workflow {name!r}: {err}") from None
    if getattr(policy, "needs_repair", False) and not isinstance(workflow, Repairable):
        raise ConfigError(
            f"staleness policy {policy.name!r} reviews and repairs stale items, which workflow "
            f"{name!r} does not support; use 'full' or 'guarded'"
        )
