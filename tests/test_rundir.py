"""The run directory: what a killed or finished run leaves on disk, and how a resume reads it."""

from __future__ import annotations

import json

import pytest

from flashevolve.artifacts import Artifact
from flashevolve.errors import ConfigError
from flashevolve.pool import ArtifactPool
from flashevolve.rundir import RunDirectory

VAL = ["v1", "v2"]


def test_admissions_and_tombstones_survive_a_torn_last_line(tmp_path) -> None:
    pool = ArtifactPool(VAL)
    run = RunDirectory(tmp_path / "run")
    assert run.prepare(pool) == (0.0, [], {})
    seed = Artifact({"instruction": "be brief"})
    child = Artifact({"instruction": "be brief and exact"}, parents=(seed.id,), origin="patch")
    pool.admit(seed, {"v1": 0.0, "v2": 1.0}, ts=1.0)
    run.record_admission(pool, seed.id, 1.0)
    pool.admit(child, {"v1": 1.0, "v2": 1.0}, ts=2.0, patched_from=("i7", "i9"))
    run.record_admission(pool, child.id, 2.0)
    run.record_admission(pool, "not-in-the-pool", 2.5)  # ignored, not written
    pool.tombstone(child.id)
    run.record_tombstone(child.id, 3.0)
    run.close()
    with run.artifacts_path.open("a") as fh:
        fh.write('{"artifact": {"components": {"instr')  # the process died mid-line
    assert len(run.artifacts_path.read_text().splitlines()) == 4

    again = ArtifactPool(VAL)
    RunDirectory(tmp_path / "run", resume=True).restore_pool(again)
    assert [r.artifact.id for r in again.records] == [seed.id, child.id]
    assert again.get(child.id).patched_from == ("i7", "i9")
    assert [r.artifact.id for r in again.alive()] == [seed.id]  # the tombstone came back too
    assert again.get(seed.id).val_scores == {"v1": 0.0, "v2": 1.0}


def test_outputs_and_the_refusal_to_overwrite(tmp_path) -> None:
    pool = ArtifactPool(VAL)
    run = RunDirectory(tmp_path)
    run.prepare(pool)
    best = Artifact({"instruction": "answer in one word"})
    pool.admit(best, {"v1": 1.0, "v2": 0.5}, ts=0.0)
    run.write_outputs(pool, {"accepted": 0})
    assert json.loads((tmp_path / "best.json").read_text())["score"] == 0.75
    assert json.loads((tmp_path / "summary.json").read_text()) == {"accepted": 0}
    run.events_path.write_text("")
    with pytest.raises(ConfigError, match="--resume"):
        RunDirectory(tmp_path)
