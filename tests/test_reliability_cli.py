"""The command line and first-use sides of reliability: ``serve-sim --faults`` (a bad SPEC is one
line, exit 2; a good one is served and counted on ``/stats``), and ``local()`` saying what it is
about to build instead of starting minutes of work silently."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from flashevolve.backends.llama import BUILD_COMMAND, _announce_first_use, local
from flashevolve.backends.process import free_port
from flashevolve.errors import BackendError


def test_a_bad_fault_spec_is_one_line_and_exit_2() -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "flashevolve.cli", "serve-sim", "--faults", "rate=0.3,hangg=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0 and "'hangg'" in cli.stderr


def test_serve_sim_injects_faults_and_reports_them_on_stats() -> None:
    port = free_port()
    command = [sys.executable, "-m", "flashevolve.cli", "serve-sim", "--scripted"]
    command += ["--latency-mean", "0.01", "--port", str(port), "--faults", "rate=1,http503"]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        ready, deadline = False, time.monotonic() + 30
        while not ready and time.monotonic() < deadline:  # readiness polling, bounded
            try:
                ready = httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
        assert ready, "serve-sim did not come up"
        body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
        answers = [
            httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30) for _ in range(3)
        ]
        stats = httpx.get(f"{base}/stats", timeout=5).json()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert [a.status_code for a in answers] == [503] * 3
    assert answers[0].json()["error"]["type"] == "server_error"
    assert stats["faults"]["injected"] == {"http503": 3} and stats["faulted"] == 3
    assert stats["faults"]["expected_client_faults"] == {"server_error": 3}
    assert "faults:" in out and "/stats" in out, err


@pytest.fixture
def empty_cache(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A cache directory with nothing built or downloaded in it."""
    monkeypatch.setenv("FLASHEVOLVE_CACHE", str(tmp_path))
    monkeypatch.delenv("FLASHEVOLVE_LLAMA_SERVER", raising=False)
    return tmp_path


def test_local_without_a_build_refuses_with_the_command_when_asked_to(empty_cache) -> None:
    with pytest.raises(BackendError) as err:
        local(build=False)
    assert BUILD_COMMAND in str(err.value) and "not" in str(err.value)
    assert not any(empty_cache.iterdir())  # nothing was started, downloaded or built


def test_local_says_what_it_is_about_to_build(empty_cache, capsys) -> None:
    _announce_first_use(True)  # what local() prints before it builds (the build is not run)
    said = capsys.readouterr().err
    assert "not built yet" in said and "minutes" in said and BUILD_COMMAND in said
    assert str(empty_cache) in said  # where the build log will be
