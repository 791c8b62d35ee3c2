"""Budgets: when a run stops.  Validated at the boundary; counted from events."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flashevolve.events.schema import Event, Kind


class Budget(BaseModel):
    """Stop conditions; the first one reached stops the run.

    ``seconds`` is run-clock time (virtual under the simulator) and stops hard: work still in
    flight is cancelled and its tokens counted as wasted.  The count budgets stop the creation of
    new work and let what is in flight finish (like GEPA, which checks only between iterations).
    """

    model_config = ConfigDict(extra="forbid")

    seconds: float | None = Field(default=None, gt=0, description="run-clock seconds")
    proposals: int | None = Field(default=None, gt=0)
    metric_calls: int | None = Field(default=None, gt=0, description="task rollouts scored")
    tokens: int | None = Field(default=None, gt=0, description="prompt + completion tokens")
    #: Near the time budget's end, start no job that could not finish (seconds before the
    #: deadline, or "auto" to measure it); flashevolve.policies.wind_down.  Off by default.
    wind_down: Literal["auto"] | float | None = Field(default=None)

    @model_validator(mode="after")
    def _wind_down_needs_seconds(self) -> Budget:
        if self.wind_down is not None:
            if self.seconds is None:
                raise ValueError(
                    "wind_down needs a time budget: set seconds too (or drop wind_down)"
                )
            if self.wind_down != "auto" and not self.wind_down > 0:
                raise ValueError("wind_down must be 'auto' or a positive number of seconds")
        return self

    def is_unbounded(self) -> bool:
        return all(
            v is None for v in (self.seconds, self.proposals, self.metric_calls, self.tokens)
        )


class BudgetTracker:
    """What a run has spent.  Proposals are counted from the event log (``proposal_made``,
    whatever the workflow), metric calls by the evaluation machinery, tokens by the backend
    wrapper.  On resume the counts continue (a count budget covers the whole run); the time
    budget is run-clock seconds *more* (see ``flashevolve run --resume``)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.proposals = 0
        self.metric_calls = 0
        self.tokens = 0

    def observe(self, event: Event) -> None:
        """Event-log subscriber: count proposals."""
        if event.kind == Kind.PROPOSAL_MADE:
            self.proposals += 1

    def snapshot(self) -> dict[str, int]:
        return {
            "proposals": self.proposals,
            "metric_calls": self.metric_calls,
            "tokens": self.tokens,
        }

    def restore(self, state: dict[str, int]) -> None:
        self.proposals = int(state.get("proposals", 0))
        self.metric_calls = int(state.get("metric_calls", 0))
        self.tokens = int(state.get("tokens", 0))

    def exhausted(self) -> str | None:
        """The reason a count budget is used up, or None."""
        b = self.budget
        if b.proposals is not None and self.proposals >= b.proposals:
            return f"proposal budget reached ({self.proposals}/{b.proposals})"
        if b.metric_calls is not None and self.metric_calls >= b.metric_calls:
            return f"metric-call budget reached ({self.metric_calls}/{b.metric_calls})"
        if b.tokens is not None and self.tokens >= b.tokens:
            return f"token budget reached ({self.tokens}/{b.tokens})"
        return None
