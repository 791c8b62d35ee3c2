"""Staleness policies: what to do with work made against an older pool.

An item is *stale* when the pool moved since its basis was chosen:
``lag = pool_version - version_stamp`` (or the frontier counter, by setting).  The runtime hands
every stale item that reaches a checking stage to the policy and obeys the returned decision:

- ``accept``  -- process it as is;
- ``discard`` -- drop it (its job ends);
- ``patch``   -- replace it with ``decision.repair`` (the workflow's ``apply_patch`` says how a
  repair re-enters: GEPA merges a patched prompt into the best, ACE rebases delta operations);
- ``merged``  -- drop it because its content went into another item's patch.

What a stale item *is* belongs to the workflow (``Workflow.stale_view``): a policy sees a
:class:`StaleItem`, and an LLM-backed policy asks the workflow for the review material and the
repair (:class:`~flashevolve.workflows.base.Repairable`).  Policies are small objects; they get
what they need through the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from flashevolve.artifacts import Artifact

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext
    from flashevolve.runtime.items import WorkItem

ACCEPT, DISCARD, PATCH, MERGED = "accept", "discard", "patch", "merged"
DECISIONS = (ACCEPT, DISCARD, PATCH, MERGED)


@dataclass(slots=True)
class StaleItem:
    """What a policy sees of one stale item."""

    item_id: str
    stage: str
    lag: int  # pool_version - version_stamp
    frontier_lag: int
    age_s: float  # run-clock seconds since the item's basis was chosen
    version_stamp: int
    artifact: Artifact | None  # the proposal carried by the item, if any
    parent: Artifact | None  # what the proposal was derived from
    feedback: Sequence[dict[str, Any]] = ()  # the item's own minibatch records
    payload: Any = None
    #: Why the item no longer fits the present, when the workflow can tell (ACE: the bullets an
    #: UPDATE targets changed since its stamp); None when it cannot (GEPA: only the lag says).
    #: Guarded discards an item with a conflict whatever its lag.
    conflict: str | None = None
    #: Stale by the counter, but the workflow checked that nothing it depends on changed (ACE:
    #: an ADD whose text no bullet covers): accepted without asking the policy.
    clean: bool = False
    #: A short id of what the item proposes, for events (an artifact id, an operation id).
    subject_id: str | None = None
    #: Judged together with others from one worker (ACE: the operations of one batch), rather
    #: than each holding a worker of ``stage`` while it waits.
    shares_worker: bool = False

    @classmethod
    def of_item(
        cls, item: WorkItem, now: float, *, lag: int, frontier_lag: int, **view: Any
    ) -> StaleItem:
        """The view of a whole queue item: what the runtime knows about it (id, stage, stamp,
        age at ``now``) plus the workflow's own fields in ``view``."""
        return cls(
            item_id=item.item_id,
            stage=item.stage,
            lag=lag,
            frontier_lag=frontier_lag,
            age_s=now - item.created_at,
            version_stamp=item.version_stamp,
            **view,
        )


@dataclass(slots=True)
class Repair:
    """A reviewer's repair of one or more stale items, built by the workflow
    (:meth:`~flashevolve.workflows.base.Repairable.make_repair`)."""

    id: str  # GEPA: the patched artifact's id; ACE: a hash of the rebased operations
    value: Any  # what the workflow's apply_patch re-injects (an Artifact, operations, ...)
    parent_id: str | None = None  # what it was built on (the current best, the playbook head)
    #: ids of the stale proposals it absorbed (lineage edges in the views)
    absorbed: tuple[str, ...] = ()
    #: what the ``patch_made`` event records (texts, operations), kept readable in the log
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StaleDecision:
    action: str
    reason: str = ""
    repair: Repair | None = None  # for ``patch``
    merged_into: str | None = None  # repair id, for ``merged``
    patched_from: tuple[str, ...] = ()  # item ids folded into ``repair``
    #: send a repair through the workflow's screen again (GEPA: the minibatch gate) before it
    #: is admitted; the Reflective policy's ``gate_patches`` setting
    recheck: bool = True
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in DECISIONS:
            raise ValueError(
                f"unknown staleness decision {self.action!r}; choose one of {DECISIONS}"
            )
        if self.action == PATCH and self.repair is None:
            raise ValueError("a patch decision must carry the repair")


@dataclass(slots=True)
class ReviewMaterial:
    """What a reviewing policy shows its LLM, written by the workflow (its own words)."""

    what: str  # one paragraph: what the artifacts are and what a repair means here
    current: str  # the current state a repair builds on (the best prompt, the playbook)
    history: str  # what changed since the oldest stale item was made
    items: dict[str, str]  # item id -> the stale item rendered (with its motivating feedback)
    patch_format: str  # how ``patched`` must look in the answer
    #: JSON Schema of ``patched`` (for servers with constrained decoding); None: any JSON
    patch_schema: dict[str, Any] | None = None


@runtime_checkable
class StalenessPolicy(Protocol):
    name: str

    async def decide(self, item: StaleItem, ctx: StageContext) -> StaleDecision: ...


class FullAsync:
    """Accept every stale item as it is (the paper's *Full Async*)."""

    name = "full"

    async def decide(self, item: StaleItem, ctx: StageContext) -> StaleDecision:
        return StaleDecision(ACCEPT, reason="full async accepts all stale work")


POLICIES: dict[str, type[StalenessPolicy]] = {"full": FullAsync, "full_async": FullAsync}


def make_policy(spec: str | StalenessPolicy | None, **options: Any) -> StalenessPolicy:
    """A policy from its name (``"full"``, ``"guarded"``, ``"reflective"``) or an object."""
    if spec is None:
        return FullAsync()
    if not isinstance(spec, str):
        return spec
    return policy_class(spec)(**options)


def policy_class(name: str) -> type[StalenessPolicy]:
    """The policy class registered under ``name`` (case, ``-`` and ``_`` alike)."""
    _register_optional()
    try:
        return POLICIES[name.strip().lower().replace("-", "_")]
    except KeyError:
        raise ValueError(
            f"unknown staleness policy {name!r}; choose one of {sorted(set(POLICIES))}"
        ) from None


def _register_optional() -> None:
    """Policies that live in their own modules register themselves on import."""
    import importlib

    for mod in ("flashevolve.policies.guarded", "flashevolve.policies.reflective"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise
