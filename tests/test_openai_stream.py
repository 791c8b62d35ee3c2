"""Streaming (SSE) over real HTTP on 127.0.0.1: OpenAICompatLLM(stream=True) and the server's
``stream=true``.  Partial token counts survive a cancellation; errors map as without streaming."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from test_server import FAST, MSGS, _wait_until  # tests/ is on sys.path (pytest prepend mode)

from flashevolve.backends.base import ChatRequest, ChatResult, LLMError
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.server import (
    OpenAICompatServer,
    Reply,
    ScriptedResponder,
    SimulatorResponder,
    serve_in_thread,
)
from flashevolve.backends.sim.lengths import count_tokens

SIM_PROMPT = [{"role": "user", "content": "[sim-example id=val-1 difficulty=0.5]"}]


def _same(a: ChatResult, b: ChatResult) -> None:
    assert (a.text, a.prompt_tokens, a.completion_tokens, a.finish_reason) == (
        b.text,
        b.prompt_tokens,
        b.completion_tokens,
        b.finish_reason,
    )


class PiecesResponder:
    """Streams fixed pieces at once; its usage says ``tokens`` (deliberately not the piece
    count), and it can fail after ``fail_after`` pieces."""

    model = "pieces"

    def __init__(self, pieces: list[str], tokens: int, fail_after: int | None = None) -> None:
        self.pieces, self.tokens, self.fail_after = pieces, tokens, fail_after

    async def respond(self, request: ChatRequest) -> Reply:
        return Reply("".join(self.pieces), 7, self.tokens)

    async def respond_stream(self, request: ChatRequest) -> AsyncIterator[str | Reply]:
        for i, piece in enumerate(self.pieces):
            if i == self.fail_after:
                raise LLMError("the model fell over", status=503)
            yield piece
        yield Reply("".join(self.pieces), 7, self.tokens, "length")


async def _plain_vs_streamed(base_url: str, requests: list[ChatRequest]) -> list[ChatResult]:
    plain = OpenAICompatLLM(base_url, "m")
    streamed = OpenAICompatLLM(base_url, "m", stream=True)
    results = []
    for req in requests:
        a = await plain.complete(req)
        assert req.partial == {}  # the plain path cannot tell
        b = await streamed.complete(req)
        _same(a, b)
        assert b.completion_tokens > 0 and b.text
        assert req.partial["completion_tokens"] == b.completion_tokens
        results.append(b)
    await plain.aclose()
    await streamed.aclose()
    return results


def test_streamed_result_equals_the_plain_one() -> None:
    propose = [{"role": "user", "content": "Improve the instruction:\n```\nDo it.\n```"}]
    with serve_in_thread(ScriptedResponder(latency=FAST, seed=3)) as base_url:
        asyncio.run(
            _plain_vs_streamed(
                base_url,
                [ChatRequest(MSGS, stage="rollout", seed=1), ChatRequest(propose, stage="propose")],
            )
        )
    # the simulator has no respond_stream: the server streams its answer once it is ready
    with serve_in_thread(SimulatorResponder(seed=2, speed=1000)) as base_url:
        results = asyncio.run(
            _plain_vs_streamed(
                base_url,
                [
                    ChatRequest(SIM_PROMPT, stage="validate", max_tokens=4096),
                    ChatRequest(SIM_PROMPT, stage="validate", max_tokens=8),
                ],
            )
        )
    assert results[-1].finish_reason == "length" and results[-1].completion_tokens == 8


def test_official_client_and_httpx_read_the_stream() -> None:
    responder = ScriptedResponder(["The quick brown fox jumps over the lazy dog."], latency=FAST)
    text = "The quick brown fox jumps over the lazy dog."
    with serve_in_thread(responder) as base_url:

        async def with_openai() -> None:
            client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
            stream = await client.chat.completions.create(
                model="m", messages=MSGS, stream=True, stream_options={"include_usage": True}
            )
            chunks = [c async for c in stream]
            await client.close()
            assert all(c.object == "chat.completion.chunk" for c in chunks)
            content = [c.choices[0].delta.content for c in chunks if c.choices]
            assert "".join(p or "" for p in content) == text
            assert sum(1 for p in content if p) == count_tokens(text)  # one piece per token
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
            assert chunks[-1].choices == [] and chunks[-1].usage is not None
            assert chunks[-1].usage.completion_tokens == count_tokens(text)

        asyncio.run(with_openai())

        for include_usage in (True, False):
            body = {"messages": MSGS, "stream": True}
            if include_usage:
                body["stream_options"] = {"include_usage": True}
            with (
                httpx.Client(timeout=10) as client,
                client.stream("POST", f"{base_url}/chat/completions", json=body) as r,
            ):
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                lines = [ln for ln in r.iter_lines() if ln]
            assert all(ln.startswith("data: ") for ln in lines)
            assert lines[-1] == "data: [DONE]"
            events = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
            assert events[0]["choices"][0]["delta"]["role"] == "assistant"
            deltas = [e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]]
            assert "".join(deltas) == text
            with_usage = [e for e in events if e.get("usage")]
            if include_usage:
                assert with_usage == [events[-1]] and events[-1]["choices"] == []
                assert events[-1]["usage"]["total_tokens"] == (
                    events[-1]["usage"]["prompt_tokens"] + count_tokens(text)
                )
            else:
                assert with_usage == [] and events[-1]["choices"][0]["finish_reason"] == "stop"
    assert responder.completed == 3 and responder.cancelled == 0


def test_cancelling_a_stream_halfway_keeps_the_partial_count_and_aborts() -> None:
    text = "x" * 400  # 100 tokens, one every 10 ms over the modelled second
    responder = ScriptedResponder([text], latency=1.0)
    with serve_in_thread(responder) as base_url:

        async def main() -> int:
            llm = OpenAICompatLLM(base_url, "m", stream=True)
            request = ChatRequest(MSGS, stage="rollout")
            task = asyncio.create_task(llm.complete(request))
            while request.partial.get("completion_tokens", 0) < 30 and not task.done():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the server sees the connection close at once (the client is still open), well
            # before the modelled second is over, and stops generating
            for _ in range(50):
                if responder.cancelled:
                    break
                await asyncio.sleep(0.01)
            assert responder.cancelled == 1 and responder.completed == 0
            await llm.aclose()
            return request.partial["completion_tokens"]

        received = asyncio.run(main())
        assert 30 <= received < count_tokens(text)
        assert _wait_until(lambda: responder.in_flight == 0) and responder.completed == 0


def test_a_reader_that_leaves_mid_stream_is_counted_as_cancelled_by_the_server() -> None:
    responder = ScriptedResponder(["y" * 400], latency=1.0)

    async def main() -> dict[str, int]:
        server = OpenAICompatServer(responder)
        base_url = await server.start()
        try:
            async with (
                httpx.AsyncClient(timeout=10) as client,
                client.stream(
                    "POST", f"{base_url}/chat/completions", json={"messages": MSGS, "stream": True}
                ) as r,
            ):
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen == 20:
                        break  # leaving the block closes the connection
            for _ in range(200):  # bounded: the server notices within a few event-loop turns
                if server.stats()["in_flight"] == 0:
                    break
                await asyncio.sleep(0.01)
            return server.stats()
        finally:
            await server.stop()

    stats = asyncio.run(main())
    assert stats["cancelled"] == 1 and stats["completed"] == 0 and stats["in_flight"] == 0
    assert responder.cancelled == 1 and responder.completed == 0


def test_disconnect_before_the_first_piece_aborts_the_simulated_request() -> None:
    responder = SimulatorResponder(seed=0, speed=0.1)  # slowed down: outlasts 0.5 s
    with serve_in_thread(responder) as base_url:
        with (
            httpx.Client(timeout=0.5) as client,
            pytest.raises(httpx.ReadTimeout),
            client.stream(
                "POST",
                f"{base_url}/chat/completions",
                json={"messages": SIM_PROMPT, "max_tokens": 6000, "stream": True},
                headers={"X-Flashevolve-Stage": "validate"},
            ),
        ):
            pass
        assert _wait_until(lambda: responder.stats().get("cancelled_requests", 0) == 1)
        assert responder.stats()["running"] == 0


def test_usage_absent_falls_back_to_the_chunk_count() -> None:
    responder = PiecesResponder(["al", "pha", " be", "ta", "!"], tokens=42)
    with serve_in_thread(responder) as base_url:

        async def main() -> tuple[ChatResult, ChatResult, ChatRequest]:
            with_usage = OpenAICompatLLM(base_url, "m", stream=True)
            # a server that ignores stream_options: the request body override says "no usage"
            without = OpenAICompatLLM(
                base_url, "m", stream=True, extra_body={"stream_options": {"include_usage": False}}
            )
            a = await with_usage.complete(ChatRequest(MSGS))
            request = ChatRequest(MSGS)
            b = await without.complete(request)
            await with_usage.aclose()
            await without.aclose()
            return a, b, request

        a, b, request = asyncio.run(main())
    assert a.text == b.text == "alpha beta!" and a.finish_reason == b.finish_reason == "length"
    assert (a.completion_tokens, a.prompt_tokens) == (42, 7)  # usage is exact
    assert (b.completion_tokens, b.prompt_tokens) == (5, 0)  # chunks counted, prompt unknown
    assert request.partial["completion_tokens"] == 5


def test_http_errors_while_streaming_map_to_llm_error() -> None:
    statuses = {0: 503, 1: 400, 2: 429}
    responder = ScriptedResponder(["ok"], error_fn=lambda req, i: statuses.get(i))
    with serve_in_thread(responder) as base_url:

        async def main() -> None:
            llm = OpenAICompatLLM(base_url, "m", stream=True, max_retries=0)
            with pytest.raises(LLMError) as err:
                await llm.complete(ChatRequest(MSGS))
            assert err.value.status == 503 and err.value.retryable
            with pytest.raises(LLMError) as err:
                await llm.complete(ChatRequest(MSGS))
            assert err.value.status == 400 and not err.value.retryable
            await llm.aclose()
            retrying = OpenAICompatLLM(base_url, "m", stream=True, backoff_s=0.001)
            assert (await retrying.complete(ChatRequest(MSGS))).text == "ok"  # 429, then ok
            await retrying.aclose()

        asyncio.run(main())

    # after the stream began (HTTP 200), a failure arrives as an error event
    with serve_in_thread(PiecesResponder(["a", "b", "c"], 3, fail_after=2)) as base_url:

        async def mid_stream() -> ChatRequest:
            llm = OpenAICompatLLM(base_url, "m", stream=True, max_retries=0)
            request = ChatRequest(MSGS)
            with pytest.raises(LLMError) as err:
                await llm.complete(request)
            assert err.value.status == 503 and err.value.retryable
            assert "fell over" in str(err.value)
            await llm.aclose()
            return request

        assert asyncio.run(mid_stream()).partial["completion_tokens"] == 2
