"""Winding down before a time budget ends: stop starting jobs that could not finish.

A time budget stops a run hard: everything still in flight is cancelled.  Under load a job takes
minutes from parent selection to admission (simulated vLLM, 32 workers per stage, 96 jobs in
flight: median 562 s), so with a wide pipeline the last minutes of a run start jobs that cannot
finish, and their requests slow down the ones that could.  Winding down starts no new job once
the time left is shorter than ``margin_s``; the jobs in flight then finish on a server that has
room, and the run still ends at its deadline (rates stay per budget minute).

``margin_s="auto"`` measures it: by default the fastest (``quantile=0``) of the last ``recent``
(50) jobs' times from start to admission (the ``latency_s`` of ``admitted`` events).  A job
started with less time left than even the fastest recent job took would most likely be wasted.
Without ``min_samples`` admissions yet there is no evidence and nothing winds down.  Why the fast
end of the distribution and not the median: once no new jobs enter, the server's queue empties
and the jobs in flight finish faster than they did under load.  The quantile was chosen among
0, 0.05, 0.1 and 0.25 on seeds 0-5 of the simulated vLLM profile (0 was best or tied on every
configuration tried) and checked on seeds 6-11; docs/benchmarks.md section 4.

Wind-down is off unless asked for (``Budget(wind_down=...)``): the GEPA baseline has no such
thing, and comparisons with it should not get it silently.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from flashevolve.events.schema import Event, Kind


class WindDown:
    """When to stop starting jobs before a time budget's deadline."""

    def __init__(
        self,
        margin_s: float | Literal["auto"] = "auto",
        *,
        quantile: float = 0.0,
        recent: int = 50,
        min_samples: int = 5,
    ) -> None:
        if margin_s != "auto" and not (isinstance(margin_s, int | float) and margin_s > 0):
            raise ValueError(f"margin_s must be 'auto' or positive seconds, not {margin_s!r}")
        if not 0 <= quantile <= 1:
            raise ValueError("quantile must be within [0, 1]")
        if recent < 1 or min_samples < 1:
            raise ValueError("recent and min_samples must be at least 1")
        self.margin_s = margin_s
        self.quantile = quantile
        self.min_samples = min_samples
        #: seconds from job start to admission of the most recent admissions
        self.job_times: deque[float] = deque(maxlen=recent)

    def __repr__(self) -> str:
        return f"WindDown(margin_s={self.margin_s!r}, quantile={self.quantile})"

    def observe(self, event: Event) -> None:
        """Event-log listener: keep the job times of admissions."""
        if event.kind == Kind.ADMITTED and event.latency_s is not None:
            self.job_times.append(event.latency_s)

    def margin(self) -> float | None:
        """Seconds before the deadline from which no job starts; ``None``: no evidence yet."""
        if self.margin_s != "auto":
            return float(self.margin_s)
        if len(self.job_times) < self.min_samples:
            return None
        times = sorted(self.job_times)
        return times[round(self.quantile * (len(times) - 1))]

    def stop_reason(self, remaining_s: float) -> str | None:
        """Why no job should start with ``remaining_s`` left, or ``None`` if one may."""
        margin = self.margin()
        if margin is None or remaining_s >= margin:
            return None
        how = (
            f"the {self.quantile:g} quantile of the last {len(self.job_times)} jobs' times "
            "from start to admission"
            if self.margin_s == "auto"
            else "wind_down"
        )
        return (
            f"winding down: {remaining_s:.0f} s left, under the {margin:.0f} s margin ({how}); "
            "jobs in flight finish, no new ones start"
        )
