"""The vLLM launcher without a GPU: command lines, and the attach/launch lifecycle against a fake
`vllm serve` (a real stdlib HTTP server on 127.0.0.1, see tests/fake_server.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from flashevolve.backends import ChatRequest
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.process import resolve_port, start_server
from flashevolve.backends.vllm_launcher import VLLMServer, build_vllm_command, vllm
from flashevolve.errors import BackendError


def test_engine_args_become_kebab_case_flags():
    cmd = build_vllm_command(
        "Qwen/Qwen3-0.6B",
        port=8123,
        executable="/opt/bin/vllm",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.85,
        enforce_eager=True,
        enable_prefix_caching=False,
        quantization=None,
        max_num_seqs=128,
        allowed_origins=["a", "b"],
        speculative_config={"method": "ngram", "num_speculative_tokens": 3},
    )
    assert cmd == [
        "/opt/bin/vllm",
        "serve",
        "Qwen/Qwen3-0.6B",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--tensor-parallel-size",
        "2",
        "--gpu-memory-utilization",
        "0.85",
        "--enforce-eager",
        "--max-num-seqs",
        "128",
        "--allowed-origins",
        "a",
        "b",
        "--speculative-config",
        json.dumps({"method": "ngram", "num_speculative_tokens": 3}),
    ]


def test_executable_may_be_an_argv_prefix():
    cmd = build_vllm_command("m", host="0.0.0.0", port=1, executable=[sys.executable, "x.py"])
    assert cmd[:3] == [sys.executable, "x.py", "serve"] and cmd[4:6] == ["--host", "0.0.0.0"]


@pytest.mark.skipif(shutil.which("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_is_a_clear_error():
    with pytest.raises(BackendError, match=r"pip install 'flashevolve\[vllm\]'"):
        build_vllm_command("m", port=1)


def test_launch_serve_and_stop(fake_server_script: Path, tmp_path: Path):
    argv_file = tmp_path / "argv.json"
    llm = vllm(
        "tiny/model",
        executable=[sys.executable, str(fake_server_script)],
        startup_timeout_s=30,
        max_model_len=512,
        enforce_eager=True,
        slow_ready=2,
        record_argv=str(argv_file),
    )
    assert isinstance(llm, VLLMServer) and llm.running
    argv = json.loads(argv_file.read_text())
    assert argv[:2] == ["serve", "tiny/model"]
    assert "--max-model-len" in argv and "--enforce-eager" in argv
    assert llm.describe()["kind"] == "vllm-managed"
    pid = llm.server.pid

    async def go():
        try:
            res = await llm.complete(ChatRequest([{"role": "user", "content": "hi there"}]))
        finally:
            await llm.aclose()
        return res

    res = asyncio.run(go())
    assert res.text == "echo: hi there" and res.prompt_tokens == 2 and res.model == "tiny/model"
    assert not llm.running and pid is not None


def test_launch_failure_shows_log_lines(fake_server_script: Path):
    with pytest.raises(BackendError, match="(?s)exited with code 3.*simulated startup failure"):
        vllm(
            "m",
            executable=[sys.executable, str(fake_server_script)],
            fail_fast=True,
            startup_timeout_s=30,
        )


def test_launch_on_a_taken_port_fails_before_starting(fake_server_script: Path, tmp_path: Path):
    port = resolve_port(None)
    cmd = [sys.executable, str(fake_server_script), "serve", "m", "--port", str(port)]
    with (
        start_server(cmd, port=port, name="other", log_path=tmp_path / "o.log"),
        pytest.raises(BackendError, match=rf"port {port} is in use"),
    ):
        vllm("m", port=port, executable=[sys.executable, str(fake_server_script)])


def test_attach_to_running_server_does_not_own_it(fake_server_script: Path, tmp_path: Path):
    port = resolve_port(None)
    cmd = [sys.executable, str(fake_server_script), "serve", "attached", "--port", str(port)]
    with start_server(cmd, port=port, name="existing", log_path=tmp_path / "e.log") as server:
        llm = vllm("attached", url=server.base_url)
        assert type(llm) is OpenAICompatLLM and llm.endpoint == server.base_url + "/v1"

        async def go():
            try:
                return await llm.complete(ChatRequest([{"role": "user", "content": "ping"}]))
            finally:
                await llm.aclose()

        assert asyncio.run(go()).text == "echo: ping"
        assert server.alive  # closing an attached client leaves the server alone
        with pytest.raises(BackendError, match="attaches to a running server"):
            vllm("attached", url=server.base_url, tensor_parallel_size=2)
