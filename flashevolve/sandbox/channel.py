"""The parent's end of the model channel: JSON lines from the program, answers back.

Everything that arrives is untrusted: a line is bounded in size, parsed, validated, and a bad one
becomes an error reply (and a note in the result), never an exception in the parent.  Model calls
are forwarded to a caller-provided coroutine (normally the run's instrumented backend, see
:func:`llm_forwarder`), at most ``max_llm_concurrency`` at once and ``max_llm_calls`` in all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flashevolve.backends.base import LLM, ChatRequest
from flashevolve.sandbox.config import LLMCall, SandboxConfig

#: What the parent calls for each model request of the program; returns the answer's text.
LLMHandler = Callable[[LLMCall], Awaitable[str]]
#: More malformed lines than this is a flood: the program is killed.
MAX_CHANNEL_ERRORS = 100


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class _LLMRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["llm"]
    id: int
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)


def llm_forwarder(
    llm: LLM,
    *,
    stage: str,
    item_id: str = "",
    role: str = "task",
    max_tokens: int | None = None,
    temperature: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> LLMHandler:
    """A handler that sends each sandboxed call through ``llm`` (pass the run's instrumented
    backend: the call is then counted, concurrency-capped, cancellable and tagged with
    ``stage``/``item_id`` like any other request).  The program's own ``max_tokens`` and
    ``temperature`` win over the defaults given here."""

    async def forward(call: LLMCall) -> str:
        request = ChatRequest(
            messages=call.messages,
            max_tokens=call.max_tokens if call.max_tokens is not None else max_tokens,
            temperature=call.temperature if call.temperature is not None else temperature,
            stage=stage,
            item_id=item_id,
            role=role,
            metadata={"sandbox_call": call.index, **(metadata or {})},
        )
        return (await llm.complete(request)).text

    return forward


class ParentChannel:
    """Reads the program's lines, answers model calls, keeps results and session replies."""

    def __init__(
        self,
        config: SandboxConfig,
        reader: asyncio.StreamReader,
        write: Callable[[bytes], None],
        llm: LLMHandler | None,
        on_flood: Callable[[], None],
    ) -> None:
        self.config = config
        self._reader = reader
        self._write = write
        self._llm = llm
        self._on_flood = on_flood
        self._gate = asyncio.Semaphore(config.max_llm_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.llm_calls = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.value: Any = None
        self.has_value = False
        self.program_error: str | None = None
        self.hello: dict[str, Any] | None = None
        self.reported_usage: dict[str, Any] | None = None
        #: Session replies: "ready" under key 0, "return"/"raise" under the call's id.
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.closed = asyncio.get_running_loop().create_future()

    # ---------------------------------------------------------------- reading

    async def pump(self) -> None:
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except ValueError:  # longer than the limit: the reader skipped it
                    self.note(f"a line over the {self.config.max_message_bytes}-byte limit")
                    continue
                if not line:
                    break
                self.dispatch(line)
        finally:
            if not self.closed.done():
                self.closed.set_result(None)
            for future in self.replies.values():
                if not future.done():
                    future.set_result({"kind": "eof"})

    def dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            self.note(f"not JSON: {line[:80]!r}")
            return
        if not isinstance(message, dict):
            self.note(f"not a JSON object: {line[:80]!r}")
            return
        kind = message.get("kind")
        if kind == "llm":
            self._llm_request(message)
        elif kind == "result":
            self.value, self.has_value = message.get("value"), True
        elif kind == "error":
            self.program_error = str(message.get("error"))[:500]
        elif kind == "usage":
            self.reported_usage = message
        elif kind == "hello" and self.hello is None:
            self.hello = message
        elif kind in ("ready", "return", "raise"):
            ident = 0 if kind == "ready" else message.get("id")
            future = self.replies.get(ident) if isinstance(ident, int) else None
            if future is not None and not future.done():
                future.set_result(message)
            else:
                self.note(f"unexpected {kind!r} message")
        else:
            self.note(f"unknown message kind {kind!r}")

    def note(self, problem: str) -> None:
        self.error_count += 1
        if len(self.errors) < 20:
            self.errors.append(problem)
        if self.error_count > MAX_CHANNEL_ERRORS:
            self._on_flood()

    # ---------------------------------------------------------------- model calls

    def _llm_request(self, message: dict[str, Any]) -> None:
        ident = message.get("id")
        try:
            request = _LLMRequest.model_validate(message)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            problem = f"malformed model call: {where}: {first['msg']}"
            self.note(problem)
            self.reply(ident, error=problem)
            return
        cap = self.config.max_tokens_cap
        if request.max_tokens is not None and request.max_tokens > cap:
            self.note(f"max_tokens {request.max_tokens} over the cap of {cap}")
            self.reply(ident, error=f"max_tokens must be at most {cap}")
            return
        if self._llm is None:
            self.reply(ident, error="this sandbox has no model channel")
            return
        if self.llm_calls >= self.config.max_llm_calls:
            self.note("model call over the limit")
            self.reply(
                ident, error=f"the limit of {self.config.max_llm_calls} model calls is reached"
            )
            return
        self.llm_calls += 1
        call = LLMCall(
            index=self.llm_calls,
            messages=[m.model_dump() for m in request.messages],
            max_tokens=request.max_tokens,
            temperature=request.temperature,
        )
        task = asyncio.create_task(self._forward(request.id, call), name=f"sandbox-llm-{ident}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, ident: int, call: LLMCall) -> None:
        assert self._llm is not None
        try:
            async with self._gate:
                text = await self._llm(call)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a backend failure goes back to the program as ModelError
            self.note(f"model call {call.index} failed: {type(err).__name__}: {err}")
            self.reply(ident, error=f"{type(err).__name__}: {err}")
            return
        self.reply(ident, text=str(text))

    def reply(self, ident: Any, *, text: str | None = None, error: str | None = None) -> None:
        body: dict[str, Any] = {"kind": "reply", "id": ident if isinstance(ident, int) else None}
        if error is not None:
            body["error"] = error[:2000]
        else:
            body["text"] = text
        self.send(body)

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"
        if len(data) > self.config.max_message_bytes and message.get("kind") == "reply":
            limit = self.config.max_message_bytes
            data = (
                json.dumps(
                    {
                        "kind": "reply",
                        "id": message.get("id"),
                        "error": f"answer over {limit} bytes",
                    }
                ).encode()
                + b"\n"
            )
        self._write(data)

    async def aclose(self) -> None:
        """Cancel model calls still in flight (the program is gone; nobody will read them)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
