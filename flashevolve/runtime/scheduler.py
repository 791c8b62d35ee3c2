"""The scheduler: one bounded queue and one worker pool per stage, a job source, and the policies.

``mode="sync"`` is the same machinery with one worker per stage and one job in flight: each step
passes through every stage before the next begins, which is exactly the classic loop with a
barrier after each stage (requests *inside* a stage still run concurrently).  ``mode="async"``
lets many jobs overlap with per-stage worker counts and a bound on jobs in flight.

Throughput then is about ``min_s K_s / E[t_s]`` instead of ``sum_s max(request time)``.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

from flashevolve.events.schema import Kind
from flashevolve.policies.staleness import StaleDecision, StaleItem, StalenessPolicy
from flashevolve.policies.wind_down import WindDown
from flashevolve.runtime.config import RuntimeConfig, resolve_workers
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import StageSpec, WorkItem
from flashevolve.runtime.load_sampler import sample_backend_load
from flashevolve.runtime.slots import JobSlots
from flashevolve.runtime.stale import apply_decision, judge
from flashevolve.runtime.watchdog import Watchdog

# Settings and the job bound live in their own modules; imported from here as before.
__all__ = ["JobSlots", "Runtime", "RuntimeConfig", "resolve_workers"]


class Runtime:
    def __init__(
        self,
        workflow: Any,
        ctx: StageContext,
        config: RuntimeConfig,
        policy: StalenessPolicy,
        controller: Any = None,
        on_job: Any = None,
    ) -> None:
        self.workflow = workflow
        #: called after every new job (the run directory saves the workflow's state there)
        self.on_job = on_job
        self.ctx = ctx
        self.config = config
        self.policy = policy
        self.controller = controller
        self.wind_down: WindDown | None = None  # made at run start when the budget asks for it
        self.wound_down_at: float | None = None  # run clock of the wind_down event
        self.specs: dict[str, StageSpec] = {s.name: s for s in workflow.stages()}
        self.entry = workflow.stages()[0].name
        sync = config.mode == "sync"
        given = resolve_workers(config.workers, workflow)
        self.targets: dict[str, int] = {
            name: 1 if sync else given.get(name, spec.default_workers)
            for name, spec in self.specs.items()
        }
        # Unset: one job per worker to start -- fewer would leave workers idle from the first
        # minute; the adaptive controller then sizes the bound from the server's load.
        bound = config.max_in_flight or sum(self.targets.values())
        self.max_in_flight = 1 if sync else bound
        self.state = "created"
        self.stop_reason: str | None = None
        self._workers: dict[str, dict[asyncio.Task[Any], bool]] = {n: {} for n in self.specs}
        self._busy: dict[str, int] = dict.fromkeys(self.specs, 0)
        self._done_count: dict[str, int] = dict.fromkeys(self.specs, 0)
        self._job_items: dict[str, int] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self.watchdog = (
            Watchdog(config.stall_s, min(30.0, config.stall_s / 4))
            if config.stall_s is not None
            else None
        )

    # -- control (call from the loop's thread) ------------------------------------------------
    def request_stop(self, reason: str, *, graceful: bool = True) -> None:
        """Stop making new jobs; with ``graceful=False`` also cancel the work in flight."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.ctx.emit(Kind.BUDGET_STOP, reason=reason, data={"graceful": graceful})
        self._stop_source.set()
        if not graceful or not self._job_items:
            self._finished.set()

    def pause(self) -> None:
        self._resume.clear()
        self.state = "paused"

    def resume(self) -> None:
        self._resume.set()
        self.state = "running"

    def set_workers(self, stage: str, n: int, reason: str = "") -> None:
        """Grow or shrink a stage's worker pool (idle workers retire at once, busy ones after
        their item)."""
        n = max(1, int(n))
        old = self.targets[stage]
        if n == old:
            return
        self.targets[stage] = n
        self.ctx.emit(
            Kind.WORKERS_CHANGED, stage=stage, workers=n, reason=reason, data={"from": old}
        )
        if self.state in ("running", "paused"):
            self._reconcile(stage)

    def set_max_in_flight(self, n: int, reason: str = "") -> None:
        """Move the bound on jobs in flight (a ``job_bound_changed`` event).  Jobs already in
        the pipeline finish either way; a lower bound only delays new ones."""
        n = max(1, int(n))
        old = self.max_in_flight
        if n == old:
            return
        self.max_in_flight = n
        self.ctx.emit(Kind.JOB_BOUND_CHANGED, reason=reason, data={"from": old, "to": n})
        if hasattr(self, "_slots"):
            self._slots.set_limit(n)

    def spawn(self, coro: Any, name: str | None = None) -> asyncio.Task[Any]:
        """Background work owned by this run (e.g. a speculative validation tail): it is
        cancelled at shutdown together with the workers."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)
        return task

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    @property
    def jobs_in_flight(self) -> int:
        """Jobs started and not finished (what the bound ``max_in_flight`` caps)."""
        return len(self._job_items)

    def queue_depth(self, stage: str) -> int:
        return self._queues[stage].qsize() if hasattr(self, "_queues") else 0

    def status(self) -> dict[str, Any]:
        return {
            "stages": {
                name: {
                    "queue_depth": self.queue_depth(name),
                    "workers": self.targets[name],
                    "busy": self._busy[name],
                    "done": self._done_count[name],
                }
                for name in self.specs
            },
            "jobs_in_flight": self.jobs_in_flight,
            "wind_down_at": self.wound_down_at,
        }

    # -- the run ------------------------------------------------------------------------------
    async def run(self) -> None:
        ctx = self.ctx
        self._queues: dict[str, asyncio.Queue[WorkItem]] = {n: asyncio.Queue() for n in self.specs}
        self._slots = JobSlots(self.max_in_flight)
        self._stop_source = asyncio.Event()
        self._finished = asyncio.Event()
        self._resume = asyncio.Event()
        self._resume.set()
        self.state = "running"
        try:
            # The time budget covers scoring the seed too, as the clock a user watches does.
            if self.config.seconds is not None:
                self._tasks.append(asyncio.create_task(self._deadline(self.config.seconds)))
                if self.config.wind_down is not None:
                    self.wind_down = WindDown(self.config.wind_down)
                    ctx.log.subscribe(self.wind_down.observe)
            init = asyncio.create_task(self.workflow.initialize(ctx), name="flashevolve-init")
            self._tasks.append(init)
            stopped = asyncio.create_task(self._finished.wait())
            self._tasks.append(stopped)
            await asyncio.wait({init, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not init.done():
                return  # stopped (deadline or user) before the seed was scored
            init.result()  # re-raise a failure of initialization
            for name in self.specs:
                self._reconcile(name)
            self._tasks.append(asyncio.create_task(self._source(), name="flashevolve-source"))
            if self.controller is not None:
                self._tasks.append(asyncio.create_task(self._control()))
            if self.config.load_every_s is not None:
                self.spawn(sample_backend_load(ctx, self.config.load_every_s), name="fe-load")
            if self.watchdog is not None:
                ctx.log.subscribe(self.watchdog.observe)
                self.spawn(self.watchdog.run(ctx), name="fe-watchdog")
            await self._finished.wait()
        finally:
            await self._shutdown()

    async def _control(self) -> None:
        """Run the worker controller; if it fails, say so in the log and keep the workers as
        they are (a broken controller must neither pass silently nor end the run)."""
        try:
            await self.controller.run(self)
        except Exception as err:
            self.ctx.emit(
                Kind.ERROR,
                reason=f"worker controller failed, worker counts stay as they are: "
                f"{type(err).__name__}: {err}",
                data={"traceback": traceback.format_exc(limit=8)},
            )

    async def _deadline(self, seconds: float) -> None:
        remaining = seconds - self.ctx.now()
        if remaining > 0:
            await self.ctx.clock.sleep(remaining)
        self.request_stop(f"time budget reached ({seconds:g} s)", graceful=False)

    async def _shutdown(self) -> None:
        tasks = list(self._tasks)
        for pool in self._workers.values():
            tasks.extend(pool)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name, q in getattr(self, "_queues", {}).items():
            while not q.empty():
                item: WorkItem = q.get_nowait()
                self.ctx.emit(
                    Kind.ITEM_DROPPED,
                    stage=name,
                    item_id=item.item_id,
                    reason="run stopped while queued",
                )
        self._job_items.clear()
        self.state = "stopped"

    async def _source(self) -> None:
        """Make jobs while a slot is free, until stopped, out of budget, or winding down."""
        while not self._stop_source.is_set():
            await self._resume.wait()
            await self._slots.acquire()
            if not self._may_start_job():
                self._slots.release()
                break
            try:
                payload = await self.workflow.make_job(self.ctx)
            except Exception as err:  # the job source must not die silently (a hung run)
                self._slots.release()
                self._job_failed(err)
                break
            if payload is None:  # nothing to do right now; the workflow said so
                self._slots.release()
                await self.ctx.clock.sleep(0.1)
                continue
            self._start_job(payload)

    def _may_start_job(self) -> bool:
        """False once the source should end: a stop was asked, the budget is spent, or too
        little time is left (then the jobs in flight finish and the deadline ends the run)."""
        if self._stop_source.is_set():
            return False
        reason = self.ctx.tracker.exhausted()
        if reason is not None:
            self.request_stop(reason, graceful=True)
            return False
        return not self._winding_down()

    def _job_failed(self, err: Exception) -> None:
        self.ctx.emit(
            Kind.ERROR,
            reason=f"the workflow could not make a job: {type(err).__name__}: {err}",
            data={"traceback": traceback.format_exc(limit=8)},
        )
        self.request_stop(f"the workflow could not make a job ({err})", graceful=True)

    def _start_job(self, payload: Any) -> None:
        """A new job: saved state first (``on_job``), then its first item, stamped with both
        pool counters, on the entry stage's queue."""
        ctx = self.ctx
        if self.on_job is not None:
            self.on_job()
        job_id = ctx.new_id("j")
        self._job_items[job_id] = 0
        self._enqueue(
            WorkItem(
                item_id=ctx.new_id("i"),
                stage=self.entry,
                payload=payload,
                version_stamp=ctx.pool.pool_version,
                frontier_stamp=ctx.pool.frontier_version,
                created_at=ctx.now(),
                job_id=job_id,
            )
        )

    def _winding_down(self) -> bool:
        """True (and a ``wind_down`` event) once too little time is left to start a job."""
        if self.wind_down is None or self.config.seconds is None:
            return False
        remaining = self.config.seconds - self.ctx.now()
        reason = self.wind_down.stop_reason(remaining)
        if reason is None:
            return False
        self.wound_down_at = self.ctx.now()
        self.ctx.emit(
            Kind.WIND_DOWN,
            reason=reason,
            data={
                "margin_s": self.wind_down.margin(),
                "remaining_s": remaining,
                "jobs_in_flight": len(self._job_items),
            },
        )
        return True

    def _enqueue(self, item: WorkItem) -> None:
        item.enqueued_at = self.ctx.now()
        self._job_items[item.job_id] = self._job_items.get(item.job_id, 0) + 1
        q = self._queues[item.stage]
        q.put_nowait(item)  # unbounded by design: the job bound caps what is in flight
        self.ctx.emit(
            Kind.ITEM_ENQUEUED,
            stage=item.stage,
            item_id=item.item_id,
            version_stamp=item.version_stamp,
            frontier_stamp=item.frontier_stamp,
            data={"queue_depth": q.qsize(), "job_id": item.job_id},
        )

    def _item_finished(self, item: WorkItem) -> None:
        left = self._job_items.get(item.job_id, 0) - 1
        if left > 0:
            self._job_items[item.job_id] = left
            return
        self._job_items.pop(item.job_id, None)
        self._slots.release()
        if self._stop_source.is_set() and not self._job_items:
            self._finished.set()

    # -- workers ------------------------------------------------------------------------------
    def _reconcile(self, stage: str) -> None:
        pool = self._workers[stage]
        for t in [t for t in pool if t.done()]:
            del pool[t]
        while len(pool) < self.targets[stage]:
            task = asyncio.create_task(self._worker(stage), name=f"flashevolve-{stage}")
            pool[task] = False
        excess = len(pool) - self.targets[stage]
        for task, busy in list(pool.items()):
            if excess <= 0:
                break
            if not busy:  # idle: waiting on the queue, safe to cancel (no item is lost)
                task.cancel()
                del pool[task]
                excess -= 1

    async def _worker(self, stage: str) -> None:
        me = asyncio.current_task()
        if me is None:
            raise RuntimeError("a stage worker runs as an asyncio task")
        q = self._queues[stage]
        pool = self._workers[stage]
        while True:
            if len(pool) > self.targets[stage] and not pool.get(me, False):
                pool.pop(me, None)  # retire: the stage was shrunk while this worker was busy
                return
            item: WorkItem = await q.get()
            await self._resume.wait()
            pool[me] = True
            self._busy[stage] += 1
            try:
                await self._process(stage, item)
            finally:
                self._busy[stage] -= 1
                if me in pool:
                    pool[me] = False
                self._item_finished(item)

    async def _process(self, stage: str, item: WorkItem) -> None:
        ctx, spec = self.ctx, self.specs[stage]
        lag = ctx.pool.pool_version - item.version_stamp
        flag = ctx.pool.frontier_version - item.frontier_stamp
        self._emit_dequeued(stage, item, lag, flag)
        stale = (lag if self.config.staleness_counter == "pool" else flag) > 0
        checked = spec.check_staleness and stale and not item.patched
        if checked and not await self._apply_staleness(stage, item, lag, flag):
            return
        t0 = ctx.now()
        outputs = await self._outputs(spec, item)
        self._done_count[stage] += 1
        ctx.emit(
            Kind.ITEM_DONE,
            stage=stage,
            item_id=item.item_id,
            latency_s=ctx.now() - t0,
            data={"outputs": len(outputs)},
        )
        for next_stage, payload in outputs:
            self._forward(item, stage, next_stage, payload)

    def _emit_dequeued(self, stage: str, item: WorkItem, lag: int, flag: int) -> None:
        self.ctx.emit(
            Kind.ITEM_DEQUEUED,
            stage=stage,
            item_id=item.item_id,
            version_stamp=item.version_stamp,
            frontier_stamp=item.frontier_stamp,
            lag=lag,
            frontier_lag=flag,
            data={
                "queue_depth": self._queues[stage].qsize(),
                "wait_s": self.ctx.now() - item.enqueued_at,
            },
        )

    async def _outputs(self, spec: StageSpec, item: WorkItem) -> Any:
        """The handler's ``(next_stage, payload)`` pairs; none when it stalled or failed (one
        bad item must not take the run down: the failure is an ``error`` event)."""
        ctx, stage = self.ctx, spec.name
        try:
            return await self._handle(spec, item)
        except _Stalled:
            ctx.emit(Kind.ITEM_DROPPED, stage=stage, item_id=item.item_id, reason="watchdog")
        except asyncio.CancelledError:
            raise
        except Exception as err:
            ctx.emit(
                Kind.ERROR,
                stage=stage,
                item_id=item.item_id,
                reason=f"{type(err).__name__}: {err}",
                data={"traceback": traceback.format_exc(limit=8)},
            )
        return []

    def _forward(self, item: WorkItem, stage: str, next_stage: str, payload: Any) -> None:
        """One output of ``item`` onto the next stage's queue, with ``item``'s stamps."""
        if next_stage not in self.specs:
            raise ValueError(f"stage {stage!r} emitted to unknown stage {next_stage!r}")
        self._enqueue(
            WorkItem(
                item_id=self.ctx.new_id("i"),
                stage=next_stage,
                payload=payload,
                version_stamp=item.version_stamp,
                frontier_stamp=item.frontier_stamp,
                created_at=item.created_at,
                job_id=item.job_id,
                patched=item.patched,
            )
        )

    async def _handle(self, spec: StageSpec, item: WorkItem) -> Any:
        """Run the stage's handler as its own task, watched for progress."""
        if self.watchdog is None:
            return await spec.handler(item, self.ctx)
        task = asyncio.ensure_future(spec.handler(item, self.ctx))
        self.watchdog.track(item.item_id, spec.name, task, self.ctx.now())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if self.watchdog.release(item.item_id):
                raise _Stalled from None  # the watchdog cancelled it: an item failure
            # The worker itself is being cancelled (shutdown): take the handler along, and wait
            # until it has unwound, so its requests are cancelled before the run says it ended.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            self.watchdog.release(item.item_id)

    async def _apply_staleness(self, stage: str, item: WorkItem, lag: int, flag: int) -> bool:
        """Ask the policy about a stale item; returns False when the item is dropped."""
        view = self.workflow.stale_view(item, self.ctx, lag=lag, frontier_lag=flag)
        decision = await self.judge_stale(view, stage=stage)
        return apply_decision(self.workflow, item, decision, self.ctx, stage=stage)

    async def judge_stale(self, view: StaleItem, *, stage: str) -> StaleDecision:
        """The policy's decision on one stale piece of work, logged as ``stale_detected``.

        Stages with ``check_staleness`` come here for every stale item; a workflow that judges
        finer-grained work inside a handler (ACE: each delta operation of a batch) calls it
        through ``ctx.runtime``.  A view the workflow marked ``clean`` (stale by the counter,
        but nothing it depends on changed) is accepted without asking the policy.
        """
        return await judge(self.policy, view, self.ctx, stage=stage)


class _Stalled(Exception):
    """The watchdog cancelled an item."""
