"""The public entry point: ``Evolver`` wires task -> workflow -> runtime -> backend -> pool ->
events, runs in the caller's loop, in a background thread (notebooks), or on virtual time.

Its run-directory side (persistence, resume) is :mod:`flashevolve.run_persistence`, the live
counters behind ``status()`` are :mod:`flashevolve.run_status`, the choices made before a run
(policy, controller, backends, job bound) :mod:`flashevolve.run_setup`, and the background
thread :mod:`flashevolve.background`.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from flashevolve.artifacts import Artifact
from flashevolve.backends.base import LLM
from flashevolve.background import BackgroundRun
from flashevolve.config import RunConfig, coerce_budget, validated
from flashevolve.events import frames, metrics
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.executors import resolve_executor, run_scope
from flashevolve.pool import ArtifactPool
from flashevolve.run_persistence import RunPersistence
from flashevolve.run_setup import (
    backend_facts,
    close_backends,
    default_control,
    open_backends,
    staleness_policy,
    starting_bound,
)
from flashevolve.run_status import LiveCounters
from flashevolve.rundir import RunDirectory
from flashevolve.runtime.budget import BudgetTracker
from flashevolve.runtime.clock import LoopClock, run_virtual
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.instrument import InFlight, InstrumentedLLM
from flashevolve.runtime.scheduler import Runtime, RuntimeConfig, resolve_workers
from flashevolve.tasks.registry import resolve_task
from flashevolve.workflows.base import check_supports, make_workflow

__all__ = ["Evolver", "backend_facts", "default_control", "starting_bound"]


class Evolver(RunPersistence, BackgroundRun):
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
        # The keywords are the notebook-first API (README, docs); RunConfig validates them.
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
        self.policy = staleness_policy(staleness)
        check_supports(self.workflow, speculation=speculation, policy=self.policy)
        self.speculation = speculation
        self.control = default_control(control, self.config.mode)
        self.name = name or f"{self.config.mode}"
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.resume = resume
        self._dir = RunDirectory(self.run_dir, resume=resume) if self.run_dir else None
        self.executor, self._owns_executor = resolve_executor(executor)
        self._backend_spec, self._reflection_spec = backend, reflection_backend
        self.pool = ArtifactPool([ex.id for ex in self.task.val])
        self._init_run_state()
        self._init_background()

    def _init_run_state(self) -> None:
        """What a run fills in as it goes; the counters are replayed over the history on resume."""
        self._log = EventLog()
        self.runtime: Runtime | None = None
        self.state = "created"
        self._live = LiveCounters()
        self._clock: LoopClock | None = None
        self._in_flight = InFlight()
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
            self._live.count(e)
        clock, log, tracker = self._open_log(offset, history)
        self._in_flight = InFlight()
        ctx = self._context(log, clock, tracker, task_llm, reflection_llm)
        if saved:
            self._restore(saved, ctx, tracker)
        self._tracker = tracker
        self._ctx = ctx
        self.runtime = runtime = self._make_runtime(ctx, task_llm, offset)
        ctx.runtime = runtime
        ctx.emit(Kind.RUN_STARTED, data=self._run_info(task_llm, reflection_llm, bool(history)))
        if self._dir:
            self._announce_recovered(ctx, history)
        try:
            await self._drive(ctx, runtime)
        finally:
            ctx.emit(Kind.RUN_FINISHED, reason=runtime.stop_reason, data={"state": self.state})
            self._finish_directory()
            log.close()
            await close_backends(owned, task_llm, reflection_llm)
        if self._dir is not None and self._disk_error is not None:
            self.state = "failed"
            raise self._dir.failure(self._disk_error)
        return self.summary()

    def _open_backends(self) -> tuple[LLM, LLM, list[LLM]]:
        task_llm, reflection, owned = open_backends(
            self._backend_spec, self._reflection_spec, self.workflow, self.config.seed
        )
        self._backend_spec, self._reflection_spec = task_llm, reflection  # reuse on resume
        return task_llm, reflection or task_llm, owned

    def _open_log(
        self, offset: float, history: list[Event]
    ) -> tuple[LoopClock, EventLog, BudgetTracker]:
        """The run clock (continuing at ``offset`` on resume), the event log (appending to the
        run directory's events.jsonl, if any) and the budget tracker that watches it."""
        self._clock = clock = LoopClock(offset)
        clock.start()
        path = self._dir.events_path if self._dir else None
        self._log = log = EventLog(path, clock=clock, history=history)
        log.subscribe(self._persist, before_write=True)
        log.subscribe(self._on_event)
        tracker = BudgetTracker(self.config.budget)
        log.subscribe(tracker.observe)
        return clock, log, tracker

    def _make_runtime(self, ctx: StageContext, task_llm: LLM, offset: float) -> Runtime:
        config, budget = self.config, self.config.budget
        runtime_config = RuntimeConfig(
            mode=config.mode,
            workers=config.workers,
            max_in_flight=config.max_in_flight
            or starting_bound(self.workflow, config.workers, task_llm),
            staleness_counter=config.staleness_counter,
            seconds=None if budget.seconds is None else offset + budget.seconds,
            load_every_s=config.load_every_s,
            stall_s=config.stall_s,
            wind_down=budget.wind_down,
        )
        return Runtime(
            self.workflow,
            ctx,
            runtime_config,
            self.policy,
            controller=self.control,
            on_job=self._checkpoint,
        )

    async def _drive(self, ctx: StageContext, runtime: Runtime) -> None:
        """Run the runtime to its end; ``state`` says how it ended."""
        self.state = "paused" if self._pause_pending else "running"
        try:
            # a stop() that came before the runtime existed is not lost
            if self._stop_requested is None:
                await runtime.run()
            self.state = "stopped" if self._stop_requested is not None else "finished"
        except BaseException as err:
            if isinstance(err, asyncio.CancelledError):
                self.state = "stopped"  # a hard stop() or a cancelled caller: not an error
            else:
                self.state = "failed"
                ctx.emit(Kind.ERROR, reason=f"{type(err).__name__}: {err}")
            raise

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
        elapsed = self._elapsed()
        minutes = max(elapsed / 60.0, 1e-9)
        rt = self.runtime
        runtime_status = rt.status() if rt else {"stages": {}, "jobs_in_flight": 0}
        live = self._live
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
            "proposals": live.proposals,
            "accepted": live.accepted,
            "proposals_per_min": live.proposals / minutes,
            "accepted_per_min": live.accepted / minutes,
            "best_score": live.best,
            "utilization": live.utilization(elapsed),
            "stale": dict(live.stale),
            "pool_version": self.pool.pool_version,
            "frontier_version": self.pool.frontier_version,
            "server_load": {k: dict(v) for k, v in live.server_load.items()},
            "endpoints": {k: dict(v) for k, v in live.endpoints.items()},
        }

    def _elapsed(self) -> float:
        """Run-clock seconds: live while running or paused, else the last event's time."""
        if self._clock is not None and self.state in ("running", "paused"):
            try:
                return self._clock.wall()
            except RuntimeError:
                return 0.0
        if len(self._log):
            return self._log.tail(1)[0].ts
        return 0.0

    # -- internals -------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if self._pause_pending:
            self._apply_pause()  # a pause() that came before the runtime was running
        if self._log.write_error is not None and self._disk_error is None:
            self._disk_failed(self._log.write_error)
        self._live.count(event)
        if self._dir is not None and event.kind in (Kind.ADMITTED, Kind.SCORED):
            self._checkpoint()
