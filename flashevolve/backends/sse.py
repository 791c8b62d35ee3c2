"""Streaming for :class:`~flashevolve.backends.server.OpenAICompatServer`: OpenAI-format SSE.

A streamed answer is an async iterator of text pieces (``str``) ending with the final
:class:`~flashevolve.backends.reply.Reply`.  A responder that can pace its pieces implements
``respond_stream(request)``; any other responder is streamed by :func:`reply_stream` all at once
when its ``respond`` returns.  :func:`stream_chat` turns such an iterator into
``chat.completion.chunk`` events (a role chunk, one chunk per piece, a chunk with the
``finish_reason``, a usage chunk if asked for, then ``data: [DONE]``), the way vLLM and
llama-server do.  Headers go out with the first piece, so an error raised before it is still an
ordinary HTTP error status (and a 429 is retried by clients).

The events are produced by one generator and written by one loop; an injected fault
(:mod:`flashevolve.backends.faults.http`) sits between the two and may change, slow down or cut
the events, or reset the connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, Literal

from aiohttp import web

from flashevolve.backends import wire
from flashevolve.backends.base import ChatRequest, LLMError
from flashevolve.backends.reply import Reply, Responder

Outcome = Literal["completed", "error", "disconnected", "faulted"]

#: What the event generator yields: a JSON payload, raw bytes for a ``data:`` line (garbage), or
#: the final ``"[DONE]"``.
Event = dict[str, Any] | bytes | str
#: A filter over the events (an injected fault); it may raise :class:`CutStream` to end early.
EventFilter = Callable[[AsyncIterator[Event]], AsyncIterator[Event]]


class CutStream(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by an event filter to end the stream: ``reset`` the connection, or finish the
    body (``eof``) without the events still due."""

    def __init__(self, how: Literal["reset", "eof"]) -> None:
        super().__init__(how)
        self.how = how


def split_pieces(text: str, tokens: int) -> list[str]:
    """``text`` cut into ``min(tokens, len(text))`` non-empty pieces of near-equal length.

    One piece per modelled token when the text is long enough (the scripted server's token count
    is ``ceil(chars / 4)``, so it always is), so a client counting content chunks counts tokens.
    """
    if not text:
        return []
    n = min(max(1, tokens), len(text))
    cuts = [len(text) * i // n for i in range(n + 1)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


async def paced(pieces: Sequence[str], duration_s: float) -> AsyncGenerator[str, None]:
    """Yield ``pieces`` spread evenly over ``duration_s``: piece ``i`` at ``(i + 1) / n`` of it,
    so the last one lands when a non-streamed answer would, and a client that leaves halfway has
    received about half."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    if not pieces:
        await asyncio.sleep(duration_s)
        return
    n = len(pieces)
    for i, piece in enumerate(pieces):
        delay = t0 + duration_s * (i + 1) / n - loop.time()
        if delay > 0:  # behind schedule (a slow reader): catch up without sleeping
            await asyncio.sleep(delay)
        yield piece


def reply_stream(responder: Responder, request: ChatRequest) -> AsyncIterator[str | Reply]:
    """The responder's own stream if it has one, else its whole answer replayed in pieces."""
    stream = getattr(responder, "respond_stream", None)
    if stream is not None:
        own: AsyncIterator[str | Reply] = stream(request)
        return own
    return _replay(responder, request)


async def _replay(responder: Responder, request: ChatRequest) -> AsyncIterator[str | Reply]:
    reply = await responder.respond(request)
    for piece in split_pieces(reply.text, reply.completion_tokens):
        yield piece
    yield reply


def llm_error_body(err: LLMError) -> dict[str, Any]:
    return wire.error_body(err.status or 500, str(err))


async def _events(
    first: str | Reply,
    items: AsyncIterator[str | Reply],
    *,
    rid: str,
    model: str,
    include_usage: bool,
) -> AsyncIterator[Event]:
    """The events of one answer, from its pieces; a failure after the first piece becomes an
    ``error`` event, as vLLM sends it."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return wire.chunk_body(rid, model, delta, finish, include_usage=include_usage)

    yield chunk({"role": "assistant", "content": ""})
    try:
        item = first
        while isinstance(item, str):
            yield chunk({"content": item})
            item = await anext(items)
    except LLMError as err:  # headers are out: report it in the stream
        yield llm_error_body(err)
        yield "[DONE]"
        return
    reply = item
    yield chunk({}, reply.finish_reason)
    if include_usage:
        yield wire.usage_chunk(rid, model, reply.prompt_tokens, reply.completion_tokens)
    yield "[DONE]"


async def stream_chat(
    http: web.Request,
    items: AsyncIterator[str | Reply],
    *,
    rid: str,
    model: str,
    include_usage: bool,
    fault: EventFilter | None = None,
) -> tuple[web.StreamResponse, Outcome]:
    """Stream ``items`` as SSE; always closes ``items`` (which stops the responder's work).

    Raises ``LLMError`` if the answer fails before its first piece (nothing sent yet: the caller
    answers an HTTP error); a later failure is sent as an ``error`` event (outcome "error").
    A client that disconnects cancels the handler (``CancelledError`` propagates) or makes a
    write fail (outcome "disconnected").  ``fault`` filters the events (outcome "faulted" when
    it cut the stream).
    """
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        first = await anext(items)
        await resp.prepare(http)
        events = _events(first, items, rid=rid, model=model, include_usage=include_usage)
        if fault is not None:
            events = fault(events)
        outcome: Outcome = "completed"
        try:
            async for event in events:
                if isinstance(event, dict) and "error" in event:
                    outcome = "error"
                await _send(resp, event)
        except CutStream as cut:
            if cut.how == "reset":
                reset_connection(http)
            else:
                await resp.write_eof()
            return resp, "faulted"
        await resp.write_eof()
        return resp, outcome
    except ConnectionResetError:  # the write failed before the handler was cancelled
        return resp, "disconnected"
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


async def _send(resp: web.StreamResponse, event: Event) -> None:
    if isinstance(event, bytes):
        data = event
    elif isinstance(event, str):
        data = event.encode()
    else:
        data = json.dumps(event).encode()
    await resp.write(b"data: " + data + b"\n\n")


def reset_connection(http: web.Request) -> None:
    """Drop the client's connection with a TCP reset (no FIN, no more bytes)."""
    transport = http.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # linger on, timeout 0: close() sends RST instead of an orderly FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
