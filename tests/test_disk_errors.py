"""A run directory that cannot be written: one clear error, and nothing already written damaged.

A full disk is the real thing: writes to /dev/full fail with ENOSPC."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flashevolve import Evolver
from flashevolve.backends.sim import SimulatedTask, simulated
from flashevolve.errors import RunDirectoryError, UserError
from flashevolve.rundir import RunDirectory

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")


def make(run_dir: Path, *, resume: bool = False, proposals: int = 6) -> Evolver:
    return Evolver(
        SimulatedTask(n_train=20, n_val=10, seed=0),
        simulated(seed=0),
        mode="sync",
        budget={"proposals": proposals},
        run_dir=run_dir,
        resume=resume,
    )


def test_a_run_directory_under_a_file_is_one_clear_error(tmp_path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(RunDirectoryError, match="cannot write the run directory") as err:
        make(tmp_path / "a-file" / "run").run_virtual()
    assert "\n" not in str(err.value)
    assert isinstance(err.value, UserError)  # the CLI prints it as one line, exit 2


@needs_dev_full
def test_a_full_disk_at_the_first_admission_stores_and_announces_nothing(tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink("/dev/full", run_dir / "artifacts.jsonl")
    with pytest.raises(RunDirectoryError, match="No space left on device") as err:
        make(run_dir).run_virtual()
    assert "--resume" in str(err.value) and "\n" not in str(err.value)
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events and not [e for e in events if e["kind"] == "admitted"]
    # With space again, the run resumes and everything it then admits is stored and logged.
    (run_dir / "artifacts.jsonl").unlink()
    again = make(run_dir, resume=True)
    again.run_virtual()
    audit = RunDirectory(run_dir, resume=True).audit()
    assert audit["stored"] == len(again.pool) > 1
    assert audit["lost"] == [] and audit["duplicated"] == 0 and audit["pool_matches_log"]


CHILD = """
import resource, signal, sys
from flashevolve import Evolver
from flashevolve.backends.sim import SimulatedTask, simulated
from flashevolve.errors import RunDirectoryError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
ev = Evolver(SimulatedTask(n_train=20, n_val=10, seed=0), simulated(seed=0), mode="async",
             budget=3600, run_dir=sys.argv[1], resume=len(sys.argv) > 3)
try:
    ev.run_virtual()
except RunDirectoryError as err:
    print(err)
    sys.exit(2)
"""


def test_a_file_size_limit_mid_run_stops_cleanly_and_the_run_resumes(tmp_path) -> None:
    """The process may write no file past 150 kB (RLIMIT_FSIZE): the event log hits the wall
    mid-run, as on a full disk."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    child = [sys.executable, "-c", CHILD, str(run_dir), str(150_000)]
    done = subprocess.run(child, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "File too large" in done.stdout and len(done.stdout.strip().splitlines()) == 1
    at_failure = RunDirectory(run_dir, resume=True).audit()
    assert at_failure["stored"] >= 1 and at_failure["lost"] == []
    resumed = make(run_dir, resume=True, proposals=4)
    resumed.run_virtual()
    audit = RunDirectory(run_dir, resume=True).audit()
    assert audit["lost"] == [] and audit["duplicated"] == 0 and audit["pool_matches_log"]
    assert audit["stored"] >= at_failure["stored"]
