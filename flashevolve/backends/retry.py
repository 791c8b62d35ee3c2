"""Backoff with jitter, and the simulator's own retry loop for its rate limits.

:func:`backoff_delay` is shared by every client (the resilient request loop of
:mod:`flashevolve.backends.resilience` uses it between attempts).  :func:`call_with_retries` is
the bare serving simulator's loop for its API profile's 429s (``SimulatedLLM.complete``), so a
simulated rate limit is retried without the HTTP client around it.  The sleep is injected: pass
the clock's ``sleep`` (or ``asyncio.sleep``) so backoff follows run time and a virtual-time run
does not wait on the wall.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flashevolve.backends.base import LLMError

T = TypeVar("T")


def backoff_delay(attempt: int, backoff_s: float, rng: random.Random) -> float:
    """``backoff_s * 2**attempt``, jittered by a factor in [0.5, 1.5) so clients do not sync up."""
    return backoff_s * (2.0**attempt) * (0.5 + rng.random())


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    backoff_s: float,
    rng: random.Random,
    sleep: Callable[[float], Awaitable[None]],
    on_retry: Callable[[int, LLMError, float], None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, a non-retryable error occurs, or retries run out.

    ``on_retry(attempt, error, delay)`` is called before each backoff sleep (for accounting).
    Cancellation is never swallowed: it propagates from ``fn`` or from the sleep.
    """
    attempt = 0
    while True:
        try:
            return await fn()
        except LLMError as err:
            if not err.retryable or attempt >= max_retries:
                raise
            delay = backoff_delay(attempt, backoff_s, rng)
            if on_retry is not None:
                on_retry(attempt, err, delay)
            attempt += 1
            await sleep(delay)
