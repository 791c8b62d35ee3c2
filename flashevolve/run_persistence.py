"""A run's side of its run directory: admissions on disk before their events, the resume state
after every job and admission, restoring from it, and stopping cleanly when the disk fails.

``RunPersistence`` is mixed into :class:`flashevolve.Evolver`, which owns the state it uses (the
pool, workflow, task, speculation settings, the run's context, budget tracker, log and runtime);
:class:`flashevolve.rundir.RunDirectory` does the file work itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flashevolve.errors import ConfigError
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.pool import ArtifactPool
from flashevolve.rundir import RunDirectory, task_fingerprint
from flashevolve.runtime.budget import BudgetTracker
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.scheduler import Runtime


class RunPersistence:
    """Run-directory bookkeeping for :class:`~flashevolve.Evolver` (see the module doc)."""

    # provided by Evolver
    task: Any
    workflow: Any
    speculation: Any
    pool: ArtifactPool
    run_dir: Path | None
    runtime: Runtime | None
    summary: Callable[[], dict[str, Any]]
    _dir: RunDirectory | None
    _ctx: StageContext | None
    _tracker: BudgetTracker
    _log: EventLog
    _fingerprint: str | None
    _disk_error: OSError | None

    def _persist(self, event: Event) -> None:
        """Before an admission, a new score or a rollback is logged, it is on disk (fsync'd):
        a kill in between leaves the artifact without its event, never the reverse."""
        if self._dir is None or self._disk_error or (event.data or {}).get("recovered"):
            return
        artifact_id = event.artifact_id
        if artifact_id is None:  # admissions, scores and rollbacks always name their artifact
            return
        try:
            if event.kind == Kind.ADMITTED:
                self._dir.record_admission(self.pool, artifact_id, event.ts)
            elif event.kind == Kind.SCORED:
                self._dir.record_scores(self.pool, artifact_id, event.ts)
            elif event.kind == Kind.SPECULATION_ROLLED_BACK:
                self._dir.record_tombstone(artifact_id, event.ts)
        except OSError as err:
            self._disk_failed(err)

    def _checkpoint(self) -> None:
        """Save what a resume needs besides the pool (called after each job and admission)."""
        if self._dir is None or self._ctx is None or self._disk_error is not None:
            return
        state: dict[str, Any] = {
            "workflow_name": self.workflow.name,
            "task": self._task_fingerprint(),
            "pool_version": self.pool.pool_version,
            "context": self._ctx.snapshot(),
            "workflow": self.workflow.snapshot(),
            "budget": self._tracker.snapshot(),
        }
        if self.speculation is not None and hasattr(self.speculation, "snapshot"):
            state["speculation"] = self.speculation.snapshot()
        try:
            self._dir.save_state(state)
        except OSError as err:
            self._disk_failed(err)

    def _restore(self, saved: dict[str, Any], ctx: StageContext, tracker: BudgetTracker) -> None:
        """Continue a run from its run directory's state.json (pool already rebuilt)."""
        if saved.get("workflow_name") not in (None, self.workflow.name):
            raise ConfigError(
                f"{self.run_dir} holds a {saved['workflow_name']!r} run; resume it with "
                f"workflow={saved['workflow_name']!r}, not {self.workflow.name!r}"
            )
        if saved.get("task") not in (None, self._task_fingerprint()):
            raise ConfigError(
                f"{self.run_dir}: the task changed since the run was written (its examples or "
                "seed differ); resume with the same task, or start a new run directory"
            )
        ctx.restore(saved.get("context", {}))
        self.workflow.restore(saved.get("workflow", {}), ctx)
        tracker.restore(saved.get("budget", {}))
        if self.speculation is not None and hasattr(self.speculation, "restore"):
            self.speculation.restore(saved.get("speculation", {}))

    def _task_fingerprint(self) -> str:
        """A short hash of the task's examples and seed: a resume refuses a changed task."""
        if self._fingerprint is None:
            self._fingerprint = task_fingerprint(self.task)
        return self._fingerprint

    def _announce_recovered(self, ctx: StageContext, history: list[Event]) -> None:
        """Admissions that reached artifacts.jsonl but whose event a kill cut off: logged now
        (``data.recovered``), so the log and the pool agree again."""
        logged = {e.artifact_id for e in history if e.kind == Kind.ADMITTED}
        for record in self.pool.records:
            if record.id not in logged:
                ctx.emit(
                    Kind.ADMITTED,
                    artifact_id=record.id,
                    parent_id=record.parents[0] if record.parents else None,
                    score=record.mean_score if record.scored else None,
                    reason="admitted before the process was killed; its event was lost",
                    data={
                        "origin": record.artifact.origin,
                        "parents": list(record.parents),
                        "patched_from": list(record.patched_from),
                        "val_scores": record.val_scores,
                        "recovered": True,
                    },
                )

    def _finish_directory(self) -> None:
        """At the end of a run: the last state, best.json and summary.json, then close."""
        if self._dir is None:
            return
        if self._disk_error is None:
            self._checkpoint()
        if self._disk_error is None:
            try:
                self._dir.write_outputs(self.pool, self.summary())
            except OSError as err:
                self._disk_failed(err)
        try:
            self._dir.close()
        except OSError as err:
            self._disk_failed(err)

    def _disk_failed(self, err: OSError) -> None:
        """Writing the run directory failed (a full disk, ...): write nothing more -- so what is
        on disk stays consistent -- and stop the run; run() then raises one clear error."""
        if self._disk_error is not None:
            return
        self._disk_error = err
        self._log.stop_writing(err)
        if self.runtime is not None:
            self.runtime.request_stop(f"run directory write failed: {err}", graceful=False)
