"""A *simulated* hosted chat API (OpenAI-like): per-stream latency plus sliding-window rate limits.

Latency of one request = time to first token (lognormal around ``ttft_s``) + completion tokens /
``per_stream_tokens_per_s``.  Requests do not slow each other down (the provider's fleet is
treated as infinite), but a sliding ``window_s`` window counts requests and tokens; a request that
would exceed ``rpm_limit`` or ``tpm_limit`` is answered at once with HTTP 429
(``LLMError(status=429, retryable=True)``), like a real API.  Retrying is the caller's business
(:mod:`flashevolve.backends.retry`).

Tokens counted against the limit are prompt + completion at admission time (real providers count
prompt + ``max_tokens`` up front; the simulator knows the completion length already).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from typing import Any

from flashevolve.backends.base import LLMError
from flashevolve.backends.sim.engine import Timing
from flashevolve.backends.sim.profiles import ApiProfile


class SimulatedApi:
    """Latency + rate-limit model of one API key on one model, on the loop clock."""

    def __init__(self, profile: ApiProfile) -> None:
        self.profile = profile
        self._requests: deque[float] = deque()  # admission times inside the window
        self._tokens: deque[tuple[float, int]] = deque()
        self._window_tokens = 0
        self._t_first: float | None = None
        self.in_flight = 0
        self.completed_requests = 0
        self.cancelled_requests = 0
        self.rejected_requests = 0
        self.completed_tokens = 0
        self.wasted_tokens = 0
        self.prompt_tokens = 0
        self.busy_s = 0.0
        self._busy_since: float | None = None
        self.running_time = 0.0  # integral of requests in flight over time
        self._t_changed = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _prune(self, now: float) -> None:
        horizon = now - self.profile.window_s
        while self._requests and self._requests[0] <= horizon:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] <= horizon:
            self._window_tokens -= self._tokens.popleft()[1]

    async def generate(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        rng: random.Random,
        partial: dict[str, int] | None = None,
    ) -> Timing:
        loop = asyncio.get_running_loop()
        self._loop = loop
        now = loop.time()
        if self._t_first is None:
            self._t_first = now
        self._prune(now)
        need = prompt_tokens + completion_tokens
        p = self.profile
        if len(self._requests) >= p.rpm_limit:
            self.rejected_requests += 1
            raise LLMError(
                f"simulated rate limit: {p.rpm_limit} requests per {p.window_s:g}s reached",
                status=429,
                retryable=True,
            )
        if self._window_tokens + need > p.tpm_limit:
            self.rejected_requests += 1
            raise LLMError(
                f"simulated rate limit: {p.tpm_limit} tokens per {p.window_s:g}s reached",
                status=429,
                retryable=True,
            )
        self._requests.append(now)
        self._tokens.append((now, need))
        self._window_tokens += need
        ttft = p.ttft_s * math.exp(p.ttft_sigma * rng.gauss(0.0, 1.0)) if p.ttft_sigma else p.ttft_s
        duration = ttft + completion_tokens / p.per_stream_tokens_per_s
        self._enter(now)
        try:
            await asyncio.sleep(duration)
        except asyncio.CancelledError:
            spent = loop.time() - now
            made = min(int(max(0.0, spent - ttft) * p.per_stream_tokens_per_s), completion_tokens)
            self.wasted_tokens += made
            if partial is not None:
                partial["completion_tokens"] = made
            self.cancelled_requests += 1
            raise
        finally:
            self._leave(loop.time())
        self.completed_requests += 1
        self.completed_tokens += completion_tokens
        self.prompt_tokens += prompt_tokens
        return Timing(now, now, now + ttft, loop.time())

    def _integrate(self, now: float) -> None:
        self.running_time += self.in_flight * (now - self._t_changed)
        self._t_changed = now

    def _enter(self, now: float) -> None:
        self._integrate(now)
        if self.in_flight == 0:
            self._busy_since = now
        self.in_flight += 1

    def _leave(self, now: float) -> None:
        self._integrate(now)
        self.in_flight -= 1
        if self.in_flight == 0 and self._busy_since is not None:
            self.busy_s += now - self._busy_since
            self._busy_since = None

    def stats(self) -> dict[str, Any]:
        now = self._loop.time() if self._loop is not None else 0.0
        busy = self.busy_s + (now - self._busy_since if self._busy_since is not None else 0.0)
        elapsed = 0.0 if self._t_first is None else now - self._t_first
        running_time = self.running_time + self.in_flight * (now - self._t_changed)
        return {
            "profile": self.profile.name,
            "now": now,
            "running": self.in_flight,
            "queued": 0,
            "completed_requests": self.completed_requests,
            "cancelled_requests": self.cancelled_requests,
            "rejected_requests": self.rejected_requests,
            "prompt_tokens": self.prompt_tokens,
            "completed_tokens": self.completed_tokens,
            "wasted_tokens": self.wasted_tokens,
            "busy_s": busy,
            "elapsed_s": elapsed,
            "mean_concurrency": running_time / elapsed if elapsed > 0 else 0.0,
            "attainable_tokens_per_s": self.profile.attainable_tokens_per_s,
        }
