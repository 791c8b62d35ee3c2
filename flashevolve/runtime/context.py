"""The shared context that stage handlers and policies receive."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flashevolve.backends.base import LLM
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.pool import ArtifactPool
from flashevolve.runtime.budget import BudgetTracker
from flashevolve.runtime.clock import Clock
from flashevolve.tasks.base import Task

if TYPE_CHECKING:
    from flashevolve.policies.staleness import StaleDecision, StaleItem


class RuntimeHandle(Protocol):
    """What handlers and policies may ask of the running scheduler."""

    targets: dict[str, int]  # worker count per stage

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str | None = None
    ) -> asyncio.Task[Any]: ...

    async def judge_stale(self, view: StaleItem, *, stage: str) -> StaleDecision: ...

    def request_stop(self, reason: str, *, graceful: bool = True) -> None: ...


@dataclass
class StageContext:
    task: Task
    pool: ArtifactPool
    log: EventLog
    clock: Clock
    task_llm: LLM
    reflection_llm: LLM
    tracker: BudgetTracker
    seed: int = 0
    #: ``"per-stage"``: every stream has its own seeded RNG (default); ``"shared"``: one RNG for
    #: every decision (parent, minibatch, merge, shuffles), as GEPA does -- the order of draws then
    #: couples them.  Request-seed streams (named ``"seed:..."``) stay separate in both modes:
    #: gepa seeds no requests, so drawing them from the shared RNG would shift its sequence.
    rng_mode: str = "per-stage"
    speculation: Any = None  # speculation settings (flashevolve.policies.speculation)
    #: The workflow of the run: policies ask it how stale items look and how repairs re-enter.
    workflow: Any = None
    #: The scheduler running this context (None when a policy or handler is driven directly,
    #: e.g. in a test).
    runtime: RuntimeHandle | None = None
    _rngs: dict[str, random.Random] = field(default_factory=dict)
    _counters: dict[str, int] = field(default_factory=dict)

    def rng(self, stream: str) -> random.Random:
        shared = self.rng_mode == "shared" and not stream.startswith("seed:")
        key = "shared" if shared else stream
        if key not in self._rngs:
            # Seeding with a string is stable across processes (it is hashed with SHA-512).
            self._rngs[key] = random.Random(f"{self.seed}:{key}" if key != "shared" else self.seed)
        return self._rngs[key]

    def new_id(self, prefix: str) -> str:
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}{n}"

    def now(self) -> float:
        return self.clock.now()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Background work owned by the run (a speculative tail, a policy's timer): the runtime
        cancels it at shutdown, so nothing outlives the run.  Without a runtime (a policy driven
        directly in a test) it is a plain task."""
        if self.runtime is not None:
            return self.runtime.spawn(coro, name=name)
        return asyncio.create_task(coro, name=name)

    def workers(self, stage: str) -> int | None:
        """Workers of ``stage`` in the running scheduler (None without one)."""
        return None if self.runtime is None else self.runtime.targets.get(stage)

    def emit(self, kind: Kind | str, **fields: Any) -> Event:
        fields.setdefault("pool_version", self.pool.pool_version)
        fields.setdefault("frontier_version", self.pool.frontier_version)
        return self.log.emit(kind, **fields)

    # -- what survives a restart ----------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every RNG stream's state and the id counters, as plain JSON values."""
        return {
            "rngs": {k: _rng_state(r) for k, r in sorted(self._rngs.items())},
            "counters": dict(self._counters),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue the RNG streams and id counters of a :meth:`snapshot` (so a resumed run
        draws what the uninterrupted one would have drawn, and its ids do not repeat)."""
        for key, raw in dict(state.get("rngs", {})).items():
            rng = random.Random()
            rng.setstate(_rng_from_json(raw))
            self._rngs[key] = rng
        for prefix, n in dict(state.get("counters", {})).items():
            self._counters[prefix] = max(int(n), self._counters.get(prefix, 0))


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from_json(raw: Any) -> tuple[Any, ...]:
    version, internal, gauss = raw
    return (int(version), tuple(int(x) for x in internal), gauss)
