"""The LLM Protocol every backend implements, and the request/result records it speaks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(slots=True)
class ChatRequest:
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    #: Which stage sent it ("rollout", "propose", "gate", "validate", "patch", ...).  Backends use
    #: it only for accounting; the serving simulator also draws output lengths per stage.
    stage: str = ""
    item_id: str = ""
    role: str = "task"  # "task" or "reflection": which model slot the runtime routed it to
    #: Where a client that has to queue requests puts this one: lower goes first (as in vLLM's
    #: priority scheduling).  The runtime sets it from the stage: later stages go first.
    priority: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Server-specific request fields (e.g. a llama.cpp ``grammar``); OpenAI-compatible backends
    #: merge them into the request body, others ignore them.
    extra_body: dict[str, Any] | None = None
    #: Filled in by a backend while the request runs, so that what it knows survives a
    #: cancellation: ``completion_tokens`` generated so far (the work thrown away if the caller
    #: cancels).  Backends that cannot tell leave it empty.
    partial: dict[str, int] = field(default_factory=dict)
    #: Set by the runtime (its instrumented wrapper) so that what the server sees can be told
    #: apart from what waits in the client.  A client that holds requests back -- a cap on
    #: requests in flight, a retry's backoff -- calls it with ``False`` when this request starts
    #: waiting on the client's side and with ``True`` when it goes to the server.  A backend that
    #: sends every request at once need not call it: its requests count as at the server.
    on_dispatch: Callable[[bool], None] | None = None


def notify_dispatch(request: ChatRequest, at_server: bool) -> None:
    """Tell the runtime where ``request`` is (see ``ChatRequest.on_dispatch``)."""
    if request.on_dispatch is not None:
        request.on_dispatch(at_server)


@dataclass(slots=True)
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str = "stop"
    model: str = ""


@dataclass(frozen=True, slots=True)
class BackendLoad:
    """What a server says about its own load at one moment (``GET /metrics`` on vLLM and
    llama-server, the engine itself in the simulator)."""

    running: int  # requests being served (prefill or decode)
    waiting: int  # requests queued behind them (no slot or no KV-cache room yet)
    kv_usage: float | None = None  # fraction of the KV cache in use, when the server says


@runtime_checkable
class LoadReporter(Protocol):
    """Optional backend extension: report the server's load.  ``None`` means "cannot tell"
    (a hosted API, a server without a metrics endpoint); callers then go without."""

    async def load(self) -> BackendLoad | None: ...


class LLMError(Exception):
    """A request failed for good (after retries, or not retryable)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@runtime_checkable
class LLM(Protocol):
    """An asynchronous chat-completion backend.

    ``complete`` must honour cancellation: cancelling the awaiting task aborts the request so the
    server stops spending compute on it (speculative completion relies on that).
    """

    model: str
    endpoint: str  # a short label for events ("http://127.0.0.1:8080/v1", "sim:vllm-h100")

    async def complete(self, request: ChatRequest) -> ChatResult: ...

    async def aclose(self) -> None: ...
