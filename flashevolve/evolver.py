"""The public entry point: ``Evolver`` wires task -> workflow -> runtime -> backend -> pool ->
events, runs in the caller's loop, in a background thread (notebooks), or on virtual time."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from flashevolve.artifacts import Artifact
from flashevolve.backends import backend_from_spec
from flashevolve.backends.base import LLM
from flashevolve.background import BackgroundRun
from flashevolve.config import RunConfig, coerce_budget, validated
from flashevolve.errors import ConfigError
from flashevolve.events import frames, metrics
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.executors import resolve_executor, run_scope
from flashevolve.policies.staleness import DECISIONS, make_policy
from flashevolve.pool import ArtifactPool
from flashevolve.rundir import RunDirectory, task_fingerprint
from flashevolve.runtime.budget import BudgetTracker
from flashevolve.runtime.clock import LoopClock, run_virtual
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.instrument import InFlight, InstrumentedLLM
from flashevolve.runtime.scheduler import Runtime, RuntimeConfig, resolve_workers
from flashevolve.tasks.registry import resolve_task
from flashevolve.workflows.base import Simulated, check_supports, make_workflow

#: Events counted per endpoint in ``status()["endpoints"]``.
_ENDPOINT_KINDS = frozenset({Kind.REQUEST_FINISHED, Kind.REQUEST_FAILED, Kind.ENDPOINT_STATE})


class Evolver(BackgroundRun):
    """Evolve a task's artifact with a workflow (GEPA by default) against an LLM backend.

    ``backend`` is an :class:`~flashevolve.backends.LLM`, a dict ``{"task": llm, "reflection":
    llm}``, or a string: ``"local"`` (embedded llama-server) or ``"sim"``/``"sim:<profile>"`` (the
    serving simulator).  Backends made from strings are owned and closed by the evolver.

    ``executor`` runs the CPU-heavy work of the run -- task metrics that run code -- off the
    event loop: ``None``/``"local"`` (threads), ``"process"``, ``"ray"`` / ``"ray:ADDRESS"``
    or an :class:`~flashevolve.executors.Executor` (docs/scale-out.md).

    The async defaults aim at accepted proposals per minute: ``control="auto"`` is the adaptive
    controller (:class:`~flashevolve.policies.control.AdaptiveController`: the paper's balance
    rule, trials judged by admitting work, backpressure from the server's queue; ``None`` turns
    it off), and ``max_in_flight=None`` starts with one job per worker and lets the controller
    size it.  Sync runs ignore both.
    """

    def __init__(
        self,
        task: Any,
        backend: Any = None,
        *,
        workflow: Any = "gepa",
        mode: str = "async",
        staleness: Any = None,
        budget: Any = None,
        seed: int = 0,
        run_dir: str | Path | None = None,
        workers: dict[str, int] | None = None,
        max_in_flight: int | None = None,
        reflection_backend: LLM | None = None,
        speculation: Any = None,
        control: Any = "auto",
        name: str | None = None,
        staleness_counter: str = "pool",
        rng: str = "per-stage",
        load_every_s: float | None = 5.0,
        stall_s: float | None = 600.0,
        resume: bool = False,
        executor: Any = None,
        **workflow_options: Any,
    ) -> None:
        self.task = resolve_task(task)
        self.workflow = make_workflow(workflow, **workflow_options)
        self.config: RunConfig = validated(
            RunConfig,
            {
                "mode": mode,
                "seed": seed,
                "budget": coerce_budget(budget),
                "workers": resolve_workers(workers, self.workflow),
                "max_in_flight": max_in_flight,
                "staleness_counter": staleness_counter,
                "rng": rng,
                "load_every_s": load_every_s,
                "stall_s": stall_s,
            },
            "Evolver",
        )
        try:
            self.policy = make_policy(staleness)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"staleness: {err}") from None
        check_supports(self.workflow, speculation=speculation, policy=self.policy)
        self.speculation = speculation
        self.control = default_control(control, self.config.mode)
        self.name = name or f"{self.config.mode}"
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.resume = resume
        self._dir = RunDirectory(self.run_dir, resume=resume) if self.run_dir else None
        self.executor, self._owns_executor = resolve_executor(executor)
        self._backend_spec = backend
        self._reflection_spec = reflection_backend
        self.pool = ArtifactPool([ex.id for ex in self.task.val])
        self._log = EventLog()
        self.runtime: Runtime | None = None
        self.state = "created"
        self._counts = {"proposals": 0, "accepted": 0, "generated_tokens": 0}
        self._attainable: float | None = None  # the backend's attainable tokens/s, if it says
        self._stale = dict.fromkeys(DECISIONS, 0)
        self._best: float | None = None
        self._server_load: dict[str, dict[str, Any]] = {}  # endpoint -> its latest load report
        self._endpoints: dict[str, dict[str, Any]] = {}  # endpoint -> answered, failed, state
        self._clock: LoopClock | None = None
        self._in_flight = InFlight()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[Any] | None = None  # the background run's task (start())
        # Set when the background thread is done. wait() blocks on this rather than on
        # Thread.join(): in CPython 3.11/3.12 a join() interrupted by Ctrl-C marks a still
        # running thread as stopped (is_alive() turns False), which would hide the run.
        self._done = threading.Event()
        self._done.set()
        self._stop_requested: bool | None = None  # None, or the ``graceful`` of stop()
        self._pause_pending = False
        self._error: BaseException | None = None
        self._active = False
        self._ctx: StageContext | None = None
        self._tracker = BudgetTracker(self.config.budget)
        self._fingerprint: str | None = None
        self._disk_error: OSError | None = None

    # -- running ---------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Run to the budget (or ``stop()``); returns :meth:`summary`."""
        if self._active:
            raise RuntimeError("this evolver is already running")
        self._active = True
        if asyncio.current_task() is not self._main:  # awaited directly, not via start()
            self._stop_requested, self._pause_pending = None, False
        try:
            async with run_scope(self.executor, owned=self._owns_executor):
                return await self._run()
        finally:
            self._active = False

    async def _run(self) -> dict[str, Any]:
        self._disk_error = None
        task_llm, reflection_llm, owned = self._open_backends()
        offset, history, saved = self._dir.prepare(self.pool) if self._dir else (0.0, [], {})
        for e in history:
            self._count(e)
        self._clock = clock = LoopClock(offset)
        clock.start()
        path = self._dir.events_path if self._dir else None
        self._log = log = EventLog(path, clock=clock, history=history)
        log.subscribe(self._persist, before_write=True)
        log.subscribe(self._on_event)
        tracker = BudgetTracker(self.config.budget)
        log.subscribe(tracker.observe)
        self._in_flight = InFlight()
        ctx = self._context(log, clock, tracker, task_llm, reflection_llm)
        if saved:
            self._restore(saved, ctx, tracker)
        self._tracker = tracker
        self._ctx = ctx
        b = self.config.budget
        seconds = None if b.seconds is None else offset + b.seconds
        self.runtime = Runtime(
            self.workflow,
            ctx,
            RuntimeConfig(
                mode=self.config.mode,
                workers=self.config.workers,
                max_in_flight=self.config.max_in_flight
                or starting_bound(self.workflow, self.config.workers, task_llm),
                staleness_counter=self.config.staleness_counter,
                seconds=seconds,
                load_every_s=self.config.load_every_s,
                stall_s=self.config.stall_s,
                wind_down=b.wind_down,
            ),
            self.policy,
            controller=self.control,
            on_job=self._checkpoint,
        )
        ctx.runtime = self.runtime
        ctx.emit(Kind.RUN_STARTED, data=self._run_info(task_llm, reflection_llm, bool(history)))
        if self._dir:
            self._announce_recovered(ctx, history)
        self.state = "paused" if self._pause_pending else "running"
        try:
            # a stop() that came before the runtime existed is not lost
            if self._stop_requested is None:
                await self.runtime.run()
            self.state = "stopped" if self._stop_requested is not None else "finished"
        except BaseException as err:
            if isinstance(err, asyncio.CancelledError):
                self.state = "stopped"  # a hard stop() or a cancelled caller: not an error
            else:
                self.state = "failed"
                ctx.emit(Kind.ERROR, reason=f"{type(err).__name__}: {err}")
            raise
        finally:
            ctx.emit(Kind.RUN_FINISHED, reason=self.runtime.stop_reason, data={"state": self.state})
            self._finish_directory()
            log.close()
            for llm in owned:
                await llm.aclose()
            for llm in {id(b): b for b in (task_llm, reflection_llm) if b not in owned}.values():
                release = getattr(llm, "release_loop", None)  # a caller's client: this loop's part
                if release is not None:
                    await release()
        if self._dir is not None and self._disk_error is not None:
            self.state = "failed"
            raise self._dir.failure(self._disk_error)
        return self.summary()

    def _finish_directory(self) -> None:
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

    def _context(
        self,
        log: EventLog,
        clock: LoopClock,
        tracker: BudgetTracker,
        task_llm: LLM,
        reflection_llm: LLM,
    ) -> StageContext:
        # Where a client has to queue requests, later stages go first: a child that passed the
        # gate gets validated before new jobs' rollouts (backends/gate.py).
        stages = [s.name for s in self.workflow.stages()]
        priority: dict[str, Any] = {"stage_priority": {name: -i for i, name in enumerate(stages)}}
        ctx = StageContext(
            task=self.task,
            pool=self.pool,
            log=log,
            clock=clock,
            task_llm=InstrumentedLLM(task_llm, "task", log, self._in_flight, **priority),
            reflection_llm=InstrumentedLLM(
                reflection_llm, "reflection", log, self._in_flight, **priority
            ),
            tracker=tracker,
            seed=self.config.seed,
            rng_mode=self.config.rng,
            speculation=self.speculation,
            workflow=self.workflow,
        )
        for llm in (ctx.task_llm, ctx.reflection_llm):
            assert isinstance(llm, InstrumentedLLM)  # made just above
            llm.on_tokens = lambda n: setattr(tracker, "tokens", tracker.tokens + n)
        return ctx

    def _run_info(self, task_llm: LLM, reflection_llm: LLM, resumed: bool) -> dict[str, Any]:
        """``run_started``'s data: enough for any view to read the log without the workflow."""
        assert self.runtime is not None
        specs = self.workflow.stages()
        return {
            "mode": self.config.mode,
            "workflow": self.workflow.name,
            "stages": [s.name for s in specs],
            "stage_roles": {s.name: s.role for s in specs},
            "accounting": self.workflow.accounting.as_dict(),
            "task": self.task.name,
            "seed": self.config.seed,
            "name": self.name,
            "resumed": resumed,
            "simulated": str(task_llm.endpoint).startswith("sim:"),
            "backend": backend_facts(task_llm),
            "reflection_backend": backend_facts(reflection_llm),
            "workers": dict(self.runtime.targets),
            "max_in_flight": self.runtime.max_in_flight,
            "staleness": self.policy.name,
            "budget": self.config.budget.model_dump(exclude_none=True),
            "executor": self.executor.name,
        }

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

    def _task_fingerprint(self) -> str:
        """A short hash of the task's examples and seed: a resume refuses a changed task."""
        if self._fingerprint is None:
            self._fingerprint = task_fingerprint(self.task)
        return self._fingerprint

    def run_virtual(self) -> dict[str, Any]:
        """Run on virtual time (for the serving simulator): a 30-minute budget takes seconds.

        Works inside a notebook kernel too: a loop cannot run inside the kernel's running loop,
        so there the virtual loop gets a short-lived thread of its own.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return run_virtual(self.run)
        with ThreadPoolExecutor(1, thread_name_prefix=f"flashevolve-virtual-{self.name}") as ex:
            return ex.submit(run_virtual, self.run).result()

    def run_sync(self) -> dict[str, Any]:
        """Blocking run; works inside a running notebook kernel (runs in a worker thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run())
        self.start()
        return self.wait()

    # -- results ---------------------------------------------------------------------------------
    @property
    def events(self) -> pl.DataFrame:
        """Every event so far, as a Polars frame (a consistent snapshot, safe while running)."""
        return self._log.frame()

    def event_list(self) -> list[Event]:
        return self._log.snapshot()

    @property
    def requests(self) -> pl.DataFrame:
        """One row per backend request (tokens, latency, outcome)."""
        return frames.requests(self.events)

    @property
    def artifacts(self) -> pl.DataFrame:
        """Lineage: one row per candidate with parents, version, score, speculative/tombstoned,
        patched-from."""
        return frames.artifacts(self.events)

    @property
    def staleness(self) -> pl.DataFrame:
        """One row per stale item with both lags and the policy's decision."""
        return frames.staleness(self.events)

    @property
    def backend_load(self) -> pl.DataFrame:
        """What the servers reported about their own load (requests running and waiting, KV
        fill), every ``load_every_s``; empty for backends that cannot tell."""
        return frames.backend_load(self.events)

    def throughput(self, window: float = 60.0) -> pl.DataFrame:
        """Items per stage and proposals/accepted/sweeps per minute, in ``window``-second bins."""
        return frames.throughput(self.events, window_s=window)

    def dashboard(self, *others: Evolver, refresh_s: float = 1.0) -> Any:
        """A live ipywidgets dashboard of this run (and ``others`` side by side)."""
        from flashevolve.views.widgets import dashboard

        return dashboard(self, *others, refresh_s=refresh_s)

    def report(self, path: str | Path, *others: Evolver, title: str | None = None) -> Path:
        """An offline HTML report with every chart, for this run and ``others``."""
        from flashevolve.views.report import write_report

        runs = {ev.name: ev.events for ev in (self, *others)}
        return write_report(path, runs, title=title or f"flashevolve: {self.task.name}")

    @property
    def best(self) -> Artifact:
        return self.pool.best(confirmed=True).artifact

    def summary(self) -> dict[str, Any]:
        out = metrics.summary(self.events)
        out.update(
            {
                "name": self.name,
                "mode": self.config.mode,
                "task": self.task.name,
                "workflow": self.workflow.name,
                "staleness": self.policy.name,
                "best_artifact_id": self.pool.best(confirmed=True).id if len(self.pool) else None,
            }
        )
        return out

    def status(self) -> dict[str, Any]:
        """Live numbers for dashboards; cheap, safe to call from another thread."""
        elapsed = 0.0
        if self._clock is not None and self.state in ("running", "paused"):
            try:
                elapsed = self._clock.wall()
            except RuntimeError:
                elapsed = 0.0
        elif len(self._log):
            elapsed = self._log.tail(1)[0].ts
        minutes = max(elapsed / 60.0, 1e-9)
        rt = self.runtime
        runtime_status = rt.status() if rt else {"stages": {}, "jobs_in_flight": 0}
        return {
            "name": self.name,
            "mode": self.config.mode,
            "state": self.state,
            "elapsed_s": elapsed,
            "stages": runtime_status["stages"],
            "in_flight": self._in_flight.count,
            "at_server": self._in_flight.at_server,
            "in_client": self._in_flight.held,
            "jobs_in_flight": runtime_status["jobs_in_flight"],
            "wind_down_at": runtime_status.get("wind_down_at"),  # new jobs stopped (run clock)
            "max_in_flight": rt.max_in_flight if rt else self.config.max_in_flight,
            "proposals": self._counts["proposals"],
            "accepted": self._counts["accepted"],
            "proposals_per_min": self._counts["proposals"] / minutes,
            "accepted_per_min": self._counts["accepted"] / minutes,
            "best_score": self._best,
            # generated tokens per second over what the server can attain (when it says)
            "utilization": None
            if self._attainable is None or elapsed <= 0
            else self._counts["generated_tokens"] / elapsed / self._attainable,
            "stale": dict(self._stale),
            "pool_version": self.pool.pool_version,
            "frontier_version": self.pool.frontier_version,
            "server_load": {k: dict(v) for k, v in self._server_load.items()},
            "endpoints": {k: dict(v) for k, v in self._endpoints.items()},
        }

    # -- internals -------------------------------------------------------------------------------
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

    def _disk_failed(self, err: OSError) -> None:
        """Writing the run directory failed (a full disk, ...): write nothing more -- so what is
        on disk stays consistent -- and stop the run; run() then raises one clear error."""
        if self._disk_error is not None:
            return
        self._disk_error = err
        self._log.stop_writing(err)
        if self.runtime is not None:
            self.runtime.request_stop(f"run directory write failed: {err}", graceful=False)

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

    def _on_event(self, event: Event) -> None:
        if self._pause_pending:
            self._apply_pause()  # a pause() that came before the runtime was running
        if self._log.write_error is not None and self._disk_error is None:
            self._disk_failed(self._log.write_error)
        self._count(event)
        if self._dir is not None and event.kind in (Kind.ADMITTED, Kind.SCORED):
            self._checkpoint()

    def _count(self, event: Event) -> None:
        """Live counters for status(); also replayed over the history on resume."""
        kind = event.kind
        if kind in (Kind.REQUEST_FINISHED, Kind.REQUEST_CANCELLED):
            self._counts["generated_tokens"] += event.completion_tokens or 0
        if kind == Kind.PROPOSAL_MADE:
            self._counts["proposals"] += 1
        elif kind in (Kind.ADMITTED, Kind.SCORED):
            if kind == Kind.ADMITTED and (event.data or {}).get("origin") != "seed":
                self._counts["accepted"] += 1
            if event.score is not None and (self._best is None or event.score > self._best):
                self._best = event.score
        elif kind == Kind.STALE_DETECTED and event.decision:
            self._stale[event.decision] = self._stale.get(event.decision, 0) + 1
        elif kind == Kind.RUN_STARTED:
            backend = (event.data or {}).get("backend") or {}
            self._attainable = backend.get("attainable_tokens_per_s")
        elif kind == Kind.BACKEND_LOAD and event.endpoint:
            self._server_load[event.endpoint] = dict(event.data or {})
        elif kind in _ENDPOINT_KINDS and event.endpoint:  # per endpoint, for the dashboard
            counts = self._endpoints.setdefault(
                event.endpoint, {"requests": 0, "failed": 0, "state": "up"}
            )
            if kind == Kind.ENDPOINT_STATE:
                counts["state"] = (event.data or {}).get("state", counts["state"])
            else:
                counts["requests" if kind == Kind.REQUEST_FINISHED else "failed"] += 1

    def _open_backends(self) -> tuple[LLM, LLM, list[LLM]]:
        spec, owned = self._backend_spec, []
        reflection = self._reflection_spec
        if isinstance(spec, dict):
            reflection = spec.get("reflection", reflection)
            spec = spec.get("task")
        workload = self.workflow.sim_workload() if isinstance(self.workflow, Simulated) else None
        if isinstance(spec, str):
            spec = backend_from_spec(spec, self.config.seed, workload=workload)
            owned.append(spec)
        if spec is None:
            raise ConfigError("Evolver needs a backend: an LLM object, 'local', or 'sim[:profile]'")
        if isinstance(reflection, str):
            reflection = backend_from_spec(reflection, self.config.seed, workload=workload)
            owned.append(reflection)
        self._backend_spec, self._reflection_spec = spec, reflection  # reuse on resume
        return spec, reflection or spec, owned


