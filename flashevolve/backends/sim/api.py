"""A *simulated* hosted chat API (OpenAI-like): per-stream latency plus sliding-window rate limits.

Latency of one request = time to first token (lognormal around ``ttft_s``) + completion tokens /
``per_stream_tokens_per_s``.  Requests do not slow each other down (the provider's fleet is
treated as infinite), but a sliding ``window_s`` window counts requests and tokens; a request
that would exceed ``rpm_limit`` or ``tpm_limit`` is answered at once with HTTP 429
(``LLMError(status=429, retryable=True)``), like a real API.  Retrying is the caller's business
(:mod:`flashevolve.backends.retry`).

Tokens are *reserved* at admission, as OpenAI's rate limiter counts them: the prompt plus the
request's ``max_tokens`` (its rate-limit guide: the limit is computed from ``max_tokens`` and the
prompt's estimated size, so set ``max_tokens`` close to the expected answer; its cookbook's
parallel request processor budgets ``prompt + n * max_tokens``).  The reservation stays in the
window for ``window_s`` whatever the answer's real length.  A request without ``max_tokens``
reserves its prompt and is charged its completion when it finishes (our assumption: the
provider cannot know it in advance).  A request whose reservation alone exceeds the limit can
never pass: it is answered 429 *not* retryable, with the fix in the message.
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
        self._tokens: deque[tuple[float, int]] = deque()  # (time charged, tokens)
        self._window_tokens = 0
        self._t_first: float | None = None
        self.in_flight = 0
        self.completed_requests = 0
        self.cancelled_requests = 0
        self.rejected_requests = 0
        self.completed_tokens = 0
        self.wasted_tokens = 0
        self.prompt_tokens = 0
        self.reserved_tokens = 0  # charged against the TPM limit so far
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

    def _charge(self, now: float, tokens: int) -> None:
        self._tokens.append((now, tokens))
        self._window_tokens += tokens
        self.reserved_tokens += tokens

    def window_tokens(self) -> int:
        """Tokens charged in the current window (after dropping what slid out of it)."""
        if self._loop is not None:
            self._prune(self._loop.time())
        return self._window_tokens

    def _admit(self, now: float, prompt_tokens: int, max_tokens: int | None) -> int:
        """Reserve a request's place in the window, or raise the provider's 429."""
        p = self.profile
        self._prune(now)
        reserve = prompt_tokens + (max_tokens or 0)
        if reserve > p.tpm_limit:
            self.rejected_requests += 1
            raise LLMError(
                f"simulated rate limit: the request reserves {reserve} tokens (prompt "
                f"{prompt_tokens} + max_tokens {max_tokens or 0}) but the limit is "
                f"{p.tpm_limit} tokens per {p.window_s:g}s; lower max_tokens or shorten the prompt",
                status=429,
                retryable=False,
            )
        if len(self._requests) >= p.rpm_limit:
            self.rejected_requests += 1
            raise LLMError(
                f"simulated rate limit: {p.rpm_limit} requests per {p.window_s:g}s reached",
                status=429,
                retryable=True,
            )
        if self._window_tokens + reserve > p.tpm_limit:
            self.rejected_requests += 1
            raise LLMError(
                f"simulated rate limit: {p.tpm_limit} tokens per {p.window_s:g}s reached "
                f"({self._window_tokens} in use, this request reserves {reserve})",
                status=429,
                retryable=True,
            )
        self._requests.append(now)
        self._charge(now, reserve)
        return reserve

    async def generate(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        rng: random.Random,
        partial: dict[str, int] | None = None,
        max_tokens: int | None = None,
    ) -> Timing:
        loop = asyncio.get_running_loop()
        self._loop = loop
        now = loop.time()
        if self._t_first is None:
            self._t_first = now
        self._admit(now, prompt_tokens, max_tokens)
        p = self.profile
        ttft = p.ttft_s * math.exp(p.ttft_sigma * rng.gauss(0.0, 1.0)) if p.ttft_sigma else p.ttft_s
        duration = ttft + completion_tokens / p.per_stream_tokens_per_s
        self._enter(now)
        try:
            await asyncio.sleep(duration)
        except asyncio.CancelledError:
            spent = loop.time() - now
            made = min(int(max(0.0, spent - ttft) * p.per_stream_tokens_per_s), completion_tokens)
            self.wasted_tokens += made
            if max_tokens is None:
                self._charge(loop.time(), made)
            if partial is not None:
                partial["completion_tokens"] = made
            self.cancelled_requests += 1
            raise
        finally:
            self._leave(loop.time())
        if max_tokens is None:  # nothing was reserved for the answer: charge it now
            self._charge(loop.time(), completion_tokens)
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
            "reserved_tokens": self.reserved_tokens,
            "wasted_tokens": self.wasted_tokens,
            "busy_s": busy,
            "elapsed_s": elapsed,
            "mean_concurrency": running_time / elapsed if elapsed > 0 else 0.0,
            "attainable_tokens_per_s": self.profile.attainable_tokens_per_s,
        }
