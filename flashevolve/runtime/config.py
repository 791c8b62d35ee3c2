"""The runtime's settings and the worker counts a user asks for, checked before a run starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from flashevolve.errors import ConfigError


@dataclass
class RuntimeConfig:
    mode: str = "async"
    workers: dict[str, int] = field(default_factory=dict)
    #: jobs (proposal lines) in the pipeline at once; None: one per worker (the sum of the
    #: stages' worker counts) -- the adaptive controller moves it from there
    max_in_flight: int | None = None
    staleness_counter: str = "pool"  # which lag makes an item stale: "pool" or "frontier"
    seconds: float | None = None  # hard run-clock deadline
    load_every_s: float | None = 5.0  # ask the backends for their load this often (None: never)
    #: cancel an item whose requests made no progress for this long (None: no watchdog)
    stall_s: float | None = 600.0
    wind_down: float | Literal["auto"] | None = None  # Budget.wind_down: "auto", seconds, or off

    def __post_init__(self) -> None:
        if self.mode not in ("sync", "async"):
            raise ConfigError(f"mode must be 'sync' or 'async', not {self.mode!r}")
        if self.staleness_counter not in ("pool", "frontier"):
            raise ConfigError("staleness_counter must be 'pool' or 'frontier'")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError("max_in_flight must be at least 1")
        if self.load_every_s is not None and self.load_every_s <= 0:
            raise ConfigError("load_every_s must be positive (or None to not ask)")
        if self.stall_s is not None and self.stall_s <= 0:
            raise ConfigError("stall_s must be positive (or None for no watchdog)")


def resolve_workers(workers: Mapping[str, int] | None, workflow: Any) -> dict[str, int]:
    """Worker counts per stage: aliases expanded (GEPA's ``evaluate`` -> ``gate`` and
    ``validate``); an unknown stage or a count below one is a clear error."""
    aliases: Mapping[str, tuple[str, ...]] = getattr(workflow, "worker_aliases", {})
    out: dict[str, int] = {}
    for key, n in (workers or {}).items():
        for stage in aliases.get(key, (key,)):
            out[stage] = int(n)
    stages = [spec.name for spec in workflow.stages()]
    unknown = sorted(set(out) - set(stages))
    if unknown:
        raise ConfigError(
            f"workers given for unknown stages {unknown}; this workflow's stages are "
            f"{stages}" + (f" (aliases: {sorted(aliases)})" if aliases else "")
        )
    low = {stage: n for stage, n in out.items() if n < 1}
    if low:
        raise ConfigError(f"every stage needs at least one worker, got {low}")
    return out
