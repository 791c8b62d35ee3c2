"""What an endpoint has shown about its speed, and the deadline and hedge time that follow.

Only answered attempts are observed, timed from the moment the attempt got its client slot to
its answer (time queued inside the client is not the server's), in loop seconds.

A burst of requests answers its fastest first: while the slow ones still run, the answers seen
so far say the endpoint is faster than it is.  So an estimate is trusted only once it rests on
at least as many answers as were ever in flight at once -- for the endpoint (else the warm-up
deadline) and for the stage (which also needs 32 answers before its own window alone counts;
until then its deadline is no shorter than the endpoint's).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from flashevolve.backends.resilience.settings import ResilienceSettings

#: Answers shorter than this say more about the time to the first token than about the time
#: per token, so only longer ones feed the per-token rate.
MIN_TOKENS_FOR_RATE = 32

#: Answers a stage needs before its own latencies alone set its deadline.
STAGE_SAMPLES = 32

#: How much longer each further attempt of a request that timed out may take.
TIMEOUT_GROWTH = 1.5


def quantile(values: deque[float] | list[float], q: float) -> float:
    """Nearest-rank quantile (``q`` in (0, 1]) of a non-empty collection."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass
class _Window:
    """Latencies and answer lengths of one stage (or of all), and how many ran at once."""

    size: int
    latencies: deque[float] = field(init=False)
    tokens: deque[float] = field(init=False)
    observations: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0

    def __post_init__(self) -> None:
        self.latencies = deque(maxlen=self.size)
        self.tokens = deque(maxlen=self.size)

    def trusted(self, min_observations: int) -> bool:
        return self.observations >= max(min_observations, self.peak_in_flight)


class LatencyTracker:
    """Latencies per stage and seconds per output token, over a sliding window."""

    def __init__(self, settings: ResilienceSettings) -> None:
        self.settings = settings
        self._all = _Window(settings.window)
        self._stages: dict[str, _Window] = {}
        self._per_token: deque[float] = deque(maxlen=settings.window)

    def _stage(self, stage: str) -> _Window:
        window = self._stages.get(stage)
        if window is None:
            window = self._stages[stage] = _Window(self.settings.window)
        return window

    @property
    def observations(self) -> int:
        return self._all.observations

    @property
    def peak_in_flight(self) -> int:
        return self._all.peak_in_flight

    @property
    def warming_up(self) -> bool:
        """Too few answers to judge the endpoint's speed (see the module docstring)."""
        return not self._all.trusted(self.settings.min_observations)

    def started(self, stage: str) -> None:
        for window in (self._all, self._stage(stage)):
            window.in_flight += 1
            window.peak_in_flight = max(window.peak_in_flight, window.in_flight)

    def ended(self, stage: str) -> None:
        for window in (self._all, self._stage(stage)):
            window.in_flight -= 1

    def observe(self, stage: str, latency_s: float, completion_tokens: int) -> None:
        for window in (self._all, self._stage(stage)):
            window.observations += 1
            window.latencies.append(latency_s)
            window.tokens.append(float(completion_tokens))
        if completion_tokens >= MIN_TOKENS_FOR_RATE:
            self._per_token.append(latency_s / completion_tokens)

    def _expected_latency(self, stage: str) -> float:
        """The 99th percentile of the stage's latencies once its window is large and trusted;
        before that, no less than the endpoint's (a handful of answers hides a long tail)."""
        endpoint = quantile(self._all.latencies, 0.99)
        window = self._stages.get(stage)
        if window is None or not window.latencies:
            return endpoint
        own = quantile(window.latencies, 0.99)
        if window.trusted(max(self.settings.min_observations, STAGE_SAMPLES)):
            return own
        return max(own, endpoint)

    def deadline(self, stage: str, max_tokens: int | None, timeouts: int = 0) -> float:
        """Seconds one attempt may take: see :class:`ResilienceSettings`.  Each timeout this
        request already had makes it 1.5 times longer (up to the cap): an endpoint that slowed
        down for everyone must not time out every attempt against its old speed, while a
        request that merely met a few hangs does not wait much longer for it."""
        s = self.settings
        if self.warming_up:
            base = s.warmup_deadline_s
        else:
            expected = self._expected_latency(stage)
            if len(self._per_token) >= s.min_observations:
                # how long the longest answers of the stage would take at a slow rate
                window = self._stages.get(stage)
                tokens = window.tokens if window is not None and window.tokens else self._all.tokens
                long_answer = quantile(tokens, 0.99)
                if max_tokens:
                    long_answer = min(long_answer, max_tokens)
                expected = max(expected, quantile(self._per_token, 0.9) * long_answer)
            base = max(s.deadline_floor_s, s.deadline_multiplier * expected)
        return min(s.deadline_cap_s, base * TIMEOUT_GROWTH**timeouts)

    def hedge_after(self, stage: str) -> float | None:
        """Seconds after which a request of ``stage`` is a straggler worth a copy; ``None``
        until enough of them have been seen (or with hedging off)."""
        s = self.settings
        if not s.hedge or s.hedge_budget <= 0:
            return None
        window = self._stages.get(stage)
        if window is None or not window.trusted(s.hedge_min_samples):
            return None
        return quantile(window.latencies, s.hedge_quantile)
