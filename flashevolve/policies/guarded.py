"""*Guarded Async*: accept stale work only while it is close enough to the present.

Two limits, either of which may be switched off with ``None``:

- ``max_lag``: the item's lag on the chosen counter (``"pool"`` = admissions since the item's
  parent was chosen, ``"frontier"`` = Pareto-front changes since then);
- ``max_age_s``: run-clock seconds since the item's basis was chosen.

An item the workflow marks as conflicting (``StaleItem.conflict``: e.g. an ACE operation whose
target bullets changed since its stamp) is discarded whatever its lag: Guarded never applies work
it knows no longer fits.

The paper leaves delta_max unspecified; 2 pool versions is our default because, with GEPA's
Pareto selection, two admissions rarely move the candidate a proposal was built on out of the
front, while longer lags increasingly mean the proposal fixes failures that are already fixed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from flashevolve.policies.staleness import ACCEPT, DISCARD, POLICIES, StaleDecision, StaleItem

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext


class Guarded:
    """Accept a stale item if it has no conflict, its lag <= ``max_lag`` and its age <=
    ``max_age_s``; else discard."""

    name = "guarded"

    def __init__(
        self,
        max_lag: int | None = 2,
        max_age_s: float | None = None,
        counter: Literal["pool", "frontier"] = "pool",
    ) -> None:
        if counter not in ("pool", "frontier"):
            raise ValueError(f"counter must be 'pool' or 'frontier', not {counter!r}")
        if max_lag is not None and max_lag < 0:
            raise ValueError("max_lag must be >= 0 (or None for no lag limit)")
        if max_age_s is not None and max_age_s < 0:
            raise ValueError("max_age_s must be >= 0 (or None for no age limit)")
        self.max_lag = max_lag
        self.max_age_s = max_age_s
        self.counter = counter

    def __repr__(self) -> str:
        return (
            f"Guarded(max_lag={self.max_lag}, max_age_s={self.max_age_s}, counter={self.counter!r})"
        )

    async def decide(self, item: StaleItem, ctx: StageContext | None = None) -> StaleDecision:
        lag = item.lag if self.counter == "pool" else item.frontier_lag
        data = {
            "counter": self.counter,
            "checked_lag": lag,
            "age_s": item.age_s,
            "max_lag": self.max_lag,
            "max_age_s": self.max_age_s,
        }
        if item.conflict is not None:
            return StaleDecision(
                DISCARD, reason=f"conflict: {item.conflict}", data={**data, "limit": "conflict"}
            )
        if self.max_lag is not None and lag > self.max_lag:
            return StaleDecision(
                DISCARD,
                reason=f"{self.counter} lag {lag} > max_lag {self.max_lag}",
                data={**data, "limit": "lag"},
            )
        if self.max_age_s is not None and item.age_s > self.max_age_s:
            return StaleDecision(
                DISCARD,
                reason=f"age {item.age_s:.1f} s > max_age_s {self.max_age_s:g} s",
                data={**data, "limit": "age"},
            )
        return StaleDecision(
            ACCEPT,
            reason=f"{self.counter} lag {lag} and age {item.age_s:.1f} s within limits",
            data=data,
        )


POLICIES["guarded"] = Guarded
POLICIES["guarded_async"] = Guarded
