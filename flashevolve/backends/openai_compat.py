"""OpenAI-compatible async backend (vLLM, OpenAI, llama-server, flashevolve's own servers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import weakref
from collections.abc import Iterator
from typing import Any

from flashevolve.backends.base import (
    BackendLoad,
    ChatRequest,
    ChatResult,
    LLMError,
    notify_dispatch,
)
from flashevolve.backends.gate import PriorityGate
from flashevolve.backends.prometheus import load_from_metrics
from flashevolve.backends.retry import call_with_retries
from flashevolve.runtime.clock import Clock, LoopClock

#: Seconds to wait for ``GET /metrics``: a slow metrics page must not hold anything up.
METRICS_TIMEOUT_S = 2.0

#: HTTP statuses worth retrying: rate limits and server-side trouble.
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAICompatLLM:
    """Chat completions over real HTTP with the official ``openai`` client.

    - ``max_concurrency`` caps requests in flight to this endpoint (per instance); the rest wait
      in ``request.priority`` order, lower first, arrival order among equals (``queue=
      "priority"``, the default: later pipeline stages first;
      :class:`~flashevolve.backends.gate.PriorityGate`), or in arrival order (``"fifo"``).
    - Tells the runtime when a request starts waiting here and when it goes to the server
      (``ChatRequest.on_dispatch``), so a run counts requests at the server apart from those
      this client holds back.
    - Retries with exponential backoff and jitter on 429/5xx and connection errors; the backoff
      sleeps on the injectable clock.
    - Cancelling the caller's task closes the HTTP connection, which vLLM and llama-server treat
      as an abort.
    - ``stream=True`` asks for server-sent events (``stream_options.include_usage``) and keeps
      ``request.partial["completion_tokens"]`` up to date while the answer arrives, so a
      cancelled request still tells how much was generated.  Until the final usage chunk that
      number is a count of non-empty content (or reasoning) chunks -- an estimate: vLLM and
      llama-server send about one chunk per token; the usage chunk then gives the exact count,
      which also goes into the result.  A server that sends no usage leaves the chunk count
      (and 0 prompt tokens) in the result.  Each retry starts the count over.  The default
      (``False``) is one plain JSON response, and ``partial`` stays empty.
    - The API key is read from ``api_key_env`` (or given directly) and never logged: ``repr`` and
      ``describe`` leave it out.
    - ``load()`` reads the server's own load from ``GET /metrics`` next to ``/v1`` (vLLM,
      llama-server with ``--metrics``, flashevolve's simulated server; see
      :mod:`flashevolve.backends.prometheus`).  The key is not sent there.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        max_concurrency: int = 16,
        timeout_s: float = 300.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        default_max_tokens: int | None = None,
        extra_body: dict[str, Any] | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        stream: bool = False,
        queue: str = "priority",
    ) -> None:
        import openai  # imported here so the core imports without the SDK being reachable

        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise LLMError(
                    f"environment variable {api_key_env} is empty or unset; export your API key "
                    f"there (the key is never written to logs or run directories)"
                )
        if queue not in ("priority", "fifo"):
            raise ValueError(f"queue must be 'priority' or 'fifo', not {queue!r}")
        self.model = model
        self.endpoint = base_url.rstrip("/")
        self.max_concurrency = max_concurrency
        self.queue = queue
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.default_max_tokens = default_max_tokens
        self.extra_body = dict(extra_body or {})
        self.stream = stream
        self.clock = clock or LoopClock()
        self._rng = random.Random(seed)
        self._openai = openai
        self._api_key = api_key or "not-needed"
        self._timeout_s = timeout_s
        # The HTTP client and the semaphore belong to one event loop; a backend object is often
        # used from several (a preflight check, then one loop per background run), so each loop
        # gets its own pair.  Dead loops drop out of the weak map by themselves.
        self._per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._metrics_missing = False  # the server answered /metrics without load gauges

    def __repr__(self) -> str:
        return f"OpenAICompatLLM(endpoint={self.endpoint!r}, model={self.model!r})"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "openai-compatible",
            "endpoint": self.endpoint,
            "model": self.model,
            "max_concurrency": self.max_concurrency,
            "queue": self.queue,
            "stream": self.stream,
        }

    async def complete(self, request: ChatRequest) -> ChatResult:
        async def attempt() -> ChatResult:
            client, gate = self._loop_state()
            if gate.holders >= gate.limit:
                notify_dispatch(request, False)  # it waits here until the gate lets it through
            # released during backoff so others can use the slot
            async with gate.slot(request.priority if self.queue == "priority" else 0):
                notify_dispatch(request, True)
                try:
                    return await self._once(client, request)
                except BaseException:
                    notify_dispatch(request, False)  # back on this side (a retry's backoff)
                    raise

        return await call_with_retries(
            attempt,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            rng=self._rng,
            sleep=self.clock.sleep,
        )

    def _loop_state(self) -> tuple[Any, PriorityGate]:
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(loop)
        if state is None:
            client = self._openai.AsyncOpenAI(
                base_url=self.endpoint,
                api_key=self._api_key,
                max_retries=0,  # we retry ourselves, on our clock, with our accounting
                timeout=self._timeout_s,
            )
            state = (client, PriorityGate(self.max_concurrency))
            self._per_loop[loop] = state
        return state

    async def _once(self, client: Any, request: ChatRequest) -> ChatResult:
        kwargs: dict[str, Any] = {"model": self.model, "messages": request.messages}
        max_tokens = request.max_tokens or self.default_max_tokens
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.seed is not None:
            kwargs["seed"] = request.seed
        extra = {**self.extra_body, **(request.extra_body or {})}
        if extra:
            kwargs["extra_body"] = extra
        # Our own servers use the stage to model output lengths; other servers ignore the header.
        headers = {"X-Flashevolve-Stage": request.stage} if request.stage else None
        t0 = self.clock.now()
        with self._llm_errors():
            if self.stream:
                return await self._streamed(client, request, kwargs, headers, t0)
            resp = await client.chat.completions.create(**kwargs, extra_headers=headers)
        latency = self.clock.now() - t0
        choice = resp.choices[0] if resp.choices else None
        text = (choice.message.content if choice and choice.message else None) or ""
        usage = resp.usage
        return ChatResult(
            text=text,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            latency_s=latency,
            finish_reason=(choice.finish_reason if choice else None) or "stop",
            model=resp.model or self.model,
        )

    async def _streamed(
        self,
        client: Any,
        request: ChatRequest,
        kwargs: dict[str, Any],
        headers: dict[str, str] | None,
        t0: float,
    ) -> ChatResult:
        partial = request.partial
        partial["completion_tokens"] = 0  # per attempt: a retry starts over
        stream = await client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}, extra_headers=headers
        )
        parts: list[str] = []
        finish: str | None = None
        usage: Any = None
        model = ""
        # Leaving the block any way (done, error, cancelled) closes the response: an early
        # exit closes the connection, which the server takes as an abort.
        async with stream:
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    delta = choice.delta
                    content = delta.content if delta is not None else None
                    if content:
                        parts.append(content)
                    # Reasoning models stream their thinking in a separate field (vLLM and
                    # llama-server: reasoning_content); it is not text, but it is generated.
                    if content or _reasoning(delta):
                        partial["completion_tokens"] += 1
                    if choice.finish_reason:
                        finish = choice.finish_reason
        latency = self.clock.now() - t0
        completion = getattr(usage, "completion_tokens", None)
        if completion is None:  # no usage chunk: the chunk count is the best we know
            completion = partial["completion_tokens"]
        partial["completion_tokens"] = int(completion)
        return ChatResult(
            text="".join(parts),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(completion),
            latency_s=latency,
            finish_reason=finish or "stop",
            model=model or self.model,
        )

    @contextlib.contextmanager
    def _llm_errors(self) -> Iterator[None]:
        """Translate the SDK's exceptions into ``LLMError`` (streamed or not)."""
        openai = self._openai
        try:
            yield
        except openai.APIStatusError as err:
            raise LLMError(
                f"{self.endpoint} answered HTTP {err.status_code}: {_short(err.message)}",
                status=err.status_code,
                retryable=err.status_code in RETRYABLE_STATUS,
            ) from err
        except openai.APITimeoutError as err:
            raise LLMError(f"{self.endpoint} timed out", retryable=True) from err
        except openai.APIConnectionError as err:
            raise LLMError(
                f"cannot reach {self.endpoint}: is the server running? ({_short(str(err))})",
                retryable=True,
            ) from err
        except openai.APIError as err:
            # An ``error`` event inside a stream (the status was 200 when it began); vLLM puts
            # the HTTP status it means in ``code``.
            body = err.body if isinstance(err.body, dict) else {}
            code = body.get("code")
            status = code if isinstance(code, int) and not isinstance(code, bool) else None
            raise LLMError(
                f"{self.endpoint} reported an error: {_short(err.message)}",
                status=status,
                retryable=status in RETRYABLE_STATUS,
            ) from err

    @property
    def metrics_url(self) -> str:
        root = self.endpoint[: -len("/v1")] if self.endpoint.endswith("/v1") else self.endpoint
        return root + "/metrics"

    async def load(self) -> BackendLoad | None:
        """Requests the server is serving and queueing, from its ``/metrics`` page; ``None``
        when it cannot tell.  A server whose page is missing or has no load gauges (a hosted
        API, llama-server without ``--metrics``) is not asked again; a failed connection is
        (the server may be restarting)."""
        if self._metrics_missing:
            return None
        import aiohttp

        # A session per look (one every few seconds): nothing is left open when a run's loop
        # ends without closing this backend.
        timeout = aiohttp.ClientTimeout(total=METRICS_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.metrics_url) as response,
            ):
                status = response.status
                text = await response.text() if status == 200 else None
        except (TimeoutError, aiohttp.ClientError):
            return None
        load = load_from_metrics(text) if text is not None else None
        if load is None and (text is not None or 400 <= status < 500):
            self._metrics_missing = True
        return load

    async def aclose(self) -> None:
        """Close this loop's HTTP client (clients of finished loops went with their loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        state = self._per_loop.pop(loop, None)
        if state is not None:
            await state[0].close()


def _reasoning(delta: Any) -> str | None:
    return getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
