"""The command line for every workflow: ``run --workflow``, their options, several endpoints,
executors, and ``bench --workflow`` / ``--combee`` (all on the simulator or real local HTTP)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from flashevolve.backends.server import FixedLatency, ScriptedResponder, serve_in_thread
from flashevolve.events.log import EventLog, events_to_frame
from tests.test_cli import assert_clean_error, cli


@pytest.mark.parametrize(
    ("workflow", "task"), [("ace", "formula-lite"), ("meta-harness", "intent-lite")]
)
def test_run_each_workflow_on_the_simulator(tmp_path, workflow, task):
    out = tmp_path / "run"
    proc = cli(
        "run", "--workflow", workflow, "--task", task, "--backend", "sim", "--minutes", "5",
        "--out", str(out), "--no-report",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"sync", "async"}
    for mode in ("sync", "async"):
        events = events_to_frame(EventLog.read(out / mode / "events.jsonl"))
        started = events.filter(pl.col("kind") == "run_started")["data"][0]
        assert json.loads(started)["workflow"] == workflow
        assert summary[mode]["proposals"] > 0
    assert summary["async"]["accepted"] > summary["sync"]["accepted"]
    assert "async / sync accepted per minute" in proc.stdout


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--workflow", "ace", "--minibatch-size", "2"], "--minibatch-size is a gepa option"),
        (["--workflow", "ace", "--combee", "10"], "--combee is a gepa option"),
        (["--curator-batch", "4"], "--curator-batch is a ace option"),
        (["--harness-timeout", "5"], "--harness-timeout is a meta-harness option"),
        (["--combee", "0"], "--combee must be at least 1"),
        (["--combee", "10", "--minibatch-size", "3"], "drop --minibatch-size 3"),
        (["--max-merge-invocations", "3"], "--max-merge-invocations needs --merge"),
        (["--workflow", "nope"], "--workflow"),
        (["--executor", "nope"], "--executor"),
        (["--ray-address", "auto"], "--ray-address needs --executor ray"),
    ],
)
def test_workflow_options_are_checked_before_anything_starts(extra, fragment):
    assert_clean_error(cli("run", "--backend", "sim", "--mode", "async", *extra), fragment)


def test_gepa_with_combee_and_merge_on_the_simulator(tmp_path):
    out = tmp_path / "run"
    proc = cli(
        "run", "--task", "sim", "--backend", "sim", "--mode", "sync", "--minutes", "10",
        "--combee", "10", "--merge", "--max-merge-invocations", "2", "--executor", "process",
        "--out", str(out), "--no-report",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = events_to_frame(EventLog.read(out / "sync" / "events.jsonl"))
    stages = set(events.filter(pl.col("kind") == "request_started")["stage"])
    assert "reduce" in stages  # Combee's reduce calls ran
    started = json.loads(events.filter(pl.col("kind") == "run_started")["data"][0])
    assert started["executor"] == "local-process"


def test_several_base_urls_go_through_the_router(tmp_path):
    out = tmp_path / "run"
    responders = [ScriptedResponder(None, latency=FixedLatency(0.01)) for _ in range(2)]
    with serve_in_thread(responders[0]) as a, serve_in_thread(responders[1]) as b:
        proc = cli(
            "run", "--task", "sim", "--n-train", "12", "--n-val", "4", "--backend", "openai",
            "--base-url", f"{a},{b}", "--model", "scripted", "--mode", "async",
            "--minutes", "0.2", "--out", str(out), "--no-report",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = events_to_frame(EventLog.read(out / "async" / "events.jsonl"))
    answered = events.filter(pl.col("kind") == "request_finished")
    assert set(answered["endpoint"]) == {a, b}  # both servers answered requests


def test_bench_each_workflow_writes_simulated_rows(tmp_path):
    for workflow in ("ace", "meta-harness"):
        path = tmp_path / f"{workflow}.json"
        proc = cli("bench", "--workflow", workflow, "--minutes", "4", "--json", str(path))
        assert proc.returncode == 0, proc.stderr
        payload = json.loads(path.read_text())
        assert payload["simulated"] is True and payload["workflow"] == workflow
        sync, fast = payload["rows"]
        assert (sync["config"], fast["config"]) == ("sync", "async")
        assert sync["accepted_speedup"] == 1.0
        assert fast["accepted_speedup"] == pytest.approx(
            fast["accepted_per_min"] / sync["accepted_per_min"]
        )
        assert "(simulated)" in proc.stdout
    assert_clean_error(cli("bench", "--workflow", "ace", "--configs", "fastest"), "fastest")


def test_bench_combee_rows(tmp_path):
    path = tmp_path / "combee.json"
    proc = cli("bench", "--combee", "--minutes", "4", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(path.read_text())["rows"]
    assert [r["config"] for r in rows] == ["sync", "combee-k10", "combee-k40", "async"]
