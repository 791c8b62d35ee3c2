"""Adaptive workflow control: steer workers and the job bound by accepted proposals per minute.

**Objective.** Accepted proposals per minute (the paper's, section 2), and through it the best
score over time.  An accepted proposal is one job through every stage, its last stage (GEPA:
``validate``) included, so throughput is the slowest stage's capacity -- and on a shared server
every stage's capacity depends on how much the others ask of the same server.

**Signals**, every ``period_s`` (run clock, so it works on virtual time), over the last
``window_s`` seconds:

- each stage's **capacity in jobs per minute** ``r_s = 60 * K_s / (E[t_s] * f_s)``: ``K_s``
  workers, ``E[t_s]`` mean ``item_done.latency_s`` in the window, ``f_s`` items that entered the
  stage per job that entered the pipeline over the **whole run** (a per-window count is far too
  noisy for a stage like validate, which sees a few gate-passed children per window).  Raw
  output rates are not used: with a bound on jobs in flight they all settle at the bottleneck's;
- the **objective signal**: tokens generated per minute by the requests of the admitting stage
  (:class:`~flashevolve.policies.control_signals.ObjectiveSignal`) -- accepted proposals per
  minute measured in the work that makes them;
- the **queue**: requests waiting (at the server, as it reports, and in the client's own queue)
  per request the server serves (:class:`~flashevolve.policies.control_signals.LoadSignal`).

**Update rule**, in this order:

1. **Backpressure**.  Queue above ``queue_high`` (default 2): requests pile up in front of the
   server and more concurrency buys only waiting -- a trial in progress is undone at once,
   otherwise the job bound shrinks by ``shrink`` (x0.75, not below ``min_in_flight``), at most
   once a window (a change needs a window to show); so does a share of requests failed for
   good above ``max_failed`` (2%: a rate limit refusing work).  Queue above ``queue_low``
   (0.5): nothing grows, and the balance rule only removes workers.  Why 2 and not 1: a server whose KV cache
   is full keeps a queue of about one request per request served at its best (the simulated
   vLLM profile: the best fixed settings run at 0.5-1.3), and work started minutes ago lands
   there late, so a shrink at 1 answered the start-up wave and starved the server five minutes
   later: started at the best fixed setting (2.206 accepted/min fixed, seeds 0-11) the
   controller made 2.125 with 1 and 2.203 with 2 (docs/mechanisms.md).
2. **Balance** (the paper's rule): with ``m`` the median of ``r_s``, ``r_s < low * m`` (0.5)
   gains a worker, ``r_s > high * m`` (2) loses one, within ``[min_workers, max_workers]``.
3. **Scale** (ours; ``scale=False`` turns it off): balanced, every stage measured and the queue
   low -- try every stage and the job bound (``bound=False`` leaves it alone) ``growth`` (+25%)
   wider, ``initial_growth`` (+100%) until the first undo or shrink (TCP's slow start: the ramp
   from a small start is run time not spent at the right width).  One window later the objective
   signal must have risen by ``min_return`` x the growth (+10% for a doubling) to keep the
   workers and by ``bound_min_return`` x it (+50%) to keep the bound: extra jobs in flight make
   every job slower and staler, idle workers cost nothing.  A trial that pays for neither is
   undone and trials rest ``hold_windows`` windows; one that pays for the workers only keeps them
   and the bound sits out ``hold_windows`` windows.  Nothing else changes while a trial runs.

Every change goes through ``Runtime.set_workers`` / ``Runtime.set_max_in_flight``: a
``workers_changed`` / ``job_bound_changed`` event whose reason states the rates, the signal or
the queue.  A stage with fewer than ``min_done`` finished items in the window is left alone.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from flashevolve.events.schema import Event, Kind
from flashevolve.policies.control_signals import Load, LoadSignal, ObjectiveSignal


@dataclass(slots=True)
class StageRate:
    stage: str
    workers: int
    done: int  # items finished in the window
    mean_latency_s: float
    per_job: float  # f_s
    capacity_per_min: float  # r_s


@dataclass(slots=True)
class _Trial:
    """A scale-up being measured."""

    started: float
    before: float  # objective signal in the window before
    growth: float
    workers: dict[str, int]  # before
    bound: int | None  # before; None when the bound is not part of the trial


class AdaptiveController:
    """Balance the stages (the paper's rule), widen them while it pays in accepted work, and
    narrow the job bound when requests pile up in front of the server."""

    def __init__(
        self,
        period_s: float = 30.0,
        window_s: float = 120.0,
        min_workers: int = 1,
        max_workers: int = 64,
        low: float = 0.5,
        high: float = 2.0,
        stages: list[str] | None = None,
        min_done: int = 2,
        scale: bool = True,
        growth: float = 0.25,
        initial_growth: float = 1.0,
        min_return: float = 0.1,
        bound_min_return: float = 0.5,
        hold_windows: int = 2,
        bound: bool = True,
        max_in_flight_cap: int = 512,
        min_in_flight: int = 4,
        queue_low: float = 0.5,
        queue_high: float = 2.0,
        shrink: float = 0.75,
        max_failed: float = 0.02,
        objective_stages: list[str] | None = None,
    ) -> None:
        if period_s <= 0 or window_s <= 0:
            raise ValueError("period_s and window_s must be positive")
        if not 1 <= min_workers <= max_workers:
            raise ValueError("need 1 <= min_workers <= max_workers")
        if not 0 < low < 1 < high:
            raise ValueError("need 0 < low < 1 < high")
        if growth <= 0 or initial_growth <= 0 or hold_windows < 0:
            raise ValueError("need growth > 0, initial_growth > 0 and hold_windows >= 0")
        if not 0 <= min_return <= bound_min_return <= 1:
            raise ValueError("need 0 <= min_return <= bound_min_return <= 1")
        if not 1 <= min_in_flight <= max_in_flight_cap:
            raise ValueError("need 1 <= min_in_flight <= max_in_flight_cap")
        if not 0 <= queue_low <= queue_high:
            raise ValueError("need 0 <= queue_low <= queue_high")
        if not 0 < shrink < 1:
            raise ValueError("shrink must be in (0, 1)")
        self.period_s = period_s
        self.window_s = window_s
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.low = low
        self.high = high
        self.stages = stages
        self.min_done = min_done
        self.scale = scale
        self.growth = growth
        self.initial_growth = initial_growth
        self.min_return = min_return
        self.bound_min_return = bound_min_return
        self.hold_windows = hold_windows
        self.bound = bound
        self.max_in_flight_cap = max_in_flight_cap
        self.min_in_flight = min_in_flight
        self.queue_low = queue_low
        self.queue_high = queue_high
        self.shrink = shrink
        self.max_failed = max_failed
        self.objective = ObjectiveSignal(objective_stages)
        self.load = LoadSignal()
        self._undone = False  # no trial undone (nor bound shrunk) yet: grow by initial_growth
        self._trial: _Trial | None = None
        self._hold_until = 0.0
        self._bound_hold_until = 0.0
        self._shrink_ready = 0.0
        self._total_entered: dict[str, int] = {}  # whole run, for f_s
        self._done: deque[tuple[float, str, float]] = deque()
        self.history: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return (
            f"AdaptiveController(period_s={self.period_s}, window_s={self.window_s}, "
            f"min_workers={self.min_workers}, max_workers={self.max_workers}, "
            f"scale={self.scale}, bound={self.bound}, queue_low={self.queue_low}, "
            f"queue_high={self.queue_high})"
        )

    # -- measurement --------------------------------------------------------------------------
    def observe(self, event: Event) -> None:
        """Event-log listener: keep what the signals need (cheap; no frame is built)."""
        if event.kind == Kind.ITEM_DONE and event.stage is not None:
            self._done.append((event.ts, event.stage, event.latency_s or 0.0))
        elif event.kind == Kind.ITEM_ENQUEUED and event.stage is not None:
            self._total_entered[event.stage] = self._total_entered.get(event.stage, 0) + 1
        else:
            self.objective.observe(event)
            self.load.observe(event)

    def rates(self, now: float, workers: dict[str, int], entry: str) -> dict[str, StageRate]:
        start = now - self.window_s
        while self._done and self._done[0][0] < start:
            self._done.popleft()
        lat: dict[str, list[float]] = {}
        for _, stage, latency in self._done:
            lat.setdefault(stage, []).append(latency)
        entered = self._total_entered
        jobs = entered.get(entry, 0)
        out = {}
        for stage, n in workers.items():
            if self.stages is not None and stage not in self.stages:
                continue
            samples = lat.get(stage, [])
            if len(samples) < self.min_done:
                continue
            mean_t = max(sum(samples) / len(samples), 1e-6)
            per_job = max(entered.get(stage, 0) / jobs if jobs else 1.0, 1e-3)
            out[stage] = StageRate(
                stage, n, len(samples), mean_t, per_job, 60.0 * n / (mean_t * per_job)
            )
        return out

    def decide(self, rates: dict[str, StageRate], grow: bool = True) -> dict[str, tuple[int, str]]:
        """The paper's rule: new worker counts (with reasons) for the stages that change;
        ``grow=False`` (backpressure) keeps only the removals."""
        if len(rates) < 2:
            return {}
        median = statistics.median(r.capacity_per_min for r in rates.values())
        changes = {}
        for s, r in rates.items():
            if grow and r.capacity_per_min < self.low * median and r.workers < self.max_workers:
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

    # -- backpressure -------------------------------------------------------------------------
    def backpressure(self, load: Load | None, now: float, runtime: Any) -> dict[str, Any] | None:
        """Requests pile up in front of the server: undo a trial in progress, or shrink the job
        bound (at most once a window).  Returns the worker changes when it acted, else None."""
        if load is None or (load.queue <= self.queue_high and load.failed_share <= self.max_failed):
            return None
        self._undone = True  # past the knee: no more doubling
        why = (
            f"{load.describe()} > {self.queue_high:g}"
            if load.queue > self.queue_high
            else f"{load.describe()} (more than {self.max_failed:.0%})"
        )
        if self._trial is not None:
            trial, self._trial = self._trial, None
            self._hold_until = now + self.hold_windows * self.window_s
            reason = f"adaptive: backpressure, {why}: undo the trial"
            if trial.bound is not None:
                runtime.set_max_in_flight(trial.bound, reason=reason)
            return {s: (n, reason[len("adaptive: ") :]) for s, n in self._differing(trial, runtime)}
        if not self.bound or now < self._shrink_ready:
            return {}
        bound = getattr(runtime, "max_in_flight", None)
        if bound is not None and bound > self.min_in_flight:
            new = max(self.min_in_flight, math.floor(bound * self.shrink))
            runtime.set_max_in_flight(new, reason=f"adaptive: backpressure, {why}: shrink")
        self._shrink_ready = now + self.window_s
        self._hold_until = max(self._hold_until, now + self.window_s)
        return {}

    @staticmethod
    def _differing(trial: _Trial, runtime: Any) -> list[tuple[str, int]]:
        return [(s, n) for s, n in trial.workers.items() if runtime.targets.get(s) != n]

    # -- scale trials -------------------------------------------------------------------------
    def judge(self, now: float, runtime: Any, signal: float) -> dict[str, tuple[int, str]] | None:
        """Judge the trial in progress once a whole window lies after it; None while waiting."""
        trial = self._trial
        assert trial is not None
        if now - trial.started < self.window_s:
            return None
        self._trial = None
        needed = self.min_return * trial.growth
        # No admitting work before the trial (the pipeline not filled yet): nothing to lose.
        gained = signal / trial.before - 1 if trial.before > 0 else math.inf
        if gained < needed:
            self._undone = True
            self._hold_until = now + self.hold_windows * self.window_s
            why = (
                f"{trial.growth:.0%} more gained too little ({trial.before:,.0f} -> "
                f"{signal:,.0f} admitting tokens/min, needed +{needed:.0%}): undo"
            )
            if trial.bound is not None:
                runtime.set_max_in_flight(trial.bound, reason=f"adaptive: {why}")
            return {s: (n, why) for s, n in self._differing(trial, runtime)}
        bound_needed = self.bound_min_return * trial.growth
        if trial.bound is not None and gained < bound_needed:
            # Worth the workers, not the extra jobs: more jobs in flight make every job slower
            # and staler, so they must buy clearly more admitting work.
            self._bound_hold_until = now + self.hold_windows * self.window_s
            runtime.set_max_in_flight(
                trial.bound,
                reason=f"adaptive: {trial.growth:.0%} more jobs in flight gained {gained:.0%} "
                f"admitting tokens/min, needed +{bound_needed:.0%}: undo the job bound only",
            )
        # It paid: keep it.  The next trial starts a period later: the window just judged is the
        # one right after a change.
        return {}

    def start_trial(
        self, rates: dict[str, StageRate], now: float, runtime: Any, signal: float
    ) -> dict[str, tuple[int, str]]:
        """Widen every measured stage (and the job bound) by the current growth."""
        workers = dict(runtime.targets)
        # Only when every stage has evidence: growing a stage we cannot measure is a guess.
        if not self.scale or now < self._hold_until or len(rates) < max(2, len(workers)):
            return {}
        growth = self.growth if self._undone else self.initial_growth

        def grow(n: int, cap: int) -> int:
            return min(cap, max(n + 1, math.ceil(n * (1 + growth))))

        grown = {
            s: grow(n, self.max_workers)
            for s, n in workers.items()
            if s in rates and n < self.max_workers
        }
        bound: int | None = None
        if self.bound and now >= self._bound_hold_until:
            bound = getattr(runtime, "max_in_flight", None)
        new_bound = grow(bound, self.max_in_flight_cap) if bound is not None else None
        if new_bound is not None and bound is not None and new_bound <= bound:
            bound = new_bound = None  # at its cap: not part of this trial
        if not grown and new_bound is None:
            return {}
        self._trial = _Trial(now, signal, growth, workers, bound)
        why = f"balanced at {signal:,.0f} admitting tokens/min: try {growth:.0%} more"
        if new_bound is not None:
            runtime.set_max_in_flight(new_bound, reason=f"adaptive: {why} jobs in flight")
        return {s: (n, f"{why} workers") for s, n in grown.items()}

    # -- the loop -----------------------------------------------------------------------------
    def step(self, runtime: Any, now: float) -> dict[str, tuple[int, str]]:
        workers = dict(runtime.targets)
        if self.objective.stages is None and workers:
            self.objective.stages = {list(workers)[-1]}  # the admitting stage: the last one
        bound = getattr(runtime, "max_in_flight", None)
        rates = self.rates(now, workers, runtime.entry)
        signal = self.objective.per_min(now, self.window_s)
        self.load.sample_client(now, _in_flight(runtime))
        load = self.load.read(now, self.window_s)
        changes = self.backpressure(load, now, runtime)
        if changes is None and self._trial is not None:
            changes = self.judge(now, runtime, signal) or {}
        elif changes is None:
            roomy = load is None or (load.queue <= self.queue_low and not load.failed_share)
            changes = self.decide(rates, grow=roomy)
            if not changes and roomy:
                changes = self.start_trial(rates, now, runtime, signal)
        self.history.append(
            {
                "ts": now,
                "rates": {s: r.capacity_per_min for s, r in rates.items()},
                "workers": workers,
                "changes": {s: n for s, (n, _) in changes.items()},
                "max_in_flight": bound,
                "admitting_tokens_per_min": signal,
                "tokens_per_min": self.objective.all_per_min(now, self.window_s),
                "queue": None if load is None else load.queue,
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


def _in_flight(runtime: Any) -> Any:
    """The run's request counter (runtime/instrument.py), if the runtime has one."""
    llm = getattr(getattr(runtime, "ctx", None), "task_llm", None)
    return getattr(llm, "in_flight", None)
