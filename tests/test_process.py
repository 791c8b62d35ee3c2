"""The managed server subprocess: readiness, failures with log lines, ports, and no orphans."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from flashevolve.backends.process import ManagedProcess, resolve_port, start_server
from flashevolve.errors import BackendError, UserError


def _cmd(script: Path, port: int, *flags: str) -> list[str]:
    return [
        sys.executable,
        str(script),
        "serve",
        "fake-model",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *flags,
    ]


def _gone(pid: int) -> bool:
    """True if the pid no longer exists or is a zombie (dead, waiting for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)  # polling a real process's state, bounded
    return _gone(pid)


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status


def test_waits_for_health_then_stop_leaves_no_process(fake_server_script: Path, tmp_path: Path):
    port = resolve_port(None)
    proc = start_server(
        _cmd(fake_server_script, port, "--slow-ready", "3"),
        port=port,
        name="fake",
        log_path=tmp_path / "fake.log",
        ready_timeout_s=30,
    )
    assert proc.alive and proc.base_url == f"http://127.0.0.1:{port}"
    assert _get(proc.base_url + "/health") == 200  # ready only after 3 probes answered 503
    pid = proc.pid
    proc.stop()
    proc.stop()  # idempotent
    assert not proc.alive and _gone(pid)
    assert "fake server: serve fake-model" in (tmp_path / "fake.log").read_text()


def test_early_death_reports_exit_code_and_log_lines(fake_server_script: Path, tmp_path: Path):
    port = resolve_port(None)
    with pytest.raises(BackendError) as info:
        start_server(
            _cmd(fake_server_script, port, "--fail-fast"),
            port=port,
            name="fake",
            log_path=tmp_path / "fake.log",
            ready_timeout_s=30,
        )
    msg = str(info.value)
    assert "fake exited with code 3 before it was ready" in msg
    assert "simulated startup failure" in msg  # the log tail is in the error
    assert isinstance(info.value, UserError)


def test_timeout_stops_the_process_and_shows_the_log(fake_server_script: Path, tmp_path: Path):
    port = resolve_port(None)
    proc = ManagedProcess(
        _cmd(fake_server_script, port, "--never-ready"),
        port=port,
        name="fake",
        log_path=tmp_path / "fake.log",
    ).start()
    with pytest.raises(BackendError, match=r"not ready after 1s .*HTTP 503"):
        proc.wait_ready(timeout_s=1.0)
    assert not proc.alive


def test_port_in_use_is_a_clear_error(fake_server_script: Path, tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BackendError, match=rf"port {port} is in use"):
            resolve_port(port)
    with pytest.raises(BackendError, match="out of range"):
        resolve_port(70000)


def test_sigkill_fallback_when_sigterm_is_ignored(fake_server_script: Path, tmp_path: Path):
    port = resolve_port(None)
    proc = start_server(
        _cmd(fake_server_script, port, "--ignore-sigterm"),
        port=port,
        name="fake",
        log_path=tmp_path / "fake.log",
        grace_s=0.5,
    )
    pid = proc.pid
    proc.stop()
    assert proc.returncode == -signal.SIGKILL and _gone(pid)


def test_server_started_from_a_short_lived_thread_survives_it(
    fake_server_script: Path, tmp_path: Path
):
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits; all spawns go through
    # one long-lived thread so a server started from a worker thread is not killed with it.
    port = resolve_port(None)
    box: dict[str, ManagedProcess] = {}
    t = threading.Thread(
        target=lambda: box.setdefault(
            "p",
            start_server(
                _cmd(fake_server_script, port), port=port, name="fake", log_path=tmp_path / "f.log"
            ),
        )
    )
    t.start()
    t.join()
    proc = box["p"]
    try:
        assert _get(proc.base_url + "/health") == 200
        assert proc.alive
    finally:
        proc.stop()


def test_server_dies_when_parent_python_is_sigkilled(fake_server_script: Path, tmp_path: Path):
    child_code = textwrap.dedent(f"""
        import sys
        from flashevolve.backends.process import resolve_port, start_server
        port = resolve_port(None)
        proc = start_server([sys.executable, {str(fake_server_script)!r}, "serve", "m",
                             "--port", str(port)], port=port, name="orphan-test",
                            log_path={str(tmp_path / "orphan.log")!r})
        print(proc.pid, flush=True)
        sys.stdin.read()  # block until killed
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", child_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline()
        server_pid = int(line)
        assert not _gone(server_pid)
        os.kill(child.pid, signal.SIGKILL)  # no atexit, no finalizers: only PDEATHSIG helps
        child.wait(timeout=10)
        assert _wait_gone(server_pid), f"server {server_pid} outlived its SIGKILLed parent"
    finally:
        if child.poll() is None:
            child.kill()
        child.stdin.close()
        child.stdout.close()


def test_garbage_collected_handle_stops_the_server(fake_server_script: Path, tmp_path: Path):
    port = resolve_port(None)
    proc = start_server(
        _cmd(fake_server_script, port), port=port, name="fake", log_path=tmp_path / "f.log"
    )
    pid = proc.pid
    del proc  # weakref.finalize stops it
    import gc

    gc.collect()
    assert _wait_gone(pid)


def test_log_tail_and_argv(fake_server_script: Path, tmp_path: Path):
    port = resolve_port(None)
    argv_file = tmp_path / "argv.json"
    with start_server(
        _cmd(fake_server_script, port, "--record-argv", str(argv_file)),
        port=port,
        name="fake",
        log_path=tmp_path / "f.log",
    ) as proc:
        assert "fake-model" in proc.log_tail()
        assert json.loads(argv_file.read_text())[:2] == ["serve", "fake-model"]
    assert not proc.alive


def test_restart_on_the_same_port_right_after_stop(fake_server_script: Path, tmp_path: Path):
    # Connections the old server leaves in TIME_WAIT must not make the port look taken.
    port = resolve_port(None)
    for i in range(2):
        with start_server(
            _cmd(fake_server_script, resolve_port(port)),
            port=port,
            name="fake",
            log_path=tmp_path / f"f{i}.log",
        ) as proc:
            assert _get(proc.base_url + "/v1/models") == 200
