"""Responders: what flashevolve's OpenAI-compatible server answers, and when.

A responder is a content model (what text to answer) times a latency model (when to answer);
:class:`~flashevolve.backends.server.OpenAICompatServer` puts one behind
``/v1/chat/completions``.

- :class:`ScriptedResponder` -- scripted text (a list, a function of the request, or the
  simulator's workload content model) after a seeded per-request latency: the project's scripted
  test server.
- :class:`SimulatorResponder` -- the serving simulator (:class:`SimulatedLLM`) in real time,
  optionally ``speed`` times faster; its rate limits answer HTTP 429 and the client retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flashevolve.backends import sse
from flashevolve.backends.base import BackendLoad, ChatRequest, LLMError
from flashevolve.backends.reply import Reply, Responder
from flashevolve.backends.sim.lengths import count_prompt_tokens, count_tokens
from flashevolve.backends.sim.llm import SimulatedLLM, request_key
from flashevolve.backends.sim.profiles import Profile
from flashevolve.backends.sim.workload import ContentModel, SimWorkload, get_workload
from flashevolve.backends.wire import STAGE_HEADER

__all__ = [
    "STAGE_HEADER",
    "FixedLatency",
    "LognormalLatency",
    "Reply",
    "Responder",
    "ScriptedResponder",
    "SimulatorResponder",
]

# -- latency distributions for the scripted server --------------------------------------------


@dataclass(frozen=True, slots=True)
class FixedLatency:
    seconds: float = 0.0

    def sample(self, rng: random.Random) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True)
class LognormalLatency:
    """Long-tailed latency: lognormal with the given mean, spread ``sigma``, capped at ``cap_s``."""

    mean_s: float
    sigma: float = 1.0
    cap_s: float = math.inf

    def sample(self, rng: random.Random) -> float:
        mu = math.log(self.mean_s) - self.sigma**2 / 2
        return min(self.cap_s, rng.lognormvariate(mu, self.sigma))


Latency = FixedLatency | LognormalLatency
ScriptFn = Callable[[ChatRequest], str]


class ScriptedResponder:
    """Deterministic scripted answers after a seeded per-request latency.

    ``script``: ``None`` -> the simulator's workload content (a GEPA run makes real progress);
    a list of strings -> answered in arrival order, cycling; a function of the request -> its
    text; or any :class:`ContentModel`.  ``latency``: seconds (fixed) or a distribution.
    ``error_fn(request, index)`` may return an HTTP status to fail that request with (e.g. 429),
    for deliberate-error tests.  Latency and content are keyed by the request, not by arrival
    order (except for list scripts), so concurrent runs stay repeatable.
    """

    def __init__(
        self,
        script: Sequence[str] | ScriptFn | ContentModel | None = None,
        *,
        latency: float | Latency = 0.0,
        seed: int = 0,
        model: str = "scripted",
        error_fn: Callable[[ChatRequest, int], int | None] | None = None,
    ) -> None:
        if isinstance(script, str):
            script = [script]
        self.script = get_workload().content if script is None else script
        self.latency: Latency = (
            FixedLatency(float(latency)) if isinstance(latency, int | float) else latency
        )
        self.seed = seed
        self.model = model
        self.error_fn = error_fn
        self._arrivals = itertools.count()
        # read by tests from another thread (plain ints: safe enough for counters)
        self.completed = self.cancelled = self.in_flight = 0

    def _text(self, request: ChatRequest, index: int, rng: random.Random) -> str:
        script = self.script
        if hasattr(script, "respond"):
            stage = get_workload().stage_of(request)  # a header-less client: guess the stage
            return script.respond(request.messages, stage, rng)
        if callable(script):
            return str(script(request))
        if not script:
            return ""
        return str(script[index % len(script)])

    def _plan(self, request: ChatRequest) -> tuple[Reply, float]:
        """The answer and its latency (or the scripted error)."""
        index = next(self._arrivals)
        if self.error_fn is not None:
            status = self.error_fn(request, index)
            if status is not None:
                raise LLMError(f"scripted error {status}", status=status, retryable=status == 429)
        key = request_key(self.seed, request, request.stage)
        text = self._text(request, index, random.Random(f"text:{key}"))
        latency = self.latency.sample(random.Random(f"latency:{key}"))
        return Reply(text, count_prompt_tokens(request.messages), count_tokens(text)), latency

    async def respond(self, request: ChatRequest) -> Reply:
        reply, latency = self._plan(request)
        self.in_flight += 1
        try:
            await asyncio.sleep(latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        self.completed += 1
        return reply

    async def respond_stream(self, request: ChatRequest) -> AsyncIterator[str | Reply]:
        """The same answer as :meth:`respond`, one piece per token spread over the same latency,
        then the :class:`Reply`.  Closing the stream early counts as cancelled."""
        reply, latency = self._plan(request)
        self.in_flight += 1
        try:
            pieces = sse.split_pieces(reply.text, reply.completion_tokens)
            async with contextlib.aclosing(sse.paced(pieces, latency)) as paced:
                async for piece in paced:
                    yield piece
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        self.completed += 1
        yield reply


class SimulatorResponder:
    """The serving simulator in real time (``speed`` x faster).  429s go back to the client."""

    def __init__(
        self,
        profile: str | Profile = "vllm-h100-qwen3-8b",
        *,
        seed: int = 0,
        speed: float = 1.0,
        content: ContentModel | None = None,
        workload: str | SimWorkload | None = None,
    ) -> None:
        self.llm = SimulatedLLM(
            profile, seed=seed, speed=speed, workload=workload, content=content, max_retries=0
        )
        self.model = self.llm.model

    async def respond(self, request: ChatRequest) -> Reply:
        result = await self.llm.complete_once(request)
        return Reply(
            result.text, result.prompt_tokens, result.completion_tokens, result.finish_reason
        )

    def stats(self) -> dict[str, Any]:
        return self.llm.stats()

    async def load(self) -> BackendLoad | None:
        return await self.llm.load()  # None for an API profile: /metrics then answers 404
