"""What an endpoint has shown about its speed, and the deadline and hedge time that follow.

Only answered attempts are observed, timed from the moment the attempt got its client slot to
its answer (time queued inside the client is not the server's), in loop seconds.
"""

from __future__ import annotations

import math
from collections import deque

from flashevolve.backends.resilience.settings import ResilienceSettings

#: Answers shorter than this say more about the time to the first token than about the time
#: per token, so only longer ones feed the per-token rate.
MIN_TOKENS_FOR_RATE = 32

#: How much longer each further attempt of a request that timed out may take.
TIMEOUT_GROWTH = 1.5


def quantile(values: deque[float] | list[float], q: float) -> float:
    """Nearest-rank quantile (``q`` in (0, 1]) of a non-empty collection."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class LatencyTracker:
    """Latencies per stage and seconds per output token, over a sliding window."""

    def __init__(self, settings: ResilienceSettings) -> None:
        self.settings = settings
        self._by_stage: dict[str, deque[float]] = {}
        self._all: deque[float] = deque(maxlen=settings.window)
        self._per_token: deque[float] = deque(maxlen=settings.window)
        self.observations = 0
        self.in_flight = 0  # attempts being served now
        self.peak_in_flight = 0

    def started(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def ended(self) -> None:
        self.in_flight -= 1

    @property
    def warming_up(self) -> bool:
        """Too few answers to judge the endpoint's speed.  With many requests in flight the
        first answers are the fastest of them (the slow ones are still running), so the
        warm-up lasts until at least as many answers as were ever in flight at once."""
        needed = max(self.settings.min_observations, self.peak_in_flight)
        return self.observations < needed

    def observe(self, stage: str, latency_s: float, completion_tokens: int) -> None:
        self.observations += 1
        window = self._by_stage.setdefault(stage, deque(maxlen=self.settings.window))
        window.append(latency_s)
        self._all.append(latency_s)
        if completion_tokens >= MIN_TOKENS_FOR_RATE:
            self._per_token.append(latency_s / completion_tokens)

    def _stage_latencies(self, stage: str) -> deque[float]:
        window = self._by_stage.get(stage)
        if window is not None and len(window) >= self.settings.min_observations:
            return window
        return self._all

    def deadline(self, stage: str, max_tokens: int | None, timeouts: int = 0) -> float:
        """Seconds one attempt may take: see :class:`ResilienceSettings`.  Each timeout this
        request already had makes it 1.5 times longer (up to the cap): an endpoint that slowed
        down for everyone must not time out every attempt against its old speed, while a
        request that merely met a few hangs does not wait much longer for it."""
        s = self.settings
        if self.warming_up:
            base = s.warmup_deadline_s
        else:
            expected = quantile(self._stage_latencies(stage), 0.99)
            if max_tokens and len(self._per_token) >= s.min_observations:
                expected = max(expected, quantile(self._per_token, 0.9) * max_tokens)
            base = max(s.deadline_floor_s, s.deadline_multiplier * expected)
        return min(s.deadline_cap_s, base * TIMEOUT_GROWTH**timeouts)

    def hedge_after(self, stage: str) -> float | None:
        """Seconds after which a request of ``stage`` is a straggler worth a copy; ``None``
        until enough of them have been seen (or with hedging off)."""
        s = self.settings
        if not s.hedge or s.hedge_budget <= 0:
            return None
        window = self._by_stage.get(stage)
        if window is None or len(window) < s.hedge_min_samples:
            return None
        return quantile(window, s.hedge_quantile)
