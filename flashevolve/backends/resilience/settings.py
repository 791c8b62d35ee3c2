"""The client's reliability settings: deadlines, hedging, retries, circuit breaker.

One validated record (pydantic at the boundary) shared by the HTTP client and the in-process
simulator's client path.  docs/reliability.md explains each rule.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flashevolve.errors import ConfigError


class ResilienceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- retries ------------------------------------------------------------------------------
    #: Attempts after the first one before a request fails for good.
    max_retries: int = Field(6, ge=0, le=100)
    #: Backoff before retry n (from 0): ``backoff_s * 2**n`` jittered by [0.5, 1.5), at most
    #: ``backoff_cap_s``.  A server's ``Retry-After`` replaces it.
    backoff_s: float = Field(0.5, ge=0)
    backoff_cap_s: float = Field(30.0, ge=0)
    #: The longest ``Retry-After`` obeyed; a server asking for more gets this much.
    max_retry_after_s: float = Field(120.0, ge=0)

    # -- deadlines ----------------------------------------------------------------------------
    #: deadline = clamp(multiplier x max(q99 latency of the stage, q90 seconds-per-token x
    #: q99 completion tokens of the stage, at most max_tokens), floor, cap);
    #: ``warmup_deadline_s`` until ``min_observations`` answers (and as many as were ever in
    #: flight at once).
    deadline_multiplier: float = Field(4.0, ge=1)
    deadline_floor_s: float = Field(10.0, gt=0)
    deadline_cap_s: float = Field(300.0, gt=0)
    warmup_deadline_s: float = Field(120.0, gt=0)
    min_observations: int = Field(8, ge=1)
    #: Answers remembered per stage (and for the per-token rate).
    window: int = Field(256, ge=8)

    # -- hedging ------------------------------------------------------------------------------
    hedge: bool = True
    #: A request still unanswered after this quantile of its stage's latencies gets a copy.
    hedge_quantile: float = Field(0.95, gt=0.5, lt=1)
    #: At most this fraction of requests get a copy (so hedging cannot double the load).
    hedge_budget: float = Field(0.1, ge=0, le=1)
    hedge_min_samples: int = Field(20, ge=1)

    # -- circuit breaker ----------------------------------------------------------------------
    #: Consecutive failed attempts that open the circuit.
    breaker_failures: int = Field(8, ge=1)
    #: How long the circuit stays open the first time; doubled at each failed probe, at most
    #: ``breaker_max_open_s``.
    breaker_open_s: float = Field(5.0, gt=0)
    breaker_max_open_s: float = Field(60.0, gt=0)
    #: A request that has waited this long for an open circuit fails (``circuit_open``).
    breaker_give_up_s: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.deadline_floor_s > self.deadline_cap_s:
            raise ValueError(
                f"deadline_floor_s ({self.deadline_floor_s:g}) must not exceed deadline_cap_s "
                f"({self.deadline_cap_s:g})"
            )
        if self.breaker_open_s > self.breaker_max_open_s:
            raise ValueError("breaker_open_s must not exceed breaker_max_open_s")
        return self


def resilience_settings(
    value: ResilienceSettings | dict[str, Any] | None = None, **overrides: Any
) -> ResilienceSettings:
    """Settings from a ResilienceSettings, a dict or nothing, with ``overrides`` (``None``
    values ignored) on top; bad values raise ``ConfigError`` naming the field."""
    base = value.model_dump() if isinstance(value, ResilienceSettings) else dict(value or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = ResilienceSettings.model_validate(base)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "resilience"
            problems.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
        raise ConfigError("resilience settings: " + "; ".join(problems)) from None
    return settings
