"""Crash safety: a run killed with SIGKILL -- here halfway through an admission write, the worst
moment -- resumes with no admitted artifact lost or duplicated (real subprocesses, virtual time)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flashevolve.rundir import RunDirectory

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "chaos_kill.py"


def _child(run_dir: Path, crash_at: int | None, minutes: float = 120.0) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if crash_at is not None:
        env["FLASHEVOLVE_CRASH_AT_WRITE"] = str(crash_at)
    cmd = [sys.executable, str(SCRIPT), "--child", str(run_dir), "--minutes", str(minutes)]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode


@pytest.mark.parametrize("crash_at", [2, 4, 7, 11, 16])
def test_kill_during_an_admission_write_loses_and_duplicates_nothing(tmp_path, crash_at) -> None:
    import scripts_path  # noqa: F401  (puts scripts/ on sys.path)
    from chaos_kill import evolver

    run_dir = tmp_path / "run"
    assert _child(run_dir, crash_at) == -signal.SIGKILL
    lines = (run_dir / "artifacts.jsonl").read_text()
    assert not lines.endswith("\n")  # the kill left a torn line behind
    at_kill = RunDirectory(run_dir, resume=True).audit()
    assert at_kill["stored"] == crash_at - 1 and at_kill["lost"] == []
    stored_before = [json.loads(x)["artifact"]["id"] for x in lines.splitlines()[:-1]]

    with pytest.warns(UserWarning, match="torn last line"):
        resumed = evolver(run_dir, 10.0, resume=True, seed=0)
        resumed.run_virtual()
    after = RunDirectory(run_dir, resume=True).audit()
    assert after["lost"] == [] and after["duplicated"] == 0 and after["logged_twice"] == 0
    assert after["pool_matches_log"]
    # everything admitted before the kill is in the resumed pool, in the same order
    assert [r.id for r in resumed.pool.records][: len(stored_before)] == stored_before
    assert after["stored"] > at_kill["stored"]  # and the run went on


def test_an_admission_whose_event_was_cut_off_is_announced_at_resume(tmp_path) -> None:
    import scripts_path  # noqa: F401
    from chaos_kill import evolver

    run_dir = tmp_path / "run"
    assert _child(run_dir, None, minutes=20.0) == 0
    # Simulate a kill between the artifact's fsync and its event: drop the last admitted event.
    events = (run_dir / "events.jsonl").read_text().splitlines()
    last = max(i for i, line in enumerate(events) if '"kind": "admitted"' in line)
    cut = json.loads(events[last])["artifact_id"]
    (run_dir / "events.jsonl").write_text("\n".join(events[:last]) + "\n")
    assert RunDirectory(run_dir, resume=True).audit()["unannounced"] == [cut]

    resumed = evolver(run_dir, 1.0, resume=True, seed=0)
    resumed.run_virtual()
    recovered = [e for e in resumed.event_list() if (e.data or {}).get("recovered")]
    assert [e.artifact_id for e in recovered] == [cut]
    audit = RunDirectory(run_dir, resume=True).audit()
    assert audit["unannounced"] == [] and audit["pool_matches_log"]
