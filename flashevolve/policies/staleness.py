"""Staleness policies: what to do with work made against an older pool.

An item is *stale* when the pool moved since its basis was chosen:
``lag = pool_version - version_stamp`` (or the frontier counter, by setting).  The runtime hands
every stale item that reaches a checking stage to the policy and obeys the returned decision:

- ``accept``  -- process it as is;
- ``discard`` -- drop it (its job ends);
- ``patch``   -- replace its artifact with ``decision.artifact`` (re-stamped to the current pool);
- ``merged``  -- drop it because its content went into another item's patch.

Policies are small objects; the LLM-backed ones receive what they need through the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from flashevolve.artifacts import Artifact

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext

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


@dataclass(slots=True)
class StaleDecision:
    action: str
    reason: str = ""
    artifact: Artifact | None = None  # the repaired artifact, for ``patch``
    merged_into: str | None = None  # artifact id, for ``merged``
    patched_from: tuple[str, ...] = ()  # item ids folded into ``artifact``
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in DECISIONS:
            raise ValueError(f"unknown staleness decision {self.action!r}")
        if self.action == PATCH and self.artifact is None:
            raise ValueError("a patch decision must carry the repaired artifact")


@runtime_checkable
class StalenessPolicy(Protocol):
    name: str

    async def decide(self, item: StaleItem, ctx: StageContext) -> StaleDecision: ...


class FullAsync:
    """Accept every stale item as it is (the paper's *Full Async*)."""

    name = "full"

    async def decide(self, item: StaleItem, ctx: StageContext) -> StaleDecision:
        return StaleDecision(ACCEPT, reason="full async accepts all stale work")


POLICIES: dict[str, type] = {"full": FullAsync, "full_async": FullAsync}


def make_policy(spec: str | StalenessPolicy | None, **options: Any) -> StalenessPolicy:
    """A policy from its name (``"full"``, ``"guarded"``, ``"reflective"``) or an object."""
    if spec is None:
        return FullAsync()
    if not isinstance(spec, str):
        return spec
    return policy_class(spec)(**options)


def policy_class(name: str) -> type:
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
