"""The serving simulator with faults and the client's rules, inside the process:
``backends.simulated(faults=SPEC)``.

Each attempt draws a fault from the same seeded plan as ``serve-sim --faults`` and behaves as
the HTTP client would see it:

- ``refuse`` / ``reset`` -> a ``connection`` failure (``reset`` after the simulated server did
  the work, which is then wasted); ``truncated`` -> ``truncated``;
- ``hang`` -> nothing until the client's deadline cancels the attempt (the wait is on the
  loop clock, so under virtual time it costs no real time); ``drip`` -> the answer arrives
  ``drip_s`` late;
- ``http429`` / ``http429_retry_after`` / ``http5xx`` -> the same ``LLMError`` the HTTP client
  raises for them (``Retry-After`` included);
- the body faults -> the correct answer is written as the JSON body a server would send,
  broken the same way (:mod:`.body`), and read back through the HTTP client's own answer check
  (:func:`~flashevolve.backends.resilience.answers.result_from_body`).

Around it runs the same :class:`~flashevolve.backends.resilience.ResilientCaller` as
:class:`~flashevolve.backends.openai_compat.OpenAICompatLLM` (no client-side cap: the simulated
engine queues for itself).
"""

from __future__ import annotations

import asyncio
from typing import Any

from flashevolve.backends import wire
from flashevolve.backends.base import BackendLoad, ChatRequest, ChatResult, Fault, LLMError
from flashevolve.backends.faults.body import broken_body
from flashevolve.backends.faults.plan import FaultPlan
from flashevolve.backends.faults.spec import STATUS_OF, FaultKind, FaultSpec, parse_fault_spec
from flashevolve.backends.resilience import ResilienceSettings, ResilientCaller, resilience_settings
from flashevolve.backends.resilience.answers import result_from_body
from flashevolve.backends.sim.llm import SimulatedLLM


class ResilientSimulatedLLM:
    """A :class:`SimulatedLLM` behind injected faults and the client's reliability rules."""

    def __init__(
        self,
        inner: SimulatedLLM,
        *,
        faults: str | FaultSpec | dict[str, Any] | None = None,
        resilience: ResilienceSettings | dict[str, Any] | None = None,
    ) -> None:
        self.inner = inner
        self.model = inner.model
        self.endpoint = inner.endpoint
        spec = parse_fault_spec(faults)
        self.faults = FaultPlan(spec) if spec is not None else None
        self.settings = resilience_settings(resilience)
        self._caller = ResilientCaller(
            self._send, endpoint=self.endpoint, settings=self.settings, seed=inner.seed
        )

    def __repr__(self) -> str:
        spec = self.faults.spec.describe() if self.faults else "none"
        return f"ResilientSimulatedLLM({self.inner!r}, faults={spec!r})"

    def describe(self) -> dict[str, Any]:
        return {
            **self.inner.describe(),
            "faults": self.faults.spec.describe() if self.faults else None,
            "resilience": self.settings.model_dump(),
        }

    def stats(self) -> dict[str, Any]:
        """The simulated server's counts, plus ``faults`` (injected per kind, as ``GET /stats``
        of serve-sim) and ``client`` (retries, hedges, waste, faults seen)."""
        out = {**self.inner.stats(), "client": self._caller.report()}
        if self.faults is not None:
            out["faults"] = self.faults.stats()
        return out

    async def load(self) -> BackendLoad | None:
        return await self.inner.load()

    async def complete(self, request: ChatRequest) -> ChatResult:
        return await self._caller.complete(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    # -- one attempt -------------------------------------------------------------------------
    async def _send(self, request: ChatRequest) -> ChatResult:
        plan = self.faults
        kind = plan.draw() if plan is not None else None
        if plan is None or kind is None:
            return await self.inner.complete_once(request)
        if kind in STATUS_OF or kind in (FaultKind.REFUSE, FaultKind.HANG):
            return await self._early(plan, kind, request)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await self.inner.complete_once(request)
        if kind == FaultKind.DRIP:
            plan.delivered(kind)
            request.partial["completion_tokens"] = result.completion_tokens  # all on their way
            await asyncio.sleep(plan.spec.drip_s)
            result.latency_s = loop.time() - t0
            return result
        plan.delivered(kind)
        if kind == FaultKind.RESET:
            request.partial["completion_tokens"] = result.completion_tokens  # generated, lost
            raise LLMError(
                f"{self.endpoint} reset the connection mid-answer (injected)",
                fault=Fault.CONNECTION,
                retryable=True,
            )
        if kind == FaultKind.TRUNCATED:
            raise LLMError(
                f"{self.endpoint} cut its answer short (injected)",
                fault=Fault.TRUNCATED,
                retryable=True,
            )
        body = wire.completion_body(
            "chatcmpl-sim",
            self.model,
            result.text,
            result.finish_reason,
            result.prompt_tokens,
            result.completion_tokens,
        )
        return result_from_body(
            broken_body(kind, body),
            endpoint=self.endpoint,
            model=self.model,
            latency_s=loop.time() - t0,
            max_tokens=request.max_tokens,
            messages=request.messages,
        )

    async def _early(self, plan: FaultPlan, kind: FaultKind, request: ChatRequest) -> ChatResult:
        plan.delivered(kind)
        if kind == FaultKind.REFUSE:
            raise LLMError(
                f"{self.endpoint} refused the connection (injected)",
                fault=Fault.CONNECTION,
                retryable=True,
            )
        if kind == FaultKind.HANG:
            request.partial["completion_tokens"] = 0  # the server does nothing for it
            await asyncio.sleep(plan.spec.hang_s)  # the client's deadline cancels this first
            raise LLMError(
                f"{self.endpoint} dropped a connection it never answered (injected)",
                fault=Fault.CONNECTION,
                retryable=True,
            )
        status = STATUS_OF[kind]
        retry_after = plan.spec.retry_after_s if kind == FaultKind.HTTP429_RETRY_AFTER else None
        raise LLMError(
            f"{self.endpoint} answered HTTP {status} (injected {kind})",
            status=status,
            retryable=True,
            retry_after_s=retry_after,
        )
