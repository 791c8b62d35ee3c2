"""The repository's scripts that read run directories, on a real (simulated) run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from flashevolve import Evolver
from flashevolve.backends.sim import SimulatedTask, simulated
from flashevolve.policies.reflective import Reflective

ROOT = Path(__file__).resolve().parents[1]


def test_staleness_counts_recounts_a_reflective_run_and_checks_its_summary(tmp_path) -> None:
    run = tmp_path / "run" / "async"
    ev = Evolver(
        SimulatedTask(n_train=20, n_val=8, seed=0),
        simulated(seed=0),
        mode="async",
        staleness=Reflective(k=2, max_wait_s=5.0),
        workers={"rollout": 4, "propose": 4, "evaluate": 2},
        max_in_flight=16,
        control=None,
        budget=600,
        run_dir=run,
    )
    summary = ev.run_virtual()
    assert summary["stale_seen"] > 0  # there is something to count
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"async": summary}, default=str))
    out = tmp_path / "counts.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "staleness_counts.py"), str(run),
         "--summary", str(tmp_path / "run" / "summary.json"), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    counts = json.loads(out.read_text())
    assert all(counts["checks"].values())
    assert counts["stale_seen"] == summary["stale_seen"]
    assert counts["proposals"] == summary["proposals"]
    # a count that disagrees with the summary fails the check
    summary["stale_seen"] += 1
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"async": summary}, default=str))
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "staleness_counts.py"), str(run),
         "--summary", str(tmp_path / "run" / "summary.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and "summary_mismatch" in bad.stdout


def test_a_two_hour_soak_keeps_event_objects_bounded_and_loses_none(tmp_path) -> None:
    """The short soak (scripts/soak.py runs 24 h): two simulated hours, tens of thousands of
    events; the log holds at most one chunk of them as objects and packs the rest, and every
    event is both in memory and on disk."""
    from flashevolve.events.log import CHUNK_EVENTS

    ev = Evolver(
        SimulatedTask(n_train=60, n_val=30, seed=0),
        simulated(seed=0),
        mode="async",
        workers={"rollout": 8, "propose": 8, "evaluate": 8},
        max_in_flight=64,
        control=None,
        budget=2 * 3600,
        run_dir=tmp_path / "run",
    )
    ev.run_virtual()
    log = ev._log
    assert len(log) > CHUNK_EVENTS  # long enough to pack
    assert len(log._chunks) >= 1 and len(log._events) < CHUNK_EVENTS
    on_disk = sum(1 for _ in (tmp_path / "run" / "events.jsonl").open())
    assert on_disk == len(log) == ev.events.height
