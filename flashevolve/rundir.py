"""A run directory on disk: what survives the process.

Layout (one directory per run)::

    events.jsonl     the event log, appended as events happen (written by EventLog)
    artifacts.jsonl  one line per admitted artifact (with its validation scores) and one per
                     tombstone, appended at admission -- a killed process loses nothing accepted
    best.json        the best artifact at the end
    summary.json     the run summary at the end

Resuming reads ``events.jsonl`` for the history (clock offset, counters, iteration) and rebuilds
the pool from ``artifacts.jsonl``; a torn last line from a killed process is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flashevolve.artifacts import Artifact
from flashevolve.errors import ConfigError
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.pool import ArtifactPool


class RunDirectory:
    """Reads and writes one run's directory; the evolver owns one when ``run_dir`` is given."""

    def __init__(self, path: str | Path, *, resume: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume
        if self.events_path.exists() and not resume:
            raise ConfigError(
                f"{self.path} already holds a run; pass resume=True (--resume) to continue "
                f"it, or choose another run directory"
            )
        self._artifacts_fh: Any = None

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def artifacts_path(self) -> Path:
        return self.path / "artifacts.jsonl"

    def prepare(self, pool: ArtifactPool) -> tuple[float, list[Event], int]:
        """Create the directory, or reload it when resuming (the pool is rebuilt in place):
        returns (clock offset, earlier events, iterations already made)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.resume and self.events_path.exists()):
            return 0.0, [], 0
        history = EventLog.read(self.events_path)
        if not len(pool):
            self.restore_pool(pool)
        offset = max((e.ts for e in history), default=0.0)
        iteration = sum(1 for e in history if e.kind == Kind.PARENT_SELECTED)
        return offset, history, iteration

    def restore_pool(self, pool: ArtifactPool) -> None:
        if not self.artifacts_path.exists():
            return
        for line in self.artifacts_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed process
            if "tombstone" in row:
                if row["tombstone"] in pool:
                    pool.tombstone(row["tombstone"])
                continue
            pool.admit(
                Artifact.from_dict(row["artifact"]),
                row["val_scores"],
                ts=row.get("ts", 0.0),
                patched_from=row.get("patched_from", ()),
                next_component=row.get("next_component", 0),
            )

    def record_admission(self, pool: ArtifactPool, artifact_id: str, ts: float) -> None:
        if artifact_id not in pool:
            return
        rec = pool.get(artifact_id)
        self._append(
            {
                "artifact": rec.artifact.to_dict(),
                "val_scores": rec.val_scores,
                "score": rec.mean_score,
                "ts": ts,
                "patched_from": list(rec.patched_from),
                "next_component": rec.next_component,
            }
        )

    def record_tombstone(self, artifact_id: str, ts: float) -> None:
        self._append({"tombstone": artifact_id, "ts": ts})

    def write_outputs(self, pool: ArtifactPool, summary: dict[str, Any]) -> None:
        if len(pool):
            best = pool.best(confirmed=True)
            (self.path / "best.json").write_text(
                json.dumps(
                    {
                        "id": best.id,
                        "score": best.mean_score,
                        "components": dict(best.artifact.components),
                    },
                    indent=2,
                )
            )
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    def close(self) -> None:
        if self._artifacts_fh:
            self._artifacts_fh.close()
            self._artifacts_fh = None

    def _append(self, row: dict[str, Any]) -> None:
        if self._artifacts_fh is None:  # line-buffered: each admission is on disk at once
            self._artifacts_fh = self.artifacts_path.open("a", buffering=1)
        self._artifacts_fh.write(json.dumps(row) + "\n")
