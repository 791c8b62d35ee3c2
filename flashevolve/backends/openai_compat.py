"""OpenAI-compatible async backend (vLLM, OpenAI, llama-server, flashevolve's own servers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2

from flashevolve.backends.base import (
    BackendLoad,
    ChatRequest,
    ChatResult,
    Fault,
    LLMError,
    notify_dispatch,
)
from flashevolve.backends.gate import PriorityGate
from flashevolve.backends.prometheus import load_from_metrics
from flashevolve.backends.resilience import ResilienceSettings, ResilientCaller, resilience_settings
from flashevolve.backends.resilience.answers import (
    checked_usage,
    result_from_body,
    retry_after_seconds,
    same_model,
)
from flashevolve.backends.wire import STAGE_HEADER
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
    - Holds when the endpoint misbehaves (:mod:`flashevolve.backends.resilience`, settings in
      ``resilience``): each attempt has a deadline from the endpoint's observed speed, a
      straggler gets a hedged copy, garbage answers are retried like a 5xx, retries respect
      ``Retry-After`` and sleep on the injectable clock, and an endpoint that keeps failing is
      left alone for a while (circuit breaker).  ``max_retries``, ``backoff_s`` and
      ``timeout_s`` (the longest deadline of one attempt) override those settings.  Retries,
      absorbed faults, hedges and breaker changes are reported through
      ``ChatRequest.observe``; ``stats()`` counts them.
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
        timeout_s: float | None = None,
        max_retries: int | None = None,
        backoff_s: float | None = None,
        default_max_tokens: int | None = None,
        extra_body: dict[str, Any] | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        stream: bool = False,
        queue: str = "priority",
        resilience: ResilienceSettings | dict[str, Any] | None = None,
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
        self.settings = resilience_settings(
            resilience, max_retries=max_retries, backoff_s=backoff_s, deadline_cap_s=timeout_s
        )
        self.max_retries = self.settings.max_retries
        self.default_max_tokens = default_max_tokens
        self.extra_body = dict(extra_body or {})
        self.stream = stream
        self.clock = clock or LoopClock()
        self._openai = openai
        self._api_key = api_key or "not-needed"
        # The HTTP client and the gate belong to one event loop; a backend object is often
        # used from several (a preflight check, then one loop per background run), so each loop
        # gets its own pair.  Dead loops drop out of the weak map by themselves.
        self._per_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, PriorityGate]
        ] = weakref.WeakKeyDictionary()
        self._metrics_missing = False  # the server answered /metrics without load gauges
        self._caller = ResilientCaller(
            self._send,
            endpoint=self.endpoint,
            settings=self.settings,
            seed=seed,
            slot=self._slot,
            sleep=self.clock.sleep,
        )

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
            "resilience": self.settings.model_dump(),
        }

    def stats(self) -> dict[str, Any]:
        """Requests, attempts, retries, hedges (sent, won, tokens wasted), faults by kind and
        circuit openings, since this client was made."""
        return self._caller.report()

    async def complete(self, request: ChatRequest) -> ChatResult:
        priority = request.priority if self.queue == "priority" else 0
        return await self._caller.complete(request, priority)

    @contextlib.asynccontextmanager
    async def _slot(self, priority: int, request: ChatRequest) -> AsyncIterator[None]:
        # the slot is per attempt: released during backoff so others can use it
        gate = self._loop_state()[1]
        if gate.holders >= gate.limit:
            notify_dispatch(request, False)  # it waits here until the gate lets it through
        async with gate.slot(priority):
            notify_dispatch(request, True)
            try:
                yield
            except BaseException:
                notify_dispatch(request, False)  # back on this side (a retry's backoff)
                raise
            if gate.waiting:
                # The slot goes to the next request now, while the caller still checks this
                # answer: count this one on the client's side, so the server is never counted
                # with more requests than the cap.
                notify_dispatch(request, False)

    def _loop_state(self) -> tuple[Any, PriorityGate]:
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(loop)
        if state is None:
            client = self._openai.AsyncOpenAI(
                base_url=self.endpoint,
                api_key=self._api_key,
                max_retries=0,  # we retry ourselves, on our clock, with our accounting
                # a backstop only: each attempt's own deadline (at most the cap) comes first
                timeout=self.settings.deadline_cap_s + 5.0,
            )
            state = (client, PriorityGate(self.max_concurrency))
            self._per_loop[loop] = state
        return state

    async def _send(self, request: ChatRequest) -> ChatResult:
        """One attempt: the answer checked, or an ``LLMError`` saying which fault it was."""
        client = self._loop_state()[0]
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
        headers = {STAGE_HEADER: request.stage} if request.stage else None
        t0 = self.clock.now()
        with self._llm_errors():
            if self.stream:
                request.partial["completion_tokens"] = 0  # per attempt: a retry starts over
                usage_asked = (extra.get("stream_options") or {}).get("include_usage", True)
                stream = await client.chat.completions.create(
                    **kwargs,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=headers,
                )
                # Leaving the block any way (done, error, cancelled) closes the response: an
                # early exit closes the connection, which the server takes as an abort.
                async with stream:
                    return await self._read_stream(stream, request, max_tokens, usage_asked, t0)
            raw = await client.chat.completions.with_raw_response.create(
                **kwargs, extra_headers=headers
            )
            body = raw.http_response.content
        return result_from_body(
            body,
            endpoint=self.endpoint,
            model=self.model,
            latency_s=self.clock.now() - t0,
            max_tokens=max_tokens,
            messages=request.messages,
        )

    async def _read_stream(
        self,
        stream: AsyncIterator[Any],
        request: ChatRequest,
        max_tokens: int | None,
        usage_asked: bool,
        t0: float,
    ) -> ChatResult:
        partial = request.partial
        parts: list[str] = []
        finish: str | None = None
        usage: Any = None
        model = ""
        wrong_model = saw_choice = saw_content = False
        async for chunk in stream:
            model = chunk.model or model
            wrong_model = wrong_model or not same_model(self.model, chunk.model or "")
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                saw_choice = True
                if choice.index != 0:
                    continue
                delta = choice.delta
                content = delta.content if delta is not None else None
                saw_content = saw_content or content is not None or bool(_reasoning(delta))
                if content:
                    parts.append(content)
                # Reasoning models stream their thinking in a separate field (vLLM and
                # llama-server: reasoning_content); it is not text, but it is generated.
                if content or _reasoning(delta):
                    partial["completion_tokens"] += 1
                if choice.finish_reason:
                    finish = choice.finish_reason
        if not saw_choice:
            raise LLMError(
                f"{self.endpoint} streamed no choices", fault=Fault.EMPTY_CHOICES, retryable=True
            )
        if finish is None:
            raise LLMError(
                f"{self.endpoint} ended the stream before its finish chunk",
                fault=Fault.TRUNCATED,
                retryable=True,
            )
        anomalies: list[str] = [Fault.WRONG_MODEL] if wrong_model else []
        return self._streamed_result(
            request,
            parts,
            finish,
            usage,
            model,
            saw_content,
            max_tokens,
            usage_asked,
            t0,
            anomalies,
        )

    def _streamed_result(
        self,
        request: ChatRequest,
        parts: list[str],
        finish: str,
        usage: Any,
        model: str,
        saw_content: bool,
        max_tokens: int | None,
        usage_asked: bool,
        t0: float,
        anomalies: list[str],
    ) -> ChatResult:
        partial = request.partial
        raw_usage = usage.model_dump() if hasattr(usage, "model_dump") else usage
        prompt, completion, usage_fault = checked_usage(raw_usage, max_tokens)
        if usage_fault is not None:
            if usage_asked or usage_fault != Fault.MISSING_USAGE:
                anomalies.append(usage_fault)
            # no usable usage: the chunk count is the best we know (and 0 prompt tokens)
            prompt, completion = 0, partial["completion_tokens"]
        # tokens were generated (says the usage) but none reached us as content or reasoning
        if not saw_content and completion > 0 and finish != "length":
            anomalies.append(Fault.NULL_CONTENT)
        partial["completion_tokens"] = int(completion)
        return ChatResult(
            text="".join(parts),
            prompt_tokens=prompt,
            completion_tokens=int(completion),
            latency_s=self.clock.now() - t0,
            finish_reason=finish,
            model=model or self.model,
            anomalies=tuple(anomalies),
        )

    @contextlib.contextmanager
    def _llm_errors(self) -> Iterator[None]:
        """Translate whatever the SDK or the wire throws into ``LLMError`` (streamed or not):
        nothing else may escape an attempt."""
        openai = self._openai
        try:
            yield
        except LLMError:
            raise
        except openai.APIStatusError as err:
            status = err.status_code
            raise LLMError(
                f"{self.endpoint} answered HTTP {status}: {_short(err.message)}",
                status=status,
                retryable=status in RETRYABLE_STATUS,
                retry_after_s=retry_after_seconds(err.response.headers),
            ) from err
        except openai.APITimeoutError as err:
            raise LLMError(
                f"{self.endpoint} timed out", fault=Fault.TIMEOUT, retryable=True
            ) from err
        except openai.APIConnectionError as err:
            raise _connection_error(self.endpoint, err.__cause__ or err) from err
        except openai.APIError as err:
            # An ``error`` event inside a stream (the status was 200 when it began); vLLM puts
            # the HTTP status it means in ``code``.  Without one it is the server's failure.
            body = err.body if isinstance(err.body, dict) else {}
            code = body.get("code")
            status = code if isinstance(code, int) and not isinstance(code, bool) else None
            raise LLMError(
                f"{self.endpoint} reported an error: {_short(err.message)}",
                status=status,
                fault=None if status is not None else Fault.SERVER_ERROR,
                retryable=status is None or status in RETRYABLE_STATUS,
            ) from err
        except httpx2.HTTPError as err:  # the wire failed outside the SDK's own wrapping
            raise _connection_error(self.endpoint, err) from err
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            # garbage in a streamed event (JSONDecodeError is a ValueError), or a shape the
            # SDK could not make sense of
            raise LLMError(
                f"{self.endpoint} sent a malformed answer: {_short(str(err))}",
                fault=Fault.MALFORMED,
                retryable=True,
            ) from err
        except openai.OpenAIError as err:
            raise LLMError(f"{self.endpoint}: {_short(str(err))}", fault=Fault.UNEXPECTED) from err

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
        # A client per look (one every few seconds): nothing is left open when a run's loop
        # ends without closing this backend.  No proxies from the environment for a look at
        # a server's own page.
        try:
            async with httpx2.AsyncClient(timeout=METRICS_TIMEOUT_S, trust_env=False) as http:
                response = await http.get(self.metrics_url)
                status = response.status_code
                text = response.text if status == 200 else None
        except httpx2.HTTPError:
            return None
        load = load_from_metrics(text) if text is not None else None
        if load is None and (text is not None or 400 <= status < 500):
            self._metrics_missing = True
        return load

    async def release_loop(self) -> None:
        """Close the HTTP client of the running loop only (the backend stays usable from other
        loops): a run calls this at its end, so no connection outlives the loop it belongs to.
        Unlike ``aclose``, never more: a subclass that owns its server keeps it running."""
        await self._close_loop_client()

    async def aclose(self) -> None:
        """Close this loop's HTTP client (clients of finished loops went with their loop)."""
        await self._close_loop_client()

    async def _close_loop_client(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        state = self._per_loop.pop(loop, None)
        if state is not None:
            await state[0].close()


def _connection_error(endpoint: str, cause: BaseException) -> LLMError:
    """A dropped connection; a body cut short of its announced length is ``truncated``."""
    text = str(cause)
    cut_short = isinstance(cause, httpx2.RemoteProtocolError) and (
        "incomplete" in text or "complete message body" in text
    )
    if cut_short:
        return LLMError(
            f"{endpoint} cut its answer short ({_short(text)})",
            fault=Fault.TRUNCATED,
            retryable=True,
        )
    return LLMError(
        f"cannot reach {endpoint} or it dropped the connection: is the server running? "
        f"({_short(text) or type(cause).__name__})",
        fault=Fault.CONNECTION,
        retryable=True,
    )


def _reasoning(delta: Any) -> str | None:
    return getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
