"""Servers' own load reports: parsing /metrics, our server's /metrics, the runtime's sampler."""

from __future__ import annotations

import asyncio

import polars as pl
import pytest

from flashevolve import Evolver
from flashevolve.backends.base import BackendLoad, ChatRequest
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.prometheus import load_from_metrics, parse_samples, vllm_metrics_text
from flashevolve.backends.server import ScriptedResponder, SimulatorResponder, serve_in_thread
from flashevolve.backends.sim import SimulatedTask, simulated
from flashevolve.errors import ConfigError

VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B"} 200.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen3-8B"} 56.0
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-8B"} 7.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen3-8B"} 3.0
vllm:gpu_cache_usage_perc{engine="0",model_name="a {weird} name"} 0.9
vllm:generation_tokens_total{model_name="Qwen/Qwen3-8B"} 1.2e6 1700000000
this line is not a sample
vllm:prompt_tokens_total{model_name="x"} NaN
"""

LLAMA_PAGE = """\
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
llamacpp:requests_deferred 1
llamacpp:tokens_predicted_total 512
"""


def test_vllm_page_is_summed_over_engines():
    assert load_from_metrics(VLLM_PAGE) == BackendLoad(running=256, waiting=10, kv_usage=0.9)
    samples = parse_samples(VLLM_PAGE)
    assert samples["vllm:generation_tokens_total"] == 1.2e6  # timestamp column ignored
    assert "vllm:prompt_tokens_total" not in samples and "this" not in samples


def test_llama_page_and_pages_without_load():
    assert load_from_metrics(LLAMA_PAGE) == BackendLoad(running=3, waiting=1, kv_usage=None)
    assert load_from_metrics("llamacpp:requests_processing 3\n") is None  # half a pair
    assert load_from_metrics("") is None and load_from_metrics("<html>404</html>") is None


def test_our_page_reads_back():
    load = BackendLoad(running=12, waiting=4, kv_usage=0.25)
    assert load_from_metrics(vllm_metrics_text(load, 'model "x"')) == load
    no_kv = BackendLoad(running=1, waiting=0)
    assert load_from_metrics(vllm_metrics_text(no_kv, "m")) == no_kv


def test_simulated_server_publishes_its_queue_over_http():
    # One slot: with three requests sent, one runs and two wait; the client reads that back.
    responder = SimulatorResponder(seed=0, speed=0.05)
    responder.llm.profile = responder.llm.profile.model_copy(update={"max_running": 1})
    with serve_in_thread(responder) as base_url:
        client = OpenAICompatLLM(base_url, responder.model, max_concurrency=8, max_retries=0)

        async def main() -> tuple[BackendLoad | None, BackendLoad | None]:
            idle = await client.load()
            asks = [
                asyncio.create_task(
                    client.complete(ChatRequest([{"role": "user", "content": f"q{i}"}]))
                )
                for i in range(3)
            ]
            busy = None
            for _ in range(200):  # readiness poll: until the server has taken all three
                busy = await client.load()
                if busy is not None and busy.running + busy.waiting == 3:
                    break
                await asyncio.sleep(0.02)  # polling a real server thread, bounded; not timing
            for task in asks:
                task.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
            await client.aclose()
            return idle, busy

        idle, busy = asyncio.run(main())
    assert idle == BackendLoad(running=0, waiting=0, kv_usage=0.0)
    assert busy is not None and (busy.running, busy.waiting) == (1, 2)
    assert busy.kv_usage is not None and 0 < busy.kv_usage < 1


@pytest.mark.parametrize(
    "responder", [ScriptedResponder(), SimulatorResponder("api-gpt-4o-mini")], ids=str
)
def test_servers_that_cannot_tell_are_asked_once(responder):
    with serve_in_thread(responder) as base_url:
        client = OpenAICompatLLM(base_url, responder.model, max_retries=0)

        async def main() -> list[BackendLoad | None]:
            out = [await client.load(), await client.load()]
            await client.aclose()
            return out

        assert asyncio.run(main()) == [None, None]
        assert client._metrics_missing  # the second call did not go to the server


def test_the_runtime_logs_the_servers_load_on_virtual_time():
    task = SimulatedTask(seed=0)
    ev = Evolver(task, simulated("vllm-h100-qwen3-8b", seed=0), budget=240, load_every_s=10)
    ev.run_virtual()
    load = ev.backend_load
    assert load.height > 10 and set(load["endpoint"]) == {"sim:vllm-h100-qwen3-8b"}
    gaps = load["ts"].diff().drop_nulls()
    assert gaps.min() == pytest.approx(10.0) and gaps.max() == pytest.approx(10.0)
    assert load["running"].max() > 0 and load["kv_usage"].is_not_null().all()
    last = load.row(-1, named=True)
    assert ev.status()["server_load"]["sim:vllm-h100-qwen3-8b"] == {
        "running": last["running"],
        "waiting": last["waiting"],
        "kv_usage": last["kv_usage"],
    }
    expected = load["waiting"].mean() / max(load["running"].mean(), 1.0)
    assert ev.summary()["server_waiting_per_running"] == pytest.approx(expected)
    # a hosted API cannot tell, and asking can be turned off
    api = Evolver(task, simulated("api-gpt-4o-mini", seed=0), budget=120)
    api.run_virtual()
    assert api.backend_load.is_empty() and api.status()["server_load"] == {}
    assert api.summary()["server_waiting_per_running"] is None
    off = Evolver(task, simulated("vllm-h100-qwen3-8b", seed=0), budget=120, load_every_s=None)
    off.run_virtual()
    assert off.events.filter(pl.col("kind") == "backend_load").is_empty()
    with pytest.raises(ConfigError, match="load_every_s"):
        Evolver(task, simulated("vllm-h100-qwen3-8b"), load_every_s=0)


def test_a_look_from_another_loop_leaves_the_simulated_engine_alone():
    llm = simulated("vllm-h100-qwen3-8b", seed=0)
    assert asyncio.run(llm.load()) == BackendLoad(running=0, waiting=0, kv_usage=0.0)
    assert llm._server is None  # looking did not start an engine
    Evolver(SimulatedTask(seed=0), llm, budget=60).run_virtual()
    engine = llm._server
    assert asyncio.run(llm.load()) == engine.load()  # a new loop reads the same engine
    assert llm._server is engine