def backend_facts(llm: Any) -> dict[str, Any]:
    """What ``run_started`` says about a backend: where it is, and what the views need to read
    the log without it -- the throughput it can attain (``utilization``'s denominator, when it
    says: the simulator's profiles do) and the client's own cap on requests in flight."""
    facts: dict[str, Any] = {"endpoint": llm.endpoint, "model": llm.model}
    profile = getattr(llm, "profile", None)
    attainable = getattr(llm, "attainable_tokens_per_s", None)
    if attainable is None and profile is not None:
        attainable = getattr(profile, "attainable_tokens_per_s", None)
    if isinstance(attainable, int | float) and attainable > 0:
        facts["attainable_tokens_per_s"] = float(attainable)
    cap = getattr(llm, "max_concurrency", None)
    if isinstance(cap, int) and cap > 0:
        facts["max_concurrency"] = cap
        facts["queue"] = getattr(llm, "queue", None)
    return facts


def default_control(control: Any, mode: str) -> Any:
    """``control="auto"``: the adaptive controller for async runs (measured to make more
    accepted proposals per minute than fixed settings found in hindsight, docs/benchmarks.md
    section 4), nothing for sync (one worker per stage is what sync means)."""
    if not (isinstance(control, str) and control == "auto"):
        return control
    if mode != "async":
        return None
    from flashevolve.policies.control import AdaptiveController

    return AdaptiveController()


def starting_bound(workflow: Any, workers: dict[str, int], llm: Any) -> int:
    """Jobs in flight when the user did not say: one per worker (fewer leave workers idle from
    the first minute), but no more than the client lets reach the server at once (its
    ``max_concurrency``: llama-server's slots, ``--concurrency``) -- a job keeps at least one
    request at the server, so jobs beyond that only wait in the client.  The adaptive
    controller sizes it from there, by the server's load."""
    total: int = sum(workers.get(spec.name, spec.default_workers) for spec in workflow.stages())
    cap = getattr(llm, "max_concurrency", None)
    return max(1, min(total, cap) if isinstance(cap, int) and cap > 0 else total)
