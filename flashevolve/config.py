"""The run configuration, validated at the boundary with messages that name the field."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flashevolve.errors import ConfigError
from flashevolve.runtime.budget import Budget

ModelT = TypeVar("ModelT", bound=BaseModel)


class RunConfig(BaseModel):
    """Scalar settings of an :class:`~flashevolve.Evolver` (objects are passed beside it)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["sync", "async"] = "async"
    seed: int = 0
    budget: Budget = Field(default_factory=Budget)
    workers: dict[str, int] = Field(default_factory=dict)
    #: Jobs in flight at once (async); ``None``: one per worker at the start, then the adaptive
    #: controller (the async default) sizes it from the server's load.
    max_in_flight: int | None = Field(default=None, ge=1)
    staleness_counter: Literal["pool", "frontier"] = "pool"
    rng: Literal["per-stage", "shared"] = "per-stage"
    #: Ask the backends for their own load (requests running / waiting) this often, in seconds
    #: of the run clock; ``None`` never asks.  Backends that cannot tell are asked once.
    load_every_s: float | None = Field(default=5.0, gt=0)
    #: The watchdog cancels a work item whose requests made no progress for this many seconds
    #: of the run clock (flashevolve.runtime.watchdog); ``None`` turns it off.
    stall_s: float | None = Field(default=600.0, gt=0)

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, value: dict[str, int]) -> dict[str, int]:
        for stage, n in value.items():
            if int(n) < 1:
                raise ValueError(f"stage {stage!r} needs at least 1 worker, got {n}")
        return value


def coerce_budget(budget: Any) -> Budget:
    """Accept a Budget, a dict, or a number of seconds."""
    if budget is None:
        return Budget()
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, int | float):
        return validated(Budget, {"seconds": float(budget)}, "budget")
    if isinstance(budget, dict):
        return validated(Budget, budget, "budget")
    raise ConfigError(
        f"budget must be a number of seconds, a dict or flashevolve.Budget, not {type(budget).__name__}"
    )


def validated(model: type[ModelT], data: dict[str, Any], where: str) -> ModelT:
    """Validate ``data`` and turn pydantic's errors into one readable ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or where
            lines.append(f"{where}.{loc}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
