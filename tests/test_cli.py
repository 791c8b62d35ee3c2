"""The command line: help, and bad inputs that must give one clear line and exit 2."""

import socket
import subprocess
import sys

import pytest

from flashevolve.backends.server import FixedLatency, ScriptedResponder, serve_in_thread


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flashevolve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert any("error:" in x for x in lines), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_the_commands():
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("run", "bench", "serve-sim", "local-server"):
        assert command in proc.stdout


def test_unknown_task_name():
    assert_clean_error(cli("run", "--task", "no-such-task", "--backend", "sim"), "no-such-task")


def test_malformed_task_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "hi", "answer": "x"}\n{"id": "b", "prompt": \n')
    assert_clean_error(
        cli("run", "--task", str(bad), "--task-kind", "prompt", "--backend", "sim"), "bad.jsonl:2"
    )


def test_unknown_backend_and_bad_workers():
    assert_clean_error(cli("run", "--task", "sim", "--backend", "nope"), "--backend")
    assert_clean_error(
        cli(
            "run",
            "--task",
            "sim",
            "--backend",
            "sim",
            "--workers",
            "rolout=2",
            "--mode",
            "async",
            "--minutes",
            "1",
        ),
        "rolout",
    )


def test_unreachable_endpoint():
    port = free_port()  # nothing listens there
    proc = cli(
        "run",
        "--task",
        "sim",
        "--backend",
        "openai",
        "--base-url",
        f"http://127.0.0.1:{port}/v1",
        "--model",
        "m",
    )
    assert_clean_error(proc, "cannot reach", str(port))


def test_wrong_model_name():
    with serve_in_thread(
        ScriptedResponder(["ok"], latency=FixedLatency(0.0), model="right"), strict_model=True
    ) as url:
        proc = cli(
            "run", "--task", "sim", "--backend", "openai", "--base-url", url, "--model", "wrong"
        )
    assert_clean_error(proc, "model name")


def test_bench_unknown_profile_and_config():
    assert_clean_error(cli("bench", "--profile", "tpu-v9"), "tpu-v9")
    assert_clean_error(cli("bench", "--configs", "sync,warp"), "warp")


@pytest.mark.parametrize(
    "argv", [["run", "--minutes", "0", "--backend", "sim"], ["bench", "--minutes", "-1"]]
)
def test_non_positive_minutes(argv):
    assert_clean_error(cli(*argv), "--minutes")


def test_serve_sim_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_clean_error(cli("serve-sim", "--port", str(port), timeout=60), str(port))


def test_sim_run_writes_run_directory_and_json(tmp_path):
    out, js = tmp_path / "run", tmp_path / "summary.json"
    proc = cli(
        "run",
        "--task",
        "sim",
        "--backend",
        "sim",
        "--mode",
        "sync,async",
        "--minutes",
        "5",
        "--out",
        str(out),
        "--json",
        str(js),
    )
    assert proc.returncode == 0, proc.stderr
    assert "async / sync proposals per minute" in proc.stdout
    assert "SIMULATED" in proc.stdout
    for mode in ("sync", "async"):
        assert (out / mode / "events.jsonl").exists() and (out / mode / "best.json").exists()
    assert (out / "report.html").exists() and js.exists()
    again = cli("run", "--task", "sim", "--backend", "sim", "--minutes", "1", "--out", str(out))
    assert_clean_error(again, "resume")


def test_resume_continues_a_stopped_run_without_losing_admissions(tmp_path):
    import json

    out = tmp_path / "run"
    first = cli(
        "run",
        "--task",
        "sim",
        "--backend",
        "sim",
        "--mode",
        "async",
        "--minutes",
        "4",
        "--out",
        str(out),
        "--no-report",
    )
    assert first.returncode == 0, first.stderr
    lines = (out / "async" / "artifacts.jsonl").read_text().splitlines()
    before = [json.loads(x)["artifact"]["id"] for x in lines]
    last_ts = max(json.loads(x)["ts"] for x in (out / "async" / "events.jsonl").open())
    again = cli(
        "run",
        "--task",
        "sim",
        "--backend",
        "sim",
        "--mode",
        "async",
        "--minutes",
        "4",
        "--resume",
        str(out),
        "--no-report",
    )
    assert again.returncode == 0, again.stderr
    lines = (out / "async" / "artifacts.jsonl").read_text().splitlines()
    after = [json.loads(x)["artifact"]["id"] for x in lines]
    assert after[: len(before)] == before and len(after) >= len(before)
    events = [json.loads(x) for x in (out / "async" / "events.jsonl").open()]
    assert max(e["ts"] for e in events) > last_ts
    assert sum(e["kind"] == "run_started" for e in events) == 2
