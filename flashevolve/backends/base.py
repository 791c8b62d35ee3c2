"""The LLM Protocol every backend implements, and the request/result records it speaks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class Fault(StrEnum):
    """What went wrong with one attempt, as the client saw it (``LLMError.fault``, events).

    Retried: ``connection``, ``timeout``, ``truncated``, ``malformed``, ``rate_limited``,
    ``server_error``, ``empty_choices``; ``null_content`` once.  Recorded, answer kept:
    ``missing_usage``, ``bad_usage``, ``wrong_model`` (and a second ``null_content``).  Final:
    ``rejected`` (a 4xx that asking again cannot fix), ``circuit_open``, ``unexpected``.
    """

    CONNECTION = "connection"  # refused, reset or dropped before the answer was complete
    TIMEOUT = "timeout"  # no complete answer within the attempt's deadline
    TRUNCATED = "truncated"  # the body or the stream ended before it was complete
    MALFORMED = "malformed"  # not JSON, or not the shape of a chat completion
    RATE_LIMITED = "rate_limited"  # HTTP 429
    SERVER_ERROR = "server_error"  # HTTP 5xx, 408, 409
    EMPTY_CHOICES = "empty_choices"  # ``choices: []``: no answer at all
    NULL_CONTENT = "null_content"  # the message content is null (no tool call, no reasoning)
    MISSING_USAGE = "missing_usage"  # no token usage: counts estimated from the text
    BAD_USAGE = "bad_usage"  # usage that cannot be right (negative, inconsistent, absurd)
    WRONG_MODEL = "wrong_model"  # answered under another model name than the one asked for
    REJECTED = "rejected"  # a 4xx other than 408/409/429: asking again gives the same answer
    CIRCUIT_OPEN = "circuit_open"  # the endpoint stayed unusable longer than the client waits
    UNEXPECTED = "unexpected"  # anything else the client could not make sense of


#: Faults after which the answer is still used (recorded as ``request_fault`` events).
ACCEPTED_FAULTS = frozenset({Fault.MISSING_USAGE, Fault.BAD_USAGE, Fault.WRONG_MODEL})


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a backend wants the run to know about a request while it runs: a retry, a
    fault it absorbed, a hedge, a circuit-breaker change.  Backends never see the event log;
    they hand notices to ``ChatRequest.observe`` and the runtime turns them into events
    (:mod:`flashevolve.runtime.instrument`).

    ``kind``: ``retried`` | ``fault`` | ``hedged`` | ``hedge_resolved`` | ``endpoint_state``.
    """

    kind: str
    data: dict[str, Any]
    latency_s: float | None = None
    reason: str | None = None


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
    #: Where a backend reports retries, absorbed faults, hedges and circuit changes for this
    #: request (see :class:`Notice`); ``None``: nobody is listening.
    observe: Callable[[Notice], None] | None = None
    #: Set by the runtime (its instrumented wrapper) so that what the server sees can be told
    #: apart from what waits in the client.  A client that holds requests back -- a cap on
    #: requests in flight, a retry's backoff -- calls it with ``False`` when this request starts
    #: waiting on the client's side and with ``True`` when it goes to the server.  A backend that
    #: sends every request at once need not call it: its requests count as at the server.
    on_dispatch: Callable[[bool], None] | None = None

    def notify(self, notice: Notice) -> None:
        if self.observe is not None:
            self.observe(notice)


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
    #: Faults noticed in an answer that was kept anyway (e.g. ``missing_usage``: the token
    #: counts are then estimated from the text).
    anomalies: tuple[str, ...] = ()


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


#: HTTP statuses that say the request itself is wrong (too long, invalid): the same request
#: fails again anywhere, so it is the request's failure, not the infrastructure's.
REQUEST_STATUSES = frozenset({400, 413, 422})


class LLMError(Exception):
    """A request (or one attempt of it) failed.

    ``fault`` says what kind of failure it was (:class:`Fault`), ``attempts`` how many attempts
    were made before giving up, ``retry_after_s`` what the server asked to wait (HTTP 429/503
    ``Retry-After``).  ``infrastructure`` tells a failure of the serving side (connection,
    timeout, 5xx, garbage, rate limit, auth, unknown model) from a request the server rejected
    as invalid (400/413/422): a task should not score the former as the model's answer.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        fault: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.fault = fault or _fault_of_status(status)
        self.retry_after_s = retry_after_s
        self.attempts = 1

    @property
    def infrastructure(self) -> bool:
        return not (self.fault == Fault.REJECTED and self.status in REQUEST_STATUSES)


def _fault_of_status(status: int | None) -> str:
    if status is None:
        return Fault.UNEXPECTED
    if status == 429:
        return Fault.RATE_LIMITED
    if status >= 500 or status in (408, 409):
        return Fault.SERVER_ERROR
    return Fault.REJECTED


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
