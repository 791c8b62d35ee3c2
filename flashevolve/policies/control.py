"""Adaptive workflow control: move workers towards the stage that limits accepted proposals.

Every ``period_s`` (run clock, so it works on virtual time) the controller looks at the last
``window_s`` seconds of the event log and computes, per stage, its **capacity in jobs per minute**

    r_s = 60 * K_s / (E[t_s] * f_s)

- ``K_s``: the stage's current worker count;
- ``E[t_s]``: mean handling time of the stage's items in the window (``item_done.latency_s``);
  ``K_s / E[t_s]`` is how many items per second the stage can finish when it is kept busy;
- ``f_s``: items that entered the stage per job that entered the pipeline in the window
  (``item_enqueued`` counts); it normalises for filtering between stages -- only a fraction of
  proposals pass the gate, so the validate stage needs to handle ``f_validate`` items per job, not
  one.  Without this a downstream stage that simply receives less work would look "slow".

Raw output rates are not used because, with a bound on jobs in flight, every stage's output
settles at the bottleneck's rate; capacity is what differs between stages.

The rule (the paper's): with ``m`` the median of ``r_s`` over the stages measured in the window, a
stage with ``r_s < low * m`` (default 0.5) gains one worker and one with ``r_s > high * m``
(default 2) loses one, clamped to ``[min_workers, max_workers]``.  Every change goes through
``Runtime.set_workers`` and so is a ``workers_changed`` event whose reason states the rates.

Why this serves accepted proposals per minute: an accepted proposal needs one job through every
stage, so the pipeline's acceptance rate is ``min_s r_s`` times the gate pass rate.  Raising the
slowest stage's capacity raises that minimum; taking workers from a stage with twice the median
capacity costs nothing (it is idle part of the time) but frees backend capacity -- on a shared
server, fewer concurrent requests from an over-provisioned stage make everyone else's requests
finish sooner.  A stage with no finished item in the window is left alone (no evidence).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from flashevolve.events.schema import Event, Kind


@dataclass(slots=True)
class StageRate:
    stage: str
    workers: int
    done: int  # items finished in the window
    mean_latency_s: float
    per_job: float  # f_s
    capacity_per_min: float  # r_s


class AdaptiveController:
    """Grow the slowest stage, shrink the over-provisioned one, every ``period_s`` seconds."""

    def __init__(
        self,
        period_s: float = 30.0,
        window_s: float = 120.0,
        min_workers: int = 1,
        max_workers: int = 32,
        low: float = 0.5,
        high: float = 2.0,
        stages: list[str] | None = None,
        min_done: int = 2,
        grow_when_balanced: bool = True,
        min_gain: float = 0.05,
    ) -> None:
        if period_s <= 0 or window_s <= 0:
            raise ValueError("period_s and window_s must be positive")
        if not 1 <= min_workers <= max_workers:
            raise ValueError("need 1 <= min_workers <= max_workers")
        if not 0 < low < 1 < high:
            raise ValueError("need 0 < low < 1 < high")
        self.period_s = period_s
        self.window_s = window_s
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.low = low
        self.high = high
        self.stages = stages
        self.min_done = min_done
        self.grow_when_balanced = grow_when_balanced
        self.min_gain = min_gain
        self._probe: tuple[float, float] | None = None  # (ts, jobs/min) at the last growth
        self._hold_until = 0.0
        self._done: deque[tuple[float, str, float]] = deque()
        self._entered: deque[tuple[float, str]] = deque()
        self.history: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return (
            f"AdaptiveController(period_s={self.period_s}, window_s={self.window_s}, "
            f"min_workers={self.min_workers}, max_workers={self.max_workers})"
        )

    # -- measurement --------------------------------------------------------------------------
    def observe(self, event: Event) -> None:
        """Event-log listener: keep what the rates need (cheap; no frame is built)."""
        if event.kind == Kind.ITEM_DONE and event.stage is not None:
            self._done.append((event.ts, event.stage, event.latency_s or 0.0))
        elif event.kind == Kind.ITEM_ENQUEUED and event.stage is not None:
            self._entered.append((event.ts, event.stage))

    def rates(self, now: float, workers: dict[str, int], entry: str) -> dict[str, StageRate]:
        start = now - self.window_s
        while self._done and self._done[0][0] < start:
            self._done.popleft()
        while self._entered and self._entered[0][0] < start:
            self._entered.popleft()
        lat: dict[str, list[float]] = {}
        for _, stage, latency in self._done:
            lat.setdefault(stage, []).append(latency)
        entered: dict[str, int] = {}
        for _, stage in self._entered:
            entered[stage] = entered.get(stage, 0) + 1
        jobs = entered.get(entry, 0)
        out = {}
        for stage, n in workers.items():
            if self.stages is not None and stage not in self.stages:
                continue
            samples = lat.get(stage, [])
            if len(samples) < self.min_done:
                continue
            mean_t = max(sum(samples) / len(samples), 1e-6)
            per_job = entered.get(stage, 0) / jobs if jobs else 1.0
            per_job = max(per_job, 1e-3)
            out[stage] = StageRate(
                stage, n, len(samples), mean_t, per_job, 60.0 * n / (mean_t * per_job)
            )
        return out

    def decide(self, rates: dict[str, StageRate]) -> dict[str, tuple[int, str]]:
        """The rule: new worker counts (with reasons) for the stages that change."""
        if len(rates) < 2:
            return {}
        median = statistics.median(r.capacity_per_min for r in rates.values())
        changes = {}
        for s, r in rates.items():
            if r.capacity_per_min < self.low * median and r.workers < self.max_workers:
                changes[s] = (
                    r.workers + 1,
                    f"capacity {r.capacity_per_min:.2f} jobs/min < "
                    f"{self.low:g} x median {median:.2f}",
                )
            elif r.capacity_per_min > self.high * median and r.workers > self.min_workers:
                changes[s] = (
                    r.workers - 1,
                    f"capacity {r.capacity_per_min:.2f} jobs/min > "
                    f"{self.high:g} x median {median:.2f}",
                )
        return changes

    def jobs_per_min(self, now: float, entry: str) -> float:
        """Pipeline throughput: jobs that entered in the window (with a bound on jobs in
        flight a job enters when another leaves, so this is the completion rate too)."""
        n = sum(1 for ts, stage in self._entered if stage == entry and ts >= now - self.window_s)
        return 60.0 * n / self.window_s

    def probe(
        self, rates: dict[str, StageRate], now: float, throughput: float
    ) -> dict[str, tuple[int, str]]:
        """When the stages are balanced, try one more worker on the bottleneck; keep doing so
        while pipeline throughput grows by ``min_gain`` per window, pause two windows if not."""
        if not self.grow_when_balanced or len(rates) < 2 or now < self._hold_until:
            return {}
        if self._probe is not None:
            t0, before = self._probe
            if now - t0 < self.window_s:
                return {}  # the last growth is not measurable yet
            self._probe = None
            if throughput < before * (1 + self.min_gain):
                self._hold_until = now + 2 * self.window_s
                return {}
        slowest = min(rates.values(), key=lambda r: r.capacity_per_min)
        if slowest.workers >= self.max_workers:
            return {}
        self._probe = (now, throughput)
        return {
            slowest.stage: (
                slowest.workers + 1,
                f"balanced; bottleneck at "
                f"{slowest.capacity_per_min:.2f} jobs/min, throughput "
                f"{throughput:.2f} jobs/min: probe one more worker",
            )
        }

    def step(self, runtime: Any, now: float) -> dict[str, tuple[int, str]]:
        rates = self.rates(now, dict(runtime.targets), runtime.entry)
        changes = self.decide(rates)
        if not changes:
            changes = self.probe(rates, now, self.jobs_per_min(now, runtime.entry))
        self.history.append(
            {
                "ts": now,
                "rates": {s: r.capacity_per_min for s, r in rates.items()},
                "workers": dict(runtime.targets),
                "changes": {s: n for s, (n, _) in changes.items()},
            }
        )
        for stage, (n, reason) in changes.items():
            runtime.set_workers(stage, n, reason=f"adaptive: {reason}")
        return changes

    async def run(self, runtime: Any) -> None:
        """The control loop; the runtime starts it as a task and cancels it at shutdown."""
        if runtime.config.mode == "sync":
            return  # one worker per stage is what sync means
        runtime.ctx.log.subscribe(self.observe)
        while True:
            await runtime.ctx.clock.sleep(self.period_s)
            self.step(runtime, runtime.ctx.now())
