"""Running an Evolver in a background thread, so a notebook stays responsive: start, wait,
stop, pause, resume, and live changes to the worker counts and the job bound.

``BackgroundRun`` is mixed into :class:`flashevolve.Evolver`, which owns the state it uses
(``run()``, ``runtime``, ``state``, ``name``, ``summary()``) and calls :meth:`_init_background`
from its ``__init__`` to set up the thread/loop handles and the stop/pause flags.  Everything that touches the run from another
thread goes through :meth:`_in_loop`, which posts it to the run's own event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Self

from flashevolve.runtime.clock import cancel_all_tasks

TERMINAL = ("finished", "stopped", "failed")


class BackgroundRun:
    """Background-thread control for :class:`~flashevolve.Evolver` (see the module doc)."""

    # provided by Evolver
    name: str
    state: str
    runtime: Any
    run: Callable[[], Coroutine[Any, Any, dict[str, Any]]]
    summary: Callable[[], dict[str, Any]]

    workflow: Any
    config: Any

    def _init_background(self) -> None:
        """The handles of a background run and the flags stop()/pause() leave for it."""
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
        self._active = False  # inside run(), in whichever thread

    # -- live control (any thread) --------------------------------------------------------------
    def set_workers(self, **counts: int) -> None:
        """Change worker counts while the run goes on, from any thread (a notebook cell):
        ``ev.set_workers(validate=8)``; GEPA's ``evaluate`` sets gate and validate.  Before the
        run starts this sets where it starts.  Each change is a ``workers_changed`` event."""
        from flashevolve.runtime.scheduler import resolve_workers

        wanted = resolve_workers(counts, self.workflow)
        self._check_live_change("worker counts")
        self.config.workers.update(wanted)  # also where a run not started yet begins
        if self.runtime is None:
            return

        def apply() -> None:
            for stage, n in wanted.items():
                self.runtime.set_workers(stage, n, reason="set by user")

        self._in_loop(apply)

    def set_max_in_flight(self, n: int) -> None:
        """Change the bound on jobs in flight while the run goes on, from any thread; lowering
        it interrupts nothing (new jobs wait until enough have finished).  A
        ``job_bound_changed`` event."""
        from flashevolve.errors import ConfigError

        if int(n) < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {n}")
        self._check_live_change("the job bound")
        self.config.max_in_flight = int(n)
        if self.runtime is not None:
            self._in_loop(lambda: self.runtime.set_max_in_flight(int(n), reason="set by user"))

    def _check_live_change(self, what: str) -> None:
        if self.config.mode == "sync":
            raise RuntimeError(
                f"a sync run keeps one job and one worker per stage: {what} is fixed"
            )
        if self.state in TERMINAL:
            raise RuntimeError(f"the run is {self.state}: {what} can no longer change")

    # -- running in a background thread --------------------------------------------------------
    def start(self) -> Self:
        """Run in a background thread with its own event loop; returns at once."""
        if not self._done.is_set():
            raise RuntimeError("this evolver is already running in the background")
        if self._active:
            raise RuntimeError("this evolver is already running")
        self._error = None
        self._stop_requested = None
        ready = threading.Event()
        done = self._done = threading.Event()

        def target() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._main = loop.create_task(self.run(), name=f"flashevolve-run-{self.name}")
            self._loop = loop
            ready.set()
            try:
                loop.run_until_complete(self._main)
            except asyncio.CancelledError as err:
                if self._stop_requested is None:  # nobody asked for it: report it
                    self._error = err
                if self.state not in TERMINAL:  # cancelled before the run got going
                    self.state = "stopped"
            except BaseException as err:  # surfaced by wait()
                self._error = err
            finally:
                try:
                    # Owned work is cancelled by the runtime; this catches anything a plug-in
                    # started on its own, so no task is destroyed while pending.
                    cancel_all_tasks(loop)
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    # asyncio.to_thread (e.g. stopping a server process) uses the loop's default
                    # executor: join its threads so none outlives the run
                    loop.run_until_complete(loop.shutdown_default_executor())
                finally:
                    asyncio.set_event_loop(None)
                    loop.close()
                    done.set()

        self._thread = threading.Thread(target=target, name=f"flashevolve-{self.name}", daemon=True)
        self.state = "running"
        self._thread.start()
        ready.wait()
        return self

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the background run ends; re-raises its exception with its traceback.

        An interrupt (Ctrl-C, the notebook's stop button) while waiting stops the run hard and
        re-raises ``KeyboardInterrupt`` once it has wound down.
        """
        if self._thread is None:
            raise RuntimeError("nothing to wait for: call start() first")
        try:
            finished = self._done.wait(timeout)
        except KeyboardInterrupt:
            self.stop(graceful=False)
            if self._done.wait(30):
                self._thread.join(5)
            raise
        if not finished:
            raise TimeoutError(f"the run is still going after {timeout} s")
        self._thread.join(5)  # past its last line already: returns at once
        if self._error is not None:
            raise self._error
        return self.summary()

    def stop(self, graceful: bool = False) -> None:
        """Stop the run: new work stops at once; in-flight work finishes only if ``graceful``.

        A hard stop also cancels a run that is still evaluating its seed or opening backends.
        """
        first = self._stop_requested is None
        self._stop_requested = graceful if first else self._stop_requested and graceful
        self._pause_pending = False
        self._in_loop(lambda: self._stop_here(graceful, first))
        self.state = "stopped" if self.state in ("running", "paused") else self.state

    def _stop_here(self, graceful: bool, first: bool) -> None:
        """Runs on the run's loop thread."""
        rt = self.runtime
        if rt is not None and rt.state != "created":  # its run() has begun: it can stop itself
            rt.request_stop("stopped by user", graceful=graceful)
            rt.resume()  # a paused run must wake up to wind down
        main = self._main
        if not graceful and first and main is not None and not main.done():
            main.cancel()  # cuts the seed evaluation short; the runtime cleans up its workers

    def pause(self) -> None:
        """Start no new work; what is in flight finishes (the queues keep their items)."""
        self._pause_pending = True
        self._in_loop(self._apply_pause)
        self.state = "paused" if self.state == "running" else self.state

    def _apply_pause(self) -> None:
        rt = self.runtime
        if self._pause_pending and rt is not None and rt.state == "running":
            rt.pause()
            self._pause_pending = False
        # otherwise the run has not begun; _on_event applies the pause once it has

    def resume_run(self) -> None:
        """Undo :meth:`pause`."""
        self._pause_pending = False
        self._in_loop(
            lambda: (
                self.runtime.resume()
                if self.runtime is not None and self.runtime.state == "paused"
                else None
            )
        )
        self.state = "running" if self.state == "paused" else self.state

    def _in_loop(self, fn: Any) -> None:
        """Call ``fn`` on the run's loop thread: posted there for a background run, called
        directly otherwise (``await run()`` in the caller's own loop)."""
        loop = self._loop
        background = self._thread is not None and not self._done.is_set()
        if (
            background
            and loop is not None
            and not loop.is_closed()
            and threading.current_thread() is not self._thread
        ):
            try:
                loop.call_soon_threadsafe(fn)
                return
            except RuntimeError:  # the loop closed in between: the run is over
                return
        fn()
