"""Streaming for :class:`~flashevolve.backends.server.OpenAICompatServer`: OpenAI-format SSE.

A streamed answer is an async iterator of text pieces (``str``) ending with the final
:class:`~flashevolve.backends.server.Reply`.  A responder that can pace its pieces implements
``respond_stream(request)``; any other responder is streamed by :func:`reply_stream` all at once
when its ``respond`` returns.  :func:`stream_chat` turns such an iterator into
``chat.completion.chunk`` events (a role chunk, one chunk per piece, a chunk with the
``finish_reason``, a usage chunk if asked for, then ``data: [DONE]``), the way vLLM and
llama-server do.  Headers go out with the first piece, so an error raised before it is still an
ordinary HTTP error status (and a 429 is retried by clients).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from flashevolve.backends.base import ChatRequest, LLMError

if TYPE_CHECKING:
    from flashevolve.backends.responders import Reply, Responder

Outcome = Literal["completed", "error", "disconnected"]


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


async def paced(pieces: Sequence[str], duration_s: float) -> AsyncIterator[str]:
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
        return stream(request)
    return _replay(responder, request)


async def _replay(responder: Responder, request: ChatRequest) -> AsyncIterator[str | Reply]:
    reply = await responder.respond(request)
    for piece in split_pieces(reply.text, reply.completion_tokens):
        yield piece
    yield reply


def error_body(err: LLMError) -> dict[str, Any]:
    status = err.status or 500
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        kind = "requests"
    return {"error": {"message": str(err), "type": kind, "param": None, "code": status}}


async def stream_chat(
    http: web.Request,
    items: AsyncIterator[str | Reply],
    *,
    rid: str,
    model: str,
    include_usage: bool,
) -> tuple[web.StreamResponse, Outcome]:
    """Stream ``items`` as SSE; always closes ``items`` (which stops the responder's work).

    Raises ``LLMError`` if the answer fails before its first piece (nothing sent yet: the caller
    answers an HTTP error); a later failure is sent as an ``error`` event (outcome "error").
    A client that disconnects cancels the handler (``CancelledError`` propagates) or makes a
    write fail (outcome "disconnected").
    """
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        first = await anext(items)
        await resp.prepare(http)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }
            if include_usage:  # as OpenAI does: null on every chunk but the last
                body["usage"] = None
            return body

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await resp.write(f"data: {data}\n\n".encode())

        try:
            await send(chunk({"role": "assistant", "content": ""}))
            item = first
            while isinstance(item, str):
                await send(chunk({"content": item}))
                item = await anext(items)
            reply = item
            await send(chunk({}, reply.finish_reason))
            if include_usage:
                usage = {
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                }
                await send({**chunk({}), "choices": [], "usage": usage})
            outcome: Outcome = "completed"
        except LLMError as err:  # headers are out: report it in the stream, as vLLM does
            await send(error_body(err))
            outcome = "error"
        await send("[DONE]")
        await resp.write_eof()
        return resp, outcome
    except ConnectionResetError:  # the write failed before the handler was cancelled
        return resp, "disconnected"
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
