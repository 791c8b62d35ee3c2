"""The OpenAI-compatible server on 127.0.0.1: official client, third-party clients, aborts, CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import httpx
import openai
import pytest

from flashevolve.backends.base import ChatRequest
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.server import (
    LognormalLatency,
    OpenAICompatServer,
    ScriptedResponder,
    SimulatorResponder,
    serve_in_thread,
)
from flashevolve.backends.sim import SimulatedTask
from flashevolve.backends.sim.workload import quality_marker
from flashevolve.errors import BackendError

FAST = LognormalLatency(mean_s=0.005, sigma=1.0, cap_s=0.05)
MSGS = [{"role": "user", "content": "hello"}]


def _wait_until(cond, timeout_s: float = 5.0) -> bool:
    """Poll a condition set by the server thread (readiness polling, bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_official_client_64_concurrent() -> None:
    responder = ScriptedResponder(["alpha", "beta"], latency=FAST, model="scripted-test")
    with serve_in_thread(responder) as base_url:

        async def main() -> list[str]:
            client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
            try:
                replies = await asyncio.gather(
                    *(
                        client.chat.completions.create(
                            model="anything",
                            messages=MSGS,
                            max_tokens=16,
                            temperature=0.0,
                            extra_body={"unknown_field": 1},
                        )
                        for _ in range(64)
                    )
                )
                models = await client.models.list()
                assert [m.id for m in models.data] == ["scripted-test"]
            finally:
                await client.close()
            for r in replies:
                assert r.usage is not None and r.usage.total_tokens == (
                    r.usage.prompt_tokens + r.usage.completion_tokens
                )
            return [r.choices[0].message.content or "" for r in replies]

        texts = asyncio.run(main())
    assert sorted(set(texts)) == ["alpha", "beta"] and len(texts) == 64
    assert responder.completed == 64


def test_third_party_clients_64_concurrent() -> None:
    with serve_in_thread(ScriptedResponder(latency=FAST)) as base_url:

        async def with_httpx() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                rs = await asyncio.gather(
                    *(
                        client.post(
                            f"{base_url}/chat/completions",
                            json={"model": "m", "messages": MSGS, "stream": False},
                        )
                        for _ in range(64)
                    )
                )
                assert (await client.get(base_url.removesuffix("/v1") + "/health")).json()[
                    "status"
                ] == "ok"
                return [r.status_code for r in rs]

        async def with_aiohttp() -> list[int]:
            async with aiohttp.ClientSession() as session:

                async def one() -> int:
                    async with session.post(
                        f"{base_url}/chat/completions", json={"messages": MSGS}
                    ) as r:
                        body = await r.json()
                        assert body["choices"][0]["message"]["role"] == "assistant"
                        return r.status

                return list(await asyncio.gather(*(one() for _ in range(64))))

        assert asyncio.run(with_httpx()) == [200] * 64
        assert asyncio.run(with_aiohttp()) == [200] * 64


def test_malformed_bodies_get_400_in_openai_shape() -> None:
    with serve_in_thread(ScriptedResponder()) as base_url:
        url = f"{base_url}/chat/completions"
        with httpx.Client() as client:
            bad_json = client.post(
                url, content=b"{not json", headers={"content-type": "application/json"}
            )
            no_messages = client.post(url, json={"model": "m"})
            bad_tokens = client.post(url, json={"messages": MSGS, "max_tokens": -3})
            bad_stream_options = client.post(
                url, json={"messages": MSGS, "stream": True, "stream_options": "usage please"}
            )
        for r in (bad_json, no_messages, bad_tokens, bad_stream_options):
            assert r.status_code == 400
            assert r.json()["error"]["type"] == "invalid_request_error"
        assert "messages" in no_messages.json()["error"]["message"]


def test_deliberate_429s_are_retried_by_openai_compat_llm() -> None:
    responder = ScriptedResponder(
        ["ok"], latency=FAST, error_fn=lambda req, i: 429 if i % 4 == 0 else None
    )
    with serve_in_thread(responder) as base_url:

        async def main() -> None:
            raw = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
            with pytest.raises(openai.RateLimitError) as err:
                for _ in range(4):
                    await raw.chat.completions.create(model="m", messages=MSGS)
            assert err.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
            await raw.close()
            llm = OpenAICompatLLM(base_url, "m", max_retries=4, backoff_s=0.001, max_concurrency=64)
            results = await asyncio.gather(
                *(llm.complete(ChatRequest(MSGS, stage="rollout")) for _ in range(64))
            )
            await llm.aclose()
            assert [r.text for r in results] == ["ok"] * 64

        asyncio.run(main())


def test_scripted_server_serves_the_workload_so_gepa_can_progress() -> None:
    task = SimulatedTask(n_val=10)
    with serve_in_thread(ScriptedResponder(latency=FAST)) as base_url:

        async def main() -> tuple[float, float, str]:
            llm = OpenAICompatLLM(base_url, "scripted", max_concurrency=16)

            async def score(q: float) -> float:
                comps = {"instruction": f"Do it. {quality_marker(q)}"}
                runs = await asyncio.gather(
                    *(
                        task.rollout(comps, ex, llm, stage="validate", item_id="v")
                        for ex in task.val
                    )
                )
                return sum(r.score for r in runs) / len(runs)

            low, high = await score(0.1), await score(0.95)
            # no stage header here: the server infers "propose" from the prompt
            raw = openai.AsyncOpenAI(base_url=base_url, api_key="x")
            prompt = (
                f"Improve the instruction:\n```\nDo it. {quality_marker(0.3)}\n```\n"
                "ANSWER: fail (missed constraint 2)"
            )
            reply = await raw.chat.completions.create(
                model="m", messages=[{"role": "user", "content": prompt}]
            )
            await raw.close()
            await llm.aclose()
            return low, high, reply.choices[0].message.content or ""

        low, high, reflection = asyncio.run(main())
    assert low < high
    assert "```" in reflection and "sim-quality=" in reflection


def test_client_disconnect_aborts_the_simulated_request() -> None:
    responder = SimulatorResponder(seed=0, speed=0.1)  # slowed down: any length outlasts 0.5 s
    long_prompt = [{"role": "user", "content": "[sim-example id=val-1 difficulty=0.5]"}]
    with serve_in_thread(responder) as base_url:
        with httpx.Client(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
            client.post(
                f"{base_url}/chat/completions",
                json={"messages": long_prompt, "max_tokens": 6000, "min_tokens": 5000},
                headers={"X-Flashevolve-Stage": "validate"},
            )
        assert _wait_until(lambda: responder.stats().get("cancelled_requests", 0) == 1)
        stats = responder.stats()
    assert stats["running"] == 0 and stats["kv_used_tokens"] == 0
    assert stats["completed_requests"] == 0
    assert stats["wasted_tokens"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_in_use_is_one_clear_error() -> None:
    with serve_in_thread(ScriptedResponder()) as base_url:
        port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        with (
            pytest.raises(BackendError, match="already in use"),
            serve_in_thread(ScriptedResponder(), port=port),
        ):
            pass

        async def direct() -> None:
            with pytest.raises(BackendError):
                await OpenAICompatServer(ScriptedResponder(), port=port).start()

        asyncio.run(direct())
        cli = subprocess.run(
            [sys.executable, "-m", "flashevolve.cli", "serve-sim", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0 and "already in use" in cli.stderr


def test_serve_sim_command_serves_until_interrupted() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flashevolve.cli",
            "serve-sim",
            "--port",
            str(port),
            "--speed",
            "1000",
            "--seed",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A runner started in the background passes on "ignore SIGINT"; a terminal would not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        ready = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not ready:
            try:
                ready = httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
        assert ready, "serve-sim did not come up"
        r = httpx.post(
            f"{base}/v1/chat/completions", timeout=30, json={"model": "x", "messages": MSGS}
        )
        body = r.json()
        assert "simulated" in body["model"] and body["usage"]["completion_tokens"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/v1" in out and "simulated" in out.lower()
