"""flashevolve's one OpenAI-compatible HTTP server (aiohttp): the scripted test server and serve-sim.

A server is a *responder* behind ``/v1/chat/completions``
(:mod:`flashevolve.backends.responders`: the scripted test server's responder and the serving
simulator in real time).

Other endpoints: ``/v1/models``, ``/health``, ``/metrics`` (vLLM's load gauges when the
responder reports its load -- the simulator with an engine profile -- else 404) and ``/stats``
(JSON: requests served, completed, cancelled, failed, in flight, and with ``faults`` the faults
injected per kind, see :mod:`flashevolve.backends.faults`).
``stream=true`` answers OpenAI-format server-sent events (:mod:`flashevolve.backends.sse`): the
scripted responder spreads its pieces over the latency it models; other responders (the
simulator) send theirs when the answer is ready.  Other request fields (e.g. ``response_format``, a llama.cpp ``grammar``) are accepted and
handed to the responder as ``request.extra_body``; the built-in responders ignore them (tests
read them).  A client that disconnects -- waiting or mid-stream -- cancels its handler (aiohttp
``handler_cancellation``), which cancels the responder's work (for the simulator: a real abort,
KV freed) and counts as ``cancelled``.

``faults`` (a SPEC string, see :mod:`flashevolve.backends.faults.spec`) makes the server
misbehave on a seeded fraction of requests: resets, hangs, drips, 429s, 5xx, garbage.

aiohttp stays as the server (the HTTP *client* everywhere else is httpx2, the library the
openai SDK is built on): httpx2 has no server, and aiohttp's handler cancellation on client
disconnect is what turns a client that gives up into an abort of the simulated request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from flashevolve.backends import sse, wire
from flashevolve.backends.base import ChatRequest, LLMError, LoadReporter
from flashevolve.backends.faults import http as fault_http
from flashevolve.backends.faults.plan import FaultPlan
from flashevolve.backends.faults.spec import EARLY_KINDS, FaultKind, FaultSpec, parse_fault_spec
from flashevolve.backends.prometheus import vllm_metrics_text
from flashevolve.backends.reply import Reply, Responder
from flashevolve.backends.responders import (  # re-exported: the server's public names
    FixedLatency,
    LognormalLatency,
    ScriptedResponder,
    SimulatorResponder,
)
from flashevolve.backends.wire import STAGE_HEADER
from flashevolve.errors import BackendError
from flashevolve.runtime.clock import cancel_all_tasks

__all__ = [
    "STAGE_HEADER",
    "FixedLatency",
    "LognormalLatency",
    "OpenAICompatServer",
    "Reply",
    "Responder",
    "ScriptedResponder",
    "SimulatorResponder",
    "serve_in_thread",
]


# -- the HTTP server -----------------------------------------------------------------------------


def _error(status: int, message: str, *, code: str | None = None) -> web.Response:
    return web.json_response(wire.error_body(status, message, code=code), status=status)


def _llm_error(err: LLMError) -> web.Response:
    return _error(err.status or 500, str(err))


#: Request fields the server itself reads (or that every client sends); the rest is extra_body.
_STANDARD_FIELDS = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "seed"}
) | {"stream", "stream_options"}


def _parse_messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be an object with a string 'role'")
        content = m.get("content")
        if isinstance(content, list):  # multi-part content: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or a list of text parts")
        messages.append({"role": m["role"], "content": content})
    return messages


def _optional_int(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"'{name}' must be a positive integer")
            return value
    return None


class OpenAICompatServer:
    """Serve a responder over OpenAI's chat-completions API on ``host:port`` (0 = any free port)."""

    def __init__(
        self,
        responder: Responder,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        strict_model: bool = False,
        faults: str | FaultSpec | None = None,
    ) -> None:
        #: Answer an unknown model name with 404 (as OpenAI and vLLM do) instead of serving it.
        self.strict_model = strict_model
        spec = parse_fault_spec(faults)
        #: The faults this server injects (None: none).
        self.faults = FaultPlan(spec) if spec is not None else None
        self.responder = responder
        self.host = host
        self.port = port
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        self.requests = self.completed = self.cancelled = self.errors = self.in_flight = 0
        self.faulted = 0  # requests that got an injected fault

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "faulted": self.faulted,
            "in_flight": self.in_flight,
        }
        if self.faults is not None:
            out["faults"] = self.faults.stats()
        return out

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)  # vLLM's load gauges, when simulated
        app.router.add_get("/stats", self._stats)
        # handler_cancellation: a client disconnect cancels the handler, hence the request.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            if err.errno == errno.EADDRINUSE:
                raise BackendError(
                    f"port {self.port} on {self.host} is already in use; pick another port "
                    f"(or 0 for any free one)"
                ) from None
            raise BackendError(f"cannot listen on {self.host}:{self.port}: {err}") from None
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.port
        self.base_url = f"http://{self.host}:{self.port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.responder.model})

    async def _metrics(self, _: web.Request) -> web.Response:
        load = await self.responder.load() if isinstance(self.responder, LoadReporter) else None
        if load is None:
            return web.Response(status=404, text="this server reports no load\n")
        return web.Response(text=vllm_metrics_text(load, self.responder.model))

    async def _models(self, _: web.Request) -> web.Response:
        model = {
            "id": self.responder.model,
            "object": "model",
            "created": 0,
            "owned_by": "flashevolve",
        }
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, http: web.Request) -> web.StreamResponse:
        self.requests += 1
        try:
            body = await http.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.errors += 1
            return _error(400, "the request body is not valid JSON")
        try:
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            stream_options = body.get("stream_options") or {}
            if not isinstance(stream_options, dict):
                raise ValueError("'stream_options' must be an object")
            model = body.get("model")
            if self.strict_model and model is not None and model != self.responder.model:
                # Like OpenAI and vLLM: an unknown model name is a 404, not a silent answer.
                self.errors += 1
                return _error(
                    404,
                    f"the model {model!r} does not exist; this server serves "
                    f"{self.responder.model!r}",
                    code="model_not_found",
                )
            request = ChatRequest(
                messages=_parse_messages(body.get("messages")),
                max_tokens=_optional_int(body, "max_completion_tokens", "max_tokens"),
                temperature=body.get("temperature"),
                seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
                stage=http.headers.get(STAGE_HEADER, ""),
                extra_body={k: v for k, v in body.items() if k not in _STANDARD_FIELDS} or None,
            )
        except ValueError as err:
            self.errors += 1
            return _error(400, str(err))
        fault = self._draw_fault()
        if body.get("stream"):
            include_usage = bool(stream_options.get("include_usage"))
            return await self._stream(http, request, include_usage, fault)
        self.in_flight += 1
        try:
            if fault is not None and fault[1] in EARLY_KINDS:
                self.faulted += 1
                return await fault_http.early(http, *fault)
            reply = await self.responder.respond(request)
            if fault is not None:
                self.faulted += 1
                return await fault_http.plain(http, *fault, self._body(reply))
        except asyncio.CancelledError:
            self.cancelled += 1  # the client went away; the responder's work was aborted
            raise
        except LLMError as err:
            self.errors += 1
            return _llm_error(err)
        finally:
            self.in_flight -= 1
        self.completed += 1
        return web.json_response(self._body(reply))

    async def _stream(
        self,
        http: web.Request,
        request: ChatRequest,
        include_usage: bool,
        fault: tuple[FaultPlan, FaultKind] | None,
    ) -> web.StreamResponse:
        self.in_flight += 1
        try:
            if fault is not None and fault[1] in EARLY_KINDS:
                self.faulted += 1
                return await fault_http.early(http, *fault)
            resp, outcome = await sse.stream_chat(
                http,
                sse.reply_stream(self.responder, request),
                rid=self._new_id(),
                model=self.responder.model,
                include_usage=include_usage,
                fault=fault_http.stream_filter(*fault) if fault is not None else None,
            )
        except asyncio.CancelledError:
            self.cancelled += 1  # the client went away; closing the stream stopped the work
            raise
        except LLMError as err:  # failed before the first piece: an ordinary HTTP error
            self.errors += 1
            return _llm_error(err)
        finally:
            self.in_flight -= 1
        if fault is not None and outcome != "disconnected":
            self.faulted += 1
        elif outcome == "completed":
            self.completed += 1
        elif outcome == "error":
            self.errors += 1
        else:
            self.cancelled += 1
        return resp

    def _draw_fault(self) -> tuple[FaultPlan, FaultKind] | None:
        if self.faults is None:
            return None
        kind = self.faults.draw()
        return None if kind is None else (self.faults, kind)

    def _new_id(self) -> str:
        rid = hashlib.blake2b(f"{next(self._ids)}".encode(), digest_size=6).hexdigest()
        return f"chatcmpl-sim-{rid}"

    def _body(self, reply: Reply) -> dict[str, Any]:
        return wire.completion_body(
            self._new_id(),
            self.responder.model,
            reply.text,
            reply.finish_reason,
            reply.prompt_tokens,
            reply.completion_tokens,
        )


@contextlib.contextmanager
def serve_in_thread(
    responder: Responder,
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    start_timeout_s: float = 10.0,
    strict_model: bool = False,
    faults: str | FaultSpec | None = None,
) -> Iterator[str]:
    """Run a server on its own event loop in a daemon thread; yields the base URL (``.../v1``).

    For tests and notebooks (whose own loop is busy).  Leaving the block stops the server,
    cancels whatever is in flight and joins the thread.  ``faults``: a fault SPEC; the server's
    counts are at ``GET /stats``.
    """
    server = OpenAICompatServer(responder, host, port, strict_model=strict_model, faults=faults)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as err:  # reported to the caller's thread below
            failure.append(err)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="flashevolve-server", daemon=True)
    thread.start()
    if not started.wait(start_timeout_s):
        raise BackendError(f"the server on {host}:{port} did not start within {start_timeout_s}s")
    if failure:
        thread.join()
        loop.close()
        raise failure[0]
    try:
        yield server.base_url
    finally:
        try:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                _close_loop(loop)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    cancel_all_tasks(loop)
    loop.close()
