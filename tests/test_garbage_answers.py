"""Garbage answers never escape as anything but ``LLMError``: a raw HTTP server on 127.0.0.1
answers HTTP 200 with whatever bytes a test gives it, plain or as server-sent events, and the
client (no retries, so each answer is judged once) must raise ``LLMError`` with a fault name --
never ``JSONDecodeError``, ``AttributeError`` or the like.  The answer checker itself is also fed
shapes no server should send."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from flashevolve.backends.base import ChatRequest, Fault, LLMError
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.resilience.answers import result_from_body

GOOD = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}

PLAIN = {
    "empty": (b"", Fault.MALFORMED),
    "null": (b"null", Fault.MALFORMED),
    "list": (b"[]", Fault.MALFORMED),
    "number": (b"42", Fault.MALFORMED),
    "choices-string": (b'{"choices": "x"}', Fault.MALFORMED),
    "choices-of-numbers": (b'{"choices": [1]}', Fault.MALFORMED),
    "content-number": (b'{"choices": [{"message": {"content": 5}}]}', Fault.MALFORMED),
    "message-null": (b'{"choices": [{"message": null}]}', Fault.MALFORMED),
    "finish-number": (
        b'{"choices": [{"message": {"content": "a"}, "finish_reason": 3}]}',
        Fault.MALFORMED,
    ),
    "not-utf8": (b"\xff\xfe\x00", Fault.MALFORMED),
    "cut": (json.dumps(GOOD).encode()[:40], Fault.MALFORMED),
    "no-choices": (b'{"choices": []}', Fault.EMPTY_CHOICES),
}

STREAMS = {
    "number-event": (b"data: 42\n\n", Fault.MALFORMED),
    "choices-number": (b'data: {"choices": 5}\n\n', Fault.MALFORMED),
    "delta-number": (b'data: {"choices": [{"index": 0, "delta": 7}]}\n\n', Fault.MALFORMED),
    "not-json": (b"data: {oops\n\n", Fault.MALFORMED),
    "only-done": (b"data: [DONE]\n\n", Fault.EMPTY_CHOICES),
    "nothing": (b"", Fault.EMPTY_CHOICES),
    "no-finish": (
        b'data: {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}\n\n'
        b"data: [DONE]\n\n",
        Fault.TRUNCATED,
    ),
    "error-without-code": (b'data: {"error": {"message": "boom"}}\n\n', Fault.SERVER_ERROR),
}


async def _judge(payload: bytes, *, stream: bool) -> LLMError:
    async def answer(http: web.Request) -> web.StreamResponse:
        await http.read()
        content_type = "text/event-stream" if stream else "application/json"
        return web.Response(body=payload, content_type=content_type)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    llm = OpenAICompatLLM(f"http://127.0.0.1:{port}/v1", "m", stream=stream, max_retries=0)
    try:
        with pytest.raises(LLMError) as err:
            await llm.complete(ChatRequest([{"role": "user", "content": "hi"}]))
        return err.value
    finally:
        await llm.aclose()
        await runner.cleanup()


@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_garbage_is_an_llm_error(name: str) -> None:
    payload, fault = PLAIN[name]
    err = asyncio.run(_judge(payload, stream=False))
    assert err.fault == fault and err.infrastructure


@pytest.mark.parametrize("name", list(STREAMS))
def test_streamed_garbage_is_an_llm_error(name: str) -> None:
    payload, fault = STREAMS[name]
    err = asyncio.run(_judge(payload, stream=True))
    assert err.fault == fault and err.infrastructure


def _shapes() -> list[object]:
    """JSON values of many wrong shapes, built around a good answer."""
    values: list[object] = [None, 0, -1, 1.5, "", "x", [], {}, [None], {"a": 1}, True]
    shapes: list[object] = list(values)
    for v in values:
        shapes.append({**GOOD, "choices": v})
        shapes.append({**GOOD, "choices": [v]})
        shapes.append({**GOOD, "choices": [{"message": v, "finish_reason": "stop"}]})
        shapes.append({**GOOD, "choices": [{"message": {"content": v}}]})
        shapes.append({**GOOD, "choices": [{"message": {"content": "a"}, "finish_reason": v}]})
        shapes.append({**GOOD, "usage": v})
        shapes.append({**GOOD, "usage": {"prompt_tokens": v, "completion_tokens": 1}})
        shapes.append({**GOOD, "model": v})
    return shapes


def test_the_answer_check_raises_only_llm_errors_or_keeps_the_answer() -> None:
    kept = failed = 0
    for shape in _shapes():
        for raw in (shape, json.dumps(shape)):
            try:
                result = result_from_body(
                    raw,
                    endpoint="e",
                    model="m",
                    latency_s=0.0,
                    max_tokens=16,
                    messages=[{"role": "user", "content": "hi"}],
                )
            except LLMError as err:
                assert err.fault in set(Fault) and err.retryable
                failed += 1
            else:
                assert isinstance(result.text, str) and result.completion_tokens >= 0
                kept += 1
    assert kept and failed  # both outcomes occur: the shapes are not all of one kind
