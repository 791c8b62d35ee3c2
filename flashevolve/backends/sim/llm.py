"""``SimulatedLLM``: the LLM Protocol over the serving *simulator* (workload model x latency model).

The workload (:class:`~flashevolve.backends.sim.workload.SimWorkload`, GEPA's by default) decides
a request's stage (``ChatRequest.stage``; a guess from the prompt only when it names none), its
output length and its text; the latency model -- a :class:`ServingEngine` for engine profiles or
a :class:`SimulatedApi` for API profiles -- decides when the answer comes back, on the asyncio
loop clock.  Under :class:`~flashevolve.runtime.clock.VirtualTimeLoop` a 30-minute run takes
seconds.

Randomness is keyed by the request (seed, stage, item id, request seed, prompt text), not drawn
from a shared stream, so a request gets the same length and text whatever order requests arrive
in -- asynchronous runs stay repeatable.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flashevolve.backends.base import BackendLoad, ChatRequest, ChatResult
from flashevolve.backends.retry import call_with_retries
from flashevolve.backends.sim.api import SimulatedApi
from flashevolve.backends.sim.engine import ServingEngine, Timing
from flashevolve.backends.sim.lengths import count_prompt_tokens
from flashevolve.backends.sim.profiles import ApiProfile, EngineProfile, Profile, get_profile
from flashevolve.backends.sim.workload import (
    ContentModel,
    SimWorkload,
    get_workload,
    pad_to_tokens,
)


def request_key(seed: int, request: ChatRequest, stage: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (str(seed), stage, request.item_id, str(request.seed)):
        h.update(part.encode())
        h.update(b"\x1f")
    for message in request.messages:
        h.update(str(message.get("role", "")).encode())
        h.update(b"\x1e")
        h.update(str(message.get("content", "")).encode())
        h.update(b"\x1f")
    return h.hexdigest()


class SimulatedLLM:
    """A simulated LLM endpoint.  ``endpoint = "sim:<profile>"``; nothing here runs a model.

    ``workload``: a :class:`SimWorkload` or its name (default: GEPA's); ``content`` replaces just
    its content model; ``length_fn(stage, rng)`` replaces its output lengths.
    """

    def __init__(
        self,
        profile: str | Profile = "vllm-h100-qwen3-8b",
        *,
        seed: int = 0,
        workload: str | SimWorkload | None = None,
        content: ContentModel | None = None,
        speed: float = 1.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        length_fn: Callable[[str, random.Random], int] | None = None,
    ) -> None:
        base = get_profile(profile)
        self.profile: Profile = base.scaled(speed) if speed != 1.0 else base
        self.model = base.model
        self.endpoint = f"sim:{base.name}"
        self.seed = seed
        self.speed = speed
        self.workload = get_workload(workload)
        if content is not None:
            self.workload = replace(self.workload, content=content)
        self.max_retries = max_retries
        self.backoff_s = backoff_s / speed
        self._length_fn = length_fn or self._workload_length
        self._retry_rng = random.Random(f"sim-retry:{seed}")
        self._server: ServingEngine | SimulatedApi | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.retries = 0

    def __repr__(self) -> str:
        return f"SimulatedLLM(profile={self.profile.name!r}, seed={self.seed}, speed={self.speed})"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "simulated",
            "endpoint": self.endpoint,
            "model": self.model,
            "profile": self.profile.model_dump(),
            "seed": self.seed,
            "speed": self.speed,
            "workload": self.workload.name,
        }

    @property
    def content(self) -> ContentModel:
        return self.workload.content

    def _workload_length(self, stage: str, rng: random.Random) -> int:
        return self.workload.length_for(stage).sample(rng)

    @property
    def server(self) -> ServingEngine | SimulatedApi:
        """The latency model bound to the running loop (a new one if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._server is None or self._loop is not loop:
            self._loop = loop
            p = self.profile
            self._server = ServingEngine(p) if isinstance(p, EngineProfile) else SimulatedApi(p)
        return self._server

    async def load(self) -> BackendLoad | None:
        """The simulated engine's queue and KV cache; ``None`` for an API profile (hosted APIs
        do not report their load)."""
        if not isinstance(self.profile, EngineProfile):
            return None
        # Read the engine as it is, without binding it to the caller's loop (``self.server``
        # would start a fresh engine for another loop): a look from elsewhere changes nothing.
        if not isinstance(self._server, ServingEngine):
            return BackendLoad(running=0, waiting=0, kv_usage=0.0)  # nothing served yet
        return self._server.load()

    def stats(self) -> dict[str, Any]:
        if self._server is None:
            return {"profile": self.profile.name, "completed_requests": 0}
        return {**self._server.stats(), "retries": self.retries}

    async def complete(self, request: ChatRequest) -> ChatResult:
        if isinstance(self.profile, ApiProfile) and self.max_retries > 0:
            return await call_with_retries(
                lambda: self.complete_once(request),
                max_retries=self.max_retries,
                backoff_s=self.backoff_s,
                rng=self._retry_rng,
                sleep=asyncio.sleep,
                on_retry=self._count_retry,
            )
        return await self.complete_once(request)

    def _count_retry(self, attempt: int, err: Exception, delay: float) -> None:
        self.retries += 1

    async def complete_once(self, request: ChatRequest) -> ChatResult:
        """One attempt: no retry on 429 (the HTTP server uses this and lets clients retry)."""
        workload = self.workload
        stage = workload.stage_of(request)
        key = request_key(self.seed, request, stage)
        length = self._length_fn(stage, random.Random(f"len:{key}"))
        truncated = request.max_tokens is not None and length > request.max_tokens
        if truncated:
            length = max(1, int(request.max_tokens or 1))
        text = workload.content.respond(
            request.messages, stage, random.Random(f"text:{key}"), truncated=truncated
        )
        if stage in workload.padded_stages:
            text = pad_to_tokens(text, length)
        prompt_tokens = count_prompt_tokens(request.messages)
        server = self.server
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if isinstance(server, ServingEngine):
            timing: Timing = await server.generate(prompt_tokens, length, request.partial)
        else:
            timing = await server.generate(
                prompt_tokens,
                length,
                random.Random(f"ttft:{key}"),
                request.partial,
                max_tokens=request.max_tokens,
            )
        return ChatResult(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=length,
            latency_s=timing.finished - t0,
            finish_reason="length" if truncated else "stop",
            model=self.model,
        )

    async def aclose(self) -> None:
        return None
