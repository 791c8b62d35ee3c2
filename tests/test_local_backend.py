"""The embedded llama-server backend, end to end against the real binary and SmolLM2-135M.

Tests marked ``llama`` need the cached binary (``make llama-server``); ``make test`` builds it
first, so in CI they run. The input-error tests need no binary.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flashevolve.backends import ChatRequest
from flashevolve.backends.base import BackendLoad
from flashevolve.backends.llama import LocalLLM, llama_server_command, local
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.cli import main as cli_main
from flashevolve.errors import BackendError


def _binary_or_skip() -> Path:
    from flashevolve.backends.llama_build import find_llama_server

    binary = find_llama_server()
    if binary is None:
        pytest.skip("llama-server is not built: run `make llama-server` (make test builds it)")
    return binary


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLM]:
    _binary_or_skip()
    llm = local(slots=4, ctx_per_slot=1024, startup_timeout_s=120)
    try:
        yield llm
    finally:
        llm.close()


def _client(server: LocalLLM) -> OpenAICompatLLM:
    # One client per event loop: httpx connection pools and asyncio semaphores bind to the loop.
    return OpenAICompatLLM(server.endpoint, server.model, max_concurrency=4, max_retries=0)


def _ask(text: str, **kw) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], **kw)


def _slots(server: LocalLLM) -> list[dict]:
    with urllib.request.urlopen(server.server.base_url + "/slots", timeout=5) as resp:
        return json.loads(resp.read())


# --------------------------------------------------------------------------- needs the binary


@pytest.mark.llama
def test_one_real_chat_completion(server: LocalLLM):
    async def go():
        llm = _client(server)
        try:
            return await llm.complete(
                _ask(
                    "What is the capital of France?",
                    max_tokens=24,
                    temperature=0.0,
                    stage="rollout",
                )
            )
        finally:
            await llm.aclose()

    res = asyncio.run(go())
    assert res.text.strip()
    assert res.prompt_tokens > 0 and res.completion_tokens > 0
    assert res.finish_reason in ("stop", "length")
    assert server.describe()["slots"] == 4 and server.describe()["running"]


@pytest.mark.llama
def test_four_concurrent_requests_all_succeed(server: LocalLLM):
    async def go():
        llm = _client(server)
        try:
            return await asyncio.gather(
                *(
                    llm.complete(_ask(f"Count from {i} to {i + 5}.", max_tokens=32, seed=i))
                    for i in range(4)
                )
            )
        finally:
            await llm.aclose()

    results = asyncio.run(go())
    assert len(results) == 4
    assert all(r.completion_tokens > 0 and r.text for r in results)


@pytest.mark.llama
def test_cancelled_request_does_not_break_the_server(server: LocalLLM):
    async def go():
        llm = _client(server)
        try:
            task = asyncio.create_task(
                llm.complete(_ask("Write a long story about a lighthouse.", max_tokens=400))
            )
            # Wait (bounded) until the server is actually generating, then cancel mid-stream.
            for _ in range(300):
                if task.done() or any(s.get("is_processing") for s in _slots(server)):
                    break
                await asyncio.sleep(0.05)  # polling the server's state, not waiting for timing
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await llm.complete(_ask("Say hello.", max_tokens=8))
        finally:
            await llm.aclose()

    after = asyncio.run(go())
    assert after.completion_tokens > 0
    assert server.running


@pytest.mark.llama
def test_streaming_counts_tokens_and_what_a_cancelled_request_made(server: LocalLLM):
    """Streaming against the real llama-server: the usage chunk gives the exact count, and a
    request cancelled mid-answer leaves how many tokens it had received in ``partial``."""

    async def go():
        llm = OpenAICompatLLM(server.endpoint, server.model, max_retries=0, stream=True)
        try:
            full_request = _ask("Write a long story about a cat.", max_tokens=40, temperature=0.0)
            full = await llm.complete(full_request)
            cut = _ask("Write a long story about a dog.", max_tokens=400, temperature=0.0)
            task = asyncio.create_task(llm.complete(cut))
            for _ in range(600):  # until a few pieces have arrived (bounded poll)
                if task.done() or cut.partial.get("completion_tokens", 0) >= 5:
                    break
                await asyncio.sleep(0.05)  # bounded poll for arrived pieces, not timing
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return full, full_request, cut
        finally:
            await llm.aclose()

    full, full_request, cut = asyncio.run(go())
    assert full.completion_tokens == 40 and full.finish_reason == "length" and full.text
    assert full_request.partial["completion_tokens"] == 40
    assert 5 <= cut.partial["completion_tokens"] < 400


@pytest.mark.llama
def test_same_seed_repeats_and_local_client_owns_the_server(server: LocalLLM):
    # The LocalLLM itself (one event loop for its whole life in this test).
    async def go():
        req = _ask("Name a colour.", max_tokens=12, temperature=1.0, seed=1234)
        first = await server.complete(req)
        second = await server.complete(req)
        unseeded = await server.complete(_ask("Name a colour.", max_tokens=12, temperature=1.0))
        return first, second, unseeded

    first, second, unseeded = asyncio.run(go())
    assert first.text == second.text
    assert unseeded.completion_tokens > 0
    assert server.model == "SmolLM2-135M-Instruct.Q4_1"


@pytest.mark.llama
def test_close_stops_the_server():
    _binary_or_skip()
    llm = local(slots=1, ctx_per_slot=512)
    pid = llm.server.pid
    assert llm.running and pid
    llm.close()
    assert not llm.running
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


# --------------------------------------------------------------------------- no binary needed


def test_missing_model_is_a_clear_error(tmp_path: Path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(BackendError, match=r"model file .*nope.gguf not found; pass --model PATH"):
        local(missing)


def test_port_in_use_is_a_clear_error(tmp_path: Path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")  # never loaded: the port check comes first
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BackendError, match=rf"port {port} is in use"):
            local(model, port=port)


@pytest.mark.llama
def test_the_server_reports_its_load(server: LocalLLM):
    # Started with --metrics: requests processing and deferred, read from GET /metrics.
    async def main() -> tuple[BackendLoad | None, BackendLoad | None]:
        client = _client(server)
        ask = asyncio.create_task(client.complete(_ask("Count to fifty.", max_tokens=128)))
        busy = None
        for _ in range(300):  # readiness poll until the slot is taken (or the answer is done)
            busy = await client.load()
            if ask.done() or (busy is not None and busy.running >= 1):  # (done: fails below)
                break
            await asyncio.sleep(0.02)  # polling the server, bounded; not timing
        await ask
        idle = None
        for _ in range(300):  # the gauges trail the answer a little: poll until the slot is free
            idle = await client.load()
            if idle is not None and idle.running == 0:
                break
            await asyncio.sleep(0.02)  # polling the server, bounded; not timing
        await client.aclose()
        return busy, idle

    busy, idle = asyncio.run(main())
    assert busy is not None and idle is not None
    assert busy.running == 1  # 128 tokens on 2 CPU cores take seconds; polls are 20 ms apart
    assert (idle.running, idle.waiting) == (0, 0)
    assert "--metrics" in llama_server_command("/b", "/m.gguf", port=1)


def test_command_line_flags():
    cmd = llama_server_command(
        "/bin/llama-server", "/m/tiny.gguf", port=9000, slots=3, ctx_per_slot=1000, threads=2
    )
    joined = " ".join(cmd)
    assert "-m /m/tiny.gguf" in joined and "-c 3000" in joined and "-np 3" in joined
    assert "--host 127.0.0.1 --port 9000" in joined and "--alias tiny" in joined
    assert "-t 2" in joined


def test_cli_start_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys):
    code = cli_main(["local-server", "start", "--model", str(tmp_path / "missing.gguf")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not found" in err
    assert "Traceback" not in err
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code = cli_main(["local-server", "start", "--model", str(model), "--port", str(port)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"port {port} is in use" in err and len(err.splitlines()) == 1


def test_cli_info_runs(capsys):
    assert cli_main(["local-server", "info"]) == 0
    out = capsys.readouterr().out
    assert "cache dir:" in out and "llama-server:" in out


def test_factories_are_not_shadowed_by_their_modules():
    import flashevolve.backends as backends
    import flashevolve.backends.llama  # noqa: F401  (importing a submodule must not rebind names)
    import flashevolve.backends.vllm_launcher  # noqa: F401

    assert callable(backends.local) and callable(backends.vllm) and callable(backends.simulated)
