"""The shared context that stage handlers and policies receive."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from flashevolve.backends.base import LLM
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.pool import ArtifactPool
from flashevolve.runtime.budget import BudgetTracker
from flashevolve.runtime.clock import Clock
from flashevolve.tasks.base import Task


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
    #: everything, as GEPA does (the order of draws then couples the streams).
    rng_mode: str = "per-stage"
    settings: dict[str, Any] = field(default_factory=dict)
    speculation: Any = None  # speculation policy object (see flashevolve.policies.speculation)
    _rngs: dict[str, random.Random] = field(default_factory=dict)
    _counters: dict[str, itertools.count] = field(default_factory=dict)

    def rng(self, stream: str) -> random.Random:
        key = "shared" if self.rng_mode == "shared" else stream
        if key not in self._rngs:
            # Seeding with a string is stable across processes (it is hashed with SHA-512).
            self._rngs[key] = random.Random(f"{self.seed}:{key}" if key != "shared" else self.seed)
        return self._rngs[key]

    def new_id(self, prefix: str) -> str:
        counter = self._counters.setdefault(prefix, itertools.count(1))
        return f"{prefix}{next(counter)}"

    def now(self) -> float:
        return self.clock.now()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task:
        """Background work owned by the run (a speculative tail, a policy's timer): the runtime
        cancels it at shutdown, so nothing outlives the run.  Without a runtime (a policy driven
        directly in a test) it is a plain task."""
        runtime = self.settings.get("runtime")
        if runtime is not None and hasattr(runtime, "spawn"):
            return runtime.spawn(coro, name=name)
        return asyncio.create_task(coro, name=name)

    def emit(self, kind: Kind | str, **fields: Any) -> Event:
        fields.setdefault("pool_version", self.pool.pool_version)
        fields.setdefault("frontier_version", self.pool.frontier_version)
        return self.log.emit(kind, **fields)
