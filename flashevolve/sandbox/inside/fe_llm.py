"""The model, seen from inside the sandbox.

A sandboxed program has no network.  Its only way to the model is this module::

    import fe_llm
    answer = fe_llm.complete([{"role": "user", "content": "Label: 'refund please'"}],
                             max_tokens=16)
    fe_llm.set_result({"label": answer.strip()})

Each call is one JSON line on a pipe to the parent, which forwards it through the run's model
backend (so it is counted, capped, cancellable and tagged like every other request) and writes
the answer back.  Calls may be made from several threads at once; the parent bounds how many run
together and how many there may be in all.  A refused or failed call raises :class:`ModelError`.

Stdlib only: this file runs inside the sandbox.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
from typing import Any

__all__ = ["ModelError", "complete", "set_result"]


class ModelError(RuntimeError):
    """A model call was refused (call limit, malformed request) or failed in the backend."""


class _Channel:
    def __init__(self, read_fd: int, write_fd: int, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._in = os.fdopen(read_fd, "rb")
        self._out = os.fdopen(write_fd, "wb")
        self._write_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, list[Any]] = {}  # id -> [event, reply]
        self._pending_lock = threading.Lock()
        self.calls: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.closed = False
        threading.Thread(target=self._read_loop, name="fe_llm-reader", daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"
        if len(data) > self.max_bytes:
            raise ModelError(
                f"message of {len(data)} bytes is over the channel's {self.max_bytes}-byte limit"
            )
        with self._write_lock:
            self._out.write(data)
            self._out.flush()

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        ident = next(self._ids)
        slot: list[Any] = [threading.Event(), None]
        with self._pending_lock:
            if self.closed:
                raise ModelError("the channel to the parent is closed")
            self._pending[ident] = slot
        try:
            self.send({**message, "id": ident})
            slot[0].wait()
        finally:
            with self._pending_lock:
                self._pending.pop(ident, None)
        reply: dict[str, Any] = slot[1]
        return reply

    def _read_loop(self) -> None:
        while True:
            line = self._in.readline(self.max_bytes + 1)
            if not line:
                break
            try:
                message = json.loads(line)
            except ValueError:
                continue  # the parent writes only valid lines; ignore anything else
            if message.get("kind") == "reply":
                with self._pending_lock:
                    slot = self._pending.get(message.get("id"))
                if slot is not None:
                    slot[1] = message
                    slot[0].set()
            else:
                self.calls.put(message)
        with self._pending_lock:
            self.closed = True
            for slot in self._pending.values():
                slot[1] = {"error": "the channel to the parent closed"}
                slot[0].set()
        self.calls.put(None)


_channel: _Channel | None = None


def _connect(read_fd: int, write_fd: int, max_bytes: int) -> None:
    global _channel
    _channel = _Channel(read_fd, write_fd, max_bytes)


def _require() -> _Channel:
    if _channel is None:
        raise ModelError("fe_llm is only usable inside a flashevolve sandbox")
    return _channel


def _send(message: dict[str, Any]) -> None:
    _require().send(message)


def _next_call() -> dict[str, Any] | None:
    return _require().calls.get()


def complete(
    messages: str | list[dict[str, str]],
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> str:
    """The model's answer to ``messages`` (a list of ``{"role", "content"}`` or one string,
    sent as a single user message)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    reply = _require().request(
        {"kind": "llm", "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    )
    if "error" in reply:
        raise ModelError(str(reply["error"]))
    return str(reply.get("text", ""))


def set_result(value: Any) -> None:
    """Report the program's structured result (JSON-serialisable) to the parent."""
    _send({"kind": "result", "value": value})
