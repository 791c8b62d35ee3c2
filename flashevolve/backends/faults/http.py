"""Injecting faults into flashevolve's HTTP server (``serve-sim --faults SPEC``).

The server draws a fault per request (:class:`~flashevolve.backends.faults.plan.FaultPlan`);
this module carries it out over the wire:

- at once, before the responder runs: ``refuse`` (TCP reset), ``hang`` (silence until the
  client leaves, or ``hang_s``), ``http429`` / ``http429_retry_after`` / ``http500`` /
  ``http502`` / ``http503`` (OpenAI-shaped error bodies);
- on the answer, after the responder ran: ``reset`` (part of the answer, then a TCP reset),
  ``truncated`` (a plain body shorter than its ``Content-Length``; a stream that ends without
  its finish chunk and ``[DONE]``), ``drip`` (the answer spread over ``drip_s`` seconds), and
  the body faults of :mod:`flashevolve.backends.faults.body`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from flashevolve.backends import wire
from flashevolve.backends.faults.body import ABSURD_USAGE, BODY_KINDS, broken_body, broken_chunk
from flashevolve.backends.faults.plan import FaultPlan
from flashevolve.backends.faults.spec import STATUS_OF, FaultKind
from flashevolve.backends.sse import CutStream, Event, EventFilter, reset_connection

#: Kinds that break every chunk of a stream.
CHUNK_KINDS = frozenset({FaultKind.EMPTY_CHOICES, FaultKind.WRONG_MODEL, FaultKind.NULL_CONTENT})

#: Pieces a drip is cut into (at most): each arrives ``drip_s / pieces`` after the last.
DRIP_PIECES = 40


async def early(http: web.Request, plan: FaultPlan, kind: FaultKind) -> web.StreamResponse:
    """Answer a fault that needs no answer from the responder."""
    spec = plan.spec
    if kind == FaultKind.REFUSE:
        plan.delivered(kind)
        reset_connection(http)
        return web.Response(status=500)  # never sent: the connection is gone
    if kind == FaultKind.HANG:
        plan.delivered(kind)
        await asyncio.sleep(spec.hang_s)  # a client that leaves cancels this handler
        reset_connection(http)
        return web.Response(status=500)
    status = STATUS_OF[kind]
    headers = {}
    if kind == FaultKind.HTTP429_RETRY_AFTER:
        headers["Retry-After"] = _retry_after(spec.retry_after_s, spec.retry_after_form)
    plan.delivered(kind)
    message = f"injected fault {kind}: the server is unwell, try again later"
    return web.json_response(wire.error_body(status, message), status=status, headers=headers)


def _retry_after(seconds: float, form: str) -> str:
    if form == "date":
        # An HTTP date is absolute, so this is wall time on purpose (not run time).  HTTP dates
        # have one-second resolution: round up so the client never comes too soon.  (The
        # server's own Date header is the client's reference for "now".)
        return email.utils.formatdate(time.time() + seconds + 1, usegmt=True)
    return f"{seconds:g}"


async def plain(
    http: web.Request, plan: FaultPlan, kind: FaultKind, body: dict[str, Any]
) -> web.StreamResponse:
    """Send a whole answer broken as ``kind`` says."""
    if kind in BODY_KINDS:
        broken = broken_body(kind, body)
        data = broken if isinstance(broken, bytes) else json.dumps(broken).encode()
        plan.delivered(kind)
        return web.Response(body=data, content_type="application/json")
    data = json.dumps(body).encode()
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(data)
    await resp.prepare(http)
    if kind == FaultKind.DRIP:
        plan.delivered(kind)
        step = max(1, -(-len(data) // DRIP_PIECES))
        pieces = [data[i : i + step] for i in range(0, len(data), step)]
        for piece in pieces:
            await asyncio.sleep(plan.spec.drip_s / len(pieces))
            await resp.write(piece)
        await resp.write_eof()
        return resp
    await resp.write(data[: len(data) // 2])
    plan.delivered(kind)
    if kind == FaultKind.RESET:
        reset_connection(http)
    elif kind == FaultKind.TRUNCATED:
        if http.transport is not None:
            http.transport.close()  # an orderly close, short of the announced length
    else:
        raise ValueError(f"{kind} is not a fault of a plain answer")
    return resp


def stream_filter(plan: FaultPlan, kind: FaultKind) -> EventFilter:
    """An event filter that breaks a stream as ``kind`` says (see
    :func:`~flashevolve.backends.sse.stream_chat`); it counts the fault when the broken part goes
    out.  A streamed ``drip`` waits ``drip_s / 40`` before each event; ``reset``, ``truncated``
    and ``malformed`` strike after three pieces of content (or at the finish chunk of a shorter
    answer)."""

    async def apply(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        sent = 0
        counted = False

        def count() -> None:
            nonlocal counted
            if not counted:
                counted = True
                plan.delivered(kind)

        async for event in events:
            is_content = isinstance(event, dict) and _has_content(event)
            if kind == FaultKind.DRIP:
                count()
                await asyncio.sleep(plan.spec.drip_s / DRIP_PIECES)
            elif kind in (FaultKind.RESET, FaultKind.TRUNCATED, FaultKind.MALFORMED):
                if sent >= 3 or event == "[DONE]" or _is_finish(event):
                    count()
                    if kind == FaultKind.MALFORMED:
                        yield b'{"choices": [{"delta": {"content": "unfinished'
                    raise CutStream("reset" if kind == FaultKind.RESET else "eof")
            elif kind == FaultKind.MISSING_USAGE and _is_usage(event):
                count()
                continue
            elif kind == FaultKind.ABSURD_USAGE and _is_usage(event):
                count()
                event = {**event, "usage": dict(ABSURD_USAGE)}  # type: ignore[dict-item]
            elif kind in CHUNK_KINDS and isinstance(event, dict) and "choices" in event:
                count()
                event = broken_chunk(kind, event)
            sent += is_content
            yield event

    return apply


def _has_content(event: dict[str, Any]) -> bool:
    return any((c.get("delta") or {}).get("content") for c in event.get("choices") or [])


def _is_finish(event: Event) -> bool:
    return isinstance(event, dict) and any(
        c.get("finish_reason") for c in event.get("choices") or []
    )


def _is_usage(event: Event) -> bool:
    return isinstance(event, dict) and bool(event.get("usage")) and not event.get("choices")
