"""The fault SPEC: which faults a server (or the in-process simulator) injects, how often.

A SPEC is one line of comma-separated items::

    rate=0.25                              25% of requests get a fault, every kind equally likely
    rate=0.25,seed=7,hang=2,http500,http503  only these kinds, hang twice as likely as each other
    rate=0.1,http429_retry_after,retry_after_s=3

- ``rate``: the fraction of requests that get a fault (default 0.25).
- a kind name (``hang``) or ``kind=WEIGHT`` (``hang=2``): the kinds to draw from and their
  relative weights; naming none means every kind with weight 1.
- ``seed``: the seed of the draws (default 0); the same seed and arrival order give the same
  faults.
- ``drip_s`` (default 60): how long a ``drip`` answer takes to trickle in.
- ``hang_s`` (default 3600): how long a ``hang`` holds before the server itself drops it.
- ``retry_after_s`` (default 1) and ``retry_after_form`` (``seconds`` or ``date``): the
  ``Retry-After`` header of ``http429_retry_after``.

Each fault is drawn on arrival, in arrival order, from ``random.Random(seed)``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flashevolve.backends.base import Fault
from flashevolve.errors import ConfigError


class FaultKind(StrEnum):
    REFUSE = "refuse"  # the connection is reset before any byte of the answer
    RESET = "reset"  # part of the answer (plain or streamed), then a connection reset
    HANG = "hang"  # no byte at all until the client gives up
    DRIP = "drip"  # the answer trickles in over drip_s seconds
    HTTP429 = "http429"  # rate limited, no Retry-After
    HTTP429_RETRY_AFTER = "http429_retry_after"  # rate limited, with Retry-After
    HTTP500 = "http500"
    HTTP502 = "http502"
    HTTP503 = "http503"
    MALFORMED = "malformed"  # HTTP 200 with a body (or a stream event) that is not JSON
    TRUNCATED = "truncated"  # the body (or the stream) stops before its end
    EMPTY_CHOICES = "empty_choices"  # "choices": []
    MISSING_USAGE = "missing_usage"  # no usage record
    ABSURD_USAGE = "absurd_usage"  # a usage record that cannot be right
    WRONG_MODEL = "wrong_model"  # the answer names another model
    NULL_CONTENT = "null_content"  # the message content is null


#: What a client sees for each injected kind (``None``: nothing, if it arrives in time).
OBSERVED_AS: dict[FaultKind, Fault | None] = {
    FaultKind.REFUSE: Fault.CONNECTION,
    FaultKind.RESET: Fault.CONNECTION,
    FaultKind.HANG: Fault.TIMEOUT,
    FaultKind.DRIP: None,  # a timeout only if the drip outlasts the client's deadline
    FaultKind.HTTP429: Fault.RATE_LIMITED,
    FaultKind.HTTP429_RETRY_AFTER: Fault.RATE_LIMITED,
    FaultKind.HTTP500: Fault.SERVER_ERROR,
    FaultKind.HTTP502: Fault.SERVER_ERROR,
    FaultKind.HTTP503: Fault.SERVER_ERROR,
    FaultKind.MALFORMED: Fault.MALFORMED,
    FaultKind.TRUNCATED: Fault.TRUNCATED,
    FaultKind.EMPTY_CHOICES: Fault.EMPTY_CHOICES,
    FaultKind.MISSING_USAGE: Fault.MISSING_USAGE,
    FaultKind.ABSURD_USAGE: Fault.BAD_USAGE,
    FaultKind.WRONG_MODEL: Fault.WRONG_MODEL,
    FaultKind.NULL_CONTENT: Fault.NULL_CONTENT,
}

#: Kinds answered at once, before the responder runs (so they cost the server nothing).
EARLY_KINDS = frozenset(
    {
        FaultKind.REFUSE,
        FaultKind.HANG,
        FaultKind.HTTP429,
        FaultKind.HTTP429_RETRY_AFTER,
        FaultKind.HTTP500,
        FaultKind.HTTP502,
        FaultKind.HTTP503,
    }
)

STATUS_OF: dict[FaultKind, int] = {
    FaultKind.HTTP429: 429,
    FaultKind.HTTP429_RETRY_AFTER: 429,
    FaultKind.HTTP500: 500,
    FaultKind.HTTP502: 502,
    FaultKind.HTTP503: 503,
}

_SETTINGS = ("rate", "seed", "drip_s", "hang_s", "retry_after_s", "retry_after_form")


class FaultSpec(BaseModel):
    """A validated SPEC (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(0.25, gt=0, le=1)
    seed: int = 0
    weights: dict[FaultKind, float] = Field(default_factory=lambda: dict.fromkeys(FaultKind, 1.0))
    drip_s: float = Field(60.0, gt=0)
    hang_s: float = Field(3600.0, gt=0)
    retry_after_s: float = Field(1.0, ge=0)
    retry_after_form: Literal["seconds", "date"] = "seconds"

    @field_validator("weights")
    @classmethod
    def _some_weight(cls, value: dict[FaultKind, float]) -> dict[FaultKind, float]:
        for kind, weight in value.items():
            if not weight >= 0:
                raise ValueError(f"the weight of {kind} must be >= 0, got {weight}")
        if not any(w > 0 for w in value.values()):
            raise ValueError("give at least one fault kind a weight above 0")
        return {k: w for k, w in value.items() if w > 0}

    def describe(self) -> str:
        """The SPEC back as one line (every item explicit)."""
        kinds = ",".join(f"{k}={w:g}" for k, w in self.weights.items())
        return (
            f"rate={self.rate:g},seed={self.seed},{kinds},drip_s={self.drip_s:g},"
            f"hang_s={self.hang_s:g},retry_after_s={self.retry_after_s:g},"
            f"retry_after_form={self.retry_after_form}"
        )


def parse_fault_spec(spec: str | dict[str, Any] | FaultSpec | None) -> FaultSpec | None:
    """A SPEC string (or a dict of the same items, or a FaultSpec) -> :class:`FaultSpec`;
    ``None``, ``""`` or ``"none"`` -> ``None`` (no faults).  Bad items raise ``ConfigError``
    naming the item and what would be valid."""
    if spec is None or isinstance(spec, FaultSpec):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in ("", "none", "off"):
            return None
        items: dict[str, Any] = {}
        for part in text.split(","):
            key, sep, value = part.strip().partition("=")
            key = key.strip()
            if not key:
                raise ConfigError(f"fault spec {spec!r}: an empty item; separate items with ','")
            items[key] = value.strip() if sep else "1"
    elif isinstance(spec, dict):
        items = dict(spec)
    else:
        raise ConfigError(f"faults must be a SPEC string or a dict, not {type(spec).__name__}")
    return _validated(items, spec)


def _validated(items: dict[str, Any], original: object) -> FaultSpec:
    settings: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    known = {k.value for k in FaultKind}
    for key, value in items.items():
        if key in _SETTINGS:
            settings[key] = value
        elif key in known:
            weights[key] = value
        else:
            settings_list = ", ".join(f"{name}=" for name in _SETTINGS)
            raise ConfigError(
                f"fault spec {original!r}: unknown item {key!r}; use {settings_list} or fault "
                f"kinds (optionally =WEIGHT): {', '.join(sorted(known))}"
            )
    if weights:
        settings["weights"] = weights
    try:
        return FaultSpec.model_validate(settings)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            problems.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"fault spec {original!r}: " + "; ".join(problems)) from None
