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


#: an async run of the simulated task on the simulator; the next argument is --minutes' value
SIM_ASYNC = ("run", "--task", "sim", "--backend", "sim", "--mode", "async", "--minutes")


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


# -- the reflective staleness policy from the command line ------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--staleness", "nope"], "--staleness"),
        (["--staleness", "reflective", "--reflective-k", "0"], "--reflective-k"),
        (["--staleness", "reflective", "--reflective-max-wait", "-1"], "--reflective-max-wait"),
        (["--staleness", "reflective", "--review-temperature", "-0.5"], "--review-temperature"),
        (["--staleness", "reflective", "--review-max-tokens", "0"], "--review-max-tokens"),
        (["--staleness", "full", "--reflective-k", "2"], "only applies to --staleness reflective"),
        (["--staleness", "guarded", "--review-schema", "on"], "--review-schema on"),
        (["--minibatch-size", "0"], "--minibatch-size"),
        (["--task-max-tokens", "0"], "--task-max-tokens"),
    ],
)
def test_run_options_are_checked_before_the_backend_starts(extra, fragment):
    assert_clean_error(cli("run", "--backend", "sim", "--mode", "async", *extra), fragment)


class RecordingResponder(ScriptedResponder):
    """The simulator's workload content over HTTP, remembering each review request's extras."""

    def __init__(self) -> None:
        super().__init__(None, latency=FixedLatency(0.02))
        self.reviews: list[dict | None] = []

    async def respond(self, request):  # noqa: ANN001, ANN201
        if request.stage == "patch":
            self.reviews.append(request.extra_body)
        return await super().respond(request)


@pytest.mark.parametrize("schema", ["on", "auto"])
def test_reflective_run_over_http(tmp_path, schema):
    """``--staleness reflective`` end to end against the scripted server (real HTTP): every stale
    item gets a recorded decision, patches name their stale items, the summary agrees with the
    event log, and ``--review-schema on`` puts the batch's JSON schema on every review request
    (``auto`` leaves it off for a non-local backend)."""
    import json

    import polars as pl

    from flashevolve.events.log import EventLog, events_to_frame

    responder = RecordingResponder()
    out = tmp_path / "run"
    with serve_in_thread(responder) as url:
        proc = cli(
            "run",
            "--task",
            "sim",
            "--n-train",
            "20",
            "--n-val",
            "6",
            "--backend",
            "openai",
            "--base-url",
            url,
            "--model",
            "scripted",
            "--mode",
            "async",
            "--minutes",
            "0.25",
            "--workers",
            "rollout=4,propose=4,evaluate=2",
            "--max-in-flight",
            "16",
            "--minibatch-size",
            "1",
            "--staleness",
            "reflective",
            "--reflective-k",
            "2",
            "--reflective-max-wait",
            "0.5",
            "--review-schema",
            schema,
            "--out",
            str(out),
            "--no-report",
        )
    assert proc.returncode == 0, proc.stderr
    events = events_to_frame(EventLog.read(out / "async" / "events.jsonl"))
    stale = events.filter(pl.col("kind") == "stale_detected")
    assert stale.height > 0, "no stale items: the run was too short to test anything"
    assert stale["decision"].null_count() == 0 and stale["reason"].null_count() == 0
    assert set(stale["decision"]) <= {"accept", "discard", "patch", "merged"}
    summary = json.loads((out / "summary.json").read_text())["async"]
    counts = stale.group_by("decision").len()
    by = dict(zip(counts["decision"], counts["len"], strict=True))
    assert summary["stale_seen"] == stale.height
    assert summary["stale_patched"] > 0  # the simulator's reviewer patches items near the best
    for key, decision in (
        ("stale_accepted", "accept"),
        ("stale_patched", "patch"),
        ("stale_discarded", "discard"),
        ("stale_merged", "merged"),
    ):
        assert summary[key] == by.get(decision, 0)
    patched_items = set(stale.filter(pl.col("decision").is_in(["patch", "merged"]))["item_id"])
    for row in events.filter(pl.col("kind") == "patch_made").iter_rows(named=True):
        data = json.loads(row["data"])
        assert data["patched_from"] and set(data["patched_from"]) <= patched_items
    assert responder.reviews
    formats = [(extra or {}).get("response_format") for extra in responder.reviews]
    if schema == "on":
        for fmt in formats:
            assert fmt["type"] == "json_schema"
            props = fmt["json_schema"]["schema"]["properties"]
            ids = props["decisions"]["items"]["properties"]["item"]["enum"]
            assert 1 <= len(ids) <= 2 and set(ids) <= set(stale["item_id"])
            assert list(props["patched"]["anyOf"][0]["properties"]) == ["instruction"]
    else:
        assert formats == [None] * len(formats)


def test_sim_run_with_adaptive_control_and_speculation(tmp_path):
    """--adaptive and --speculate-validation reach the run (their events are in the log), and
    what the run reports as its best has a full validation score, never a prefix one."""
    import json

    out = tmp_path / "run"
    proc = cli(
        *SIM_ASYNC,
        "20",
        "--adaptive",
        "--adaptive-period",
        "15",
        "--speculate-validation",
        "0.25",
        "--wind-down",
        "300",
        "--out",
        str(out),
        "--no-report",
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in (out / "async" / "events.jsonl").read_text().splitlines()]
    adaptive = [e for e in events if (e.get("reason") or "").startswith("adaptive:")]
    assert {e["kind"] for e in adaptive} >= {"workers_changed"}
    assert sum(e["kind"] == "speculative_admitted" for e in events) > 0
    (wind,) = [e for e in events if e["kind"] == "wind_down"]
    assert wind["data"]["margin_s"] == 300 and wind["ts"] >= 20 * 60 - 300
    started = next(e for e in events if e["kind"] == "run_started")
    # the workflow's own workers; one job per worker to start (no client cap in the simulator)
    assert started["data"]["workers"] == {"rollout": 8, "propose": 4, "gate": 8, "validate": 8}
    assert started["data"]["max_in_flight"] == 28
    summary = json.loads((out / "summary.json").read_text())["async"]
    best = json.loads((out / "async" / "best.json").read_text())
    assert best["score"] == summary["best_score"]  # a confirmed candidate, not a prefix score
    assert f"best async artifact ({summary['best_score']:.3f})" in proc.stdout


def test_mechanism_options_are_checked_before_anything_starts():
    assert_clean_error(cli(*SIM_ASYNC, "1", "--speculate-validation", "1.5"), "(0, 1]")
    assert_clean_error(cli(*SIM_ASYNC, "1", "--speculate-rollout", "0"), "--speculate-rollout")
    assert_clean_error(
        cli(*SIM_ASYNC, "1", "--no-adaptive", "--adaptive-period", "10"), "--no-adaptive"
    )
    assert_clean_error(cli(*SIM_ASYNC, "1", "--wind-down", "soon"), "--wind-down", "auto")
    assert_clean_error(
        cli(*SIM_ASYNC, "1", "--adaptive", "--adaptive-max-workers", "0"), "positive"
    )
