"""A run directory on disk: what survives the process.

Layout (one directory per run)::

    events.jsonl     the event log, appended as events happen (written by EventLog)
    artifacts.jsonl  one line per admitted artifact (with its validation scores) and one per
                     tombstone, appended and fsync'd at admission -- a killed process loses
                     nothing accepted
    state.json       the workflow's own state, the RNG streams, the id counters and the budget
                     spent, replaced atomically after every new job and every admission
    best.json        the best artifact at the end
    summary.json     the run summary at the end

Resuming reads ``events.jsonl`` for the history (clock offset, counters), rebuilds the pool from
``artifacts.jsonl`` and hands ``state.json`` back to the workflow and the context.  A torn last
line from a killed process is cut off (with a warning) before anything is appended again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import warnings
from pathlib import Path
from typing import Any

from flashevolve.artifacts import Artifact
from flashevolve.errors import ConfigError, RunDirectoryError
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.pool import ArtifactPool

#: The layout version written into state.json; a run directory from another layout is refused.
LAYOUT_VERSION = 2


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
        self._writes = 0
        #: Fault injection for crash tests (docs/reliability.md): SIGKILL this process halfway
        #: through the Nth line appended to artifacts.jsonl.
        crash = os.environ.get("FLASHEVOLVE_CRASH_AT_WRITE", "")
        self._crash_at = int(crash) if crash.isdigit() else None

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def artifacts_path(self) -> Path:
        return self.path / "artifacts.jsonl"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    def prepare(self, pool: ArtifactPool) -> tuple[float, list[Event], dict[str, Any]]:
        """Create the directory, or reload it when resuming (the pool is rebuilt in place):
        returns (clock offset, earlier events, saved state -- empty for a new run)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise RunDirectoryError(
                f"cannot write the run directory {self.path}: {err.strerror or err}; "
                "choose another directory (--out / run_dir=)"
            ) from None
        if not (self.resume and self.events_path.exists()):
            return 0.0, [], {}
        state = self.read_state()
        for log in (self.events_path, self.artifacts_path):
            cut_torn_tail(log)
        history = EventLog.read(self.events_path)
        if not len(pool):
            self.restore_pool(pool)
        offset = max((e.ts for e in history), default=0.0)
        return offset, history, state

    def read_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {}
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{self.state_path} is not valid JSON ({err}); cannot resume"
            ) from None
        version = state.get("layout")
        if version != LAYOUT_VERSION:
            raise ConfigError(
                f"{self.path} was written by a flashevolve with run-directory layout {version}, "
                f"this one reads layout {LAYOUT_VERSION}; resume it with the version that wrote it"
            )
        return state

    def restore_pool(self, pool: ArtifactPool) -> None:
        if not self.artifacts_path.exists():
            return
        for line in self.artifacts_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a killed process (cut_torn_tail warned)
            if "tombstone" in row:
                if row["tombstone"] in pool:
                    pool.tombstone(row["tombstone"])
                continue
            if "scores_for" in row:
                if row["scores_for"] in pool:
                    pool.set_scores(row["scores_for"], row["val_scores"])
                continue
            pool.admit(
                Artifact.from_dict(row["artifact"]),
                row["val_scores"],
                ts=row.get("ts", 0.0),
                patched_from=row.get("patched_from", ()),
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
            }
        )

    def record_scores(self, pool: ArtifactPool, artifact_id: str, ts: float) -> None:
        """A candidate admitted earlier got (new) validation scores (``scored`` events)."""
        if artifact_id in pool:
            self._append(
                {
                    "scores_for": artifact_id,
                    "val_scores": pool.get(artifact_id).val_scores,
                    "ts": ts,
                }
            )

    def record_tombstone(self, artifact_id: str, ts: float) -> None:
        self._append({"tombstone": artifact_id, "ts": ts})

    def save_state(self, state: dict[str, Any]) -> None:
        """Replace state.json atomically (write, flush, rename): a kill leaves the old or the
        new file, never half of one."""
        payload = json.dumps({"layout": LAYOUT_VERSION, **state}, separators=(",", ":"))
        tmp = self.state_path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
        os.replace(tmp, self.state_path)

    def write_outputs(self, pool: ArtifactPool, summary: dict[str, Any]) -> None:
        if any(r.scored for r in pool.alive()):
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

    def failure(self, err: OSError) -> RunDirectoryError:
        """The one line a user reads when writing the directory failed mid-run."""
        return RunDirectoryError(
            f"writing the run directory {self.path} failed ({err.strerror or err}); the run "
            "stopped there and everything written before is intact: fix the cause (e.g. free "
            "disk space) and continue with --resume"
        )

    def close(self) -> None:
        if self._artifacts_fh:
            self._artifacts_fh.close()
            self._artifacts_fh = None

    def _append(self, row: dict[str, Any]) -> None:
        if self._artifacts_fh is None:
            self._artifacts_fh = self.artifacts_path.open("a", encoding="utf-8")
        line = json.dumps(row) + "\n"
        self._writes += 1
        if self._writes == self._crash_at:
            self._artifacts_fh.write(line[: len(line) // 2])
            self._artifacts_fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self._artifacts_fh.write(line)
        # An admission is what a run exists for: on disk before the run goes on.
        self._artifacts_fh.flush()
        os.fsync(self._artifacts_fh.fileno())

    def audit(self) -> dict[str, Any]:
        """Check the directory's promises (docs/reliability.md): every admission logged in
        events.jsonl has its artifact in artifacts.jsonl, no artifact is stored twice, and the
        pool rebuilt from artifacts.jsonl equals the pool the log describes."""
        rows = []
        if self.artifacts_path.exists():
            for line in self.artifacts_path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        stored = [r["artifact"]["id"] for r in rows if "artifact" in r]
        tombstoned = {r["tombstone"] for r in rows if "tombstone" in r}
        events = EventLog.read(self.events_path) if self.events_path.exists() else []
        logged = [e.artifact_id for e in events if e.kind == Kind.ADMITTED]
        rolled_back = {e.artifact_id for e in events if e.kind == Kind.SPECULATION_ROLLED_BACK}
        stored_set = set(stored)
        return {
            "stored": len(stored),
            "logged": len(logged),
            "duplicated": len(stored) - len(stored_set),
            "logged_twice": len(logged) - len(set(logged)),
            "lost": sorted(set(logged) - stored_set),  # announced in the log, not on disk
            "unannounced": sorted(stored_set - set(logged)),  # on disk, event cut by a kill
            "pool_matches_log": [a for a in stored if a not in tombstoned]
            == [a for a in dict.fromkeys(logged) if a not in rolled_back],
        }


def task_fingerprint(task: Any) -> str:
    """A short hash of a task's splits and seed artifact: what a resume must find unchanged."""
    digest = hashlib.sha256()
    for split in ("train", "val"):
        for ex in getattr(task, split, ()):
            row = [split, ex.id, dict(ex.inputs), ex.reference]
            digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    digest.update(json.dumps(dict(task.seed_artifact()), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def cut_torn_tail(path: Path) -> int:
    """Cut a last line a killed writer left without its newline; returns the bytes removed.

    Appending after a torn line would glue the next record onto it and lose both.
    """
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
        # scan back to the last newline
        pos = size - 1
        chunk = 4096
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            block = fh.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        fh.truncate(keep)
    warnings.warn(
        f"{path}: dropped a torn last line ({size - keep} bytes) left by a killed process",
        stacklevel=2,
    )
    return size - keep
