"""Background running, the way a notebook uses it: ``start()`` returns at once, frames and the
dashboard are read while the run goes on, ``pause``/``resume_run``/``stop`` steer it, and
afterwards nothing is left behind (threads, asyncio tasks, server processes).

Every run here talks to a real HTTP server on 127.0.0.1: the project's scripted server (in a
thread of this process) or, for the ``llama`` test, the embedded llama-server process.  Waiting
is readiness polling with a bounded timeout (``_until``); no test asserts on durations.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import flashevolve
from flashevolve import Evolver
from flashevolve.backends.server import LognormalLatency, ScriptedResponder, serve_in_thread
from flashevolve.backends.sim import SimulatedTask
from flashevolve.errors import ConfigError
from flashevolve.views.widgets import Dashboard

POLL_S = 0.05
LIMIT_S = 30.0


def _until(predicate: Callable[[], Any], what: str, limit_s: float = LIMIT_S) -> Any:
    """Poll ``predicate`` every 50 ms until it is truthy; fail after ``limit_s`` (readiness, not
    timing: the bound only keeps a broken run from hanging the suite)."""
    deadline = time.monotonic() + limit_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)  # readiness polling of a real run, bounded by limit_s; not timing


def _child_pids() -> set[int]:
    """Live child processes of this test process (every thread's children), from /proc."""
    pids: set[int] = set()
    for task_dir in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            text = (task_dir / "children").read_text()
        except OSError:
            continue
        pids.update(int(p) for p in text.split())
    return {p for p in pids if _alive(p)}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left


def _thread_names() -> dict[int | None, str]:
    return {t.ident: t.name for t in threading.enumerate()}


#: Process-wide by design, not per run: the one thread that spawns server processes must outlive
#: them (their parent-death signal is tied to it), see flashevolve/backends/process.py.
SINGLETON_THREADS = frozenset({"flashevolve-spawner"})


def _assert_no_leftovers(before: dict[int | None, str], evolver: Evolver) -> None:
    """Same threads as before the run (polled: a joined daemon may take a moment to unlist),
    the run's loop closed with no pending task."""

    def extra() -> dict[int | None, str]:
        now = _thread_names()
        return {k: v for k, v in now.items() if k not in before and v not in SINGLETON_THREADS}

    try:
        _until(lambda: not extra(), "background threads to finish", limit_s=10)
    except AssertionError:
        raise AssertionError(f"leftover threads: {sorted(extra().values())}") from None
    loop = evolver._loop
    if loop is not None:
        assert loop.is_closed(), "the background event loop was not closed"
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        assert not pending, f"pending asyncio tasks after the run: {pending}"


@pytest.fixture
def scripted() -> Iterator[tuple[str, ScriptedResponder]]:
    responder = ScriptedResponder(None, latency=LognormalLatency(0.05, 1.0))
    with serve_in_thread(responder) as base_url:
        yield base_url, responder


def _evolver(base_url: str, **kwargs: Any) -> Evolver:
    llm = flashevolve.backends.openai(base_url, "scripted", api_key_env=None)
    kwargs.setdefault("mode", "async")
    kwargs.setdefault("budget", 600)  # far beyond any test: the tests stop the run themselves
    return Evolver(SimulatedTask(n_train=20, n_val=10), llm, **kwargs)


def _started(ev: Evolver) -> int:
    return sum(1 for e in ev.event_list() if e.kind == "request_started")


def test_background_run_is_observable_steerable_and_leaves_nothing(scripted):
    base_url, responder = scripted
    before_threads = _thread_names()  # the server's thread is already here: it is ours
    before_children = _child_pids()
    ev = _evolver(base_url, name="bg")

    assert ev.start() is ev  # returns at once, chainable
    _until(lambda: ev.status()["proposals"] > 0, "the first proposal")

    # frames while it runs: each a consistent snapshot with its usual columns
    events = ev.events
    assert isinstance(events, pl.DataFrame) and events.height > 0
    assert events["kind"].to_list()[0] == "run_started"
    reqs = ev.requests
    assert reqs.height > 0 and reqs["request_id"].n_unique() == reqs.height
    assert set(reqs["outcome"].unique()) <= {"finished", "failed", "cancelled", "in_flight"}
    assert ev.artifacts.height >= 1  # at least the seed
    tp = ev.throughput(window=1.0)
    assert {"series", "per_min"} <= set(tp.columns) and tp.height > 0
    assert "decision" in ev.staleness.columns

    # dashboard state, polled by hand (the same refresh the widget's thread runs)
    board = Dashboard(ev, mode="manual")
    shown = board.refresh()["sources"][0]
    assert shown["state"] == "running" and shown["proposals"] >= 1
    assert set(shown["stages"]) == {"rollout", "propose", "gate", "validate"}
    # and the live one, polling on its own thread
    live = ev.dashboard(refresh_s=0.2)
    _until(lambda: live.snapshot()["refreshes"] >= 2, "two dashboard refreshes")

    # pause: no new work starts, what is in flight drains
    ev.pause()
    _until(lambda: ev.runtime is not None and ev.runtime.state == "paused", "the pause")
    assert ev.status()["state"] == "paused"
    _until(
        lambda: ev.status()["in_flight"] == 0 and responder.in_flight == 0,
        "in-flight requests to drain while paused",
    )
    started_while_paused = _started(ev)
    ev.resume_run()
    _until(lambda: _started(ev) > started_while_paused, "new requests after resume_run()")
    assert ev.status()["state"] == "running"

    ev.stop()
    summary = ev.wait(timeout=LIMIT_S)
    assert ev.state == "stopped" and summary["proposals"] >= 1
    assert ev.events["kind"].to_list()[-1] == "run_finished"
    assert ev.requests.filter(pl.col("outcome") == "in_flight").height == 0
    # the live dashboard notices the terminal state and stops polling by itself
    _until(lambda: not live.running, "the dashboard to stop polling")
    assert live.snapshot()["sources"][0]["state"] == "stopped"
    _until(lambda: responder.in_flight == 0, "the server to finish its handlers")
    _assert_no_leftovers(before_threads, ev)
    assert _child_pids() == before_children


def test_workers_and_job_bound_change_from_the_notebook_thread(scripted):
    base_url, _ = scripted
    ev = _evolver(base_url, name="live", max_in_flight=8)
    ev.set_workers(rollout=3)  # before the start: where the run begins
    with pytest.raises(ConfigError, match="unknown stages"):
        ev.set_workers(rolout=2)
    with pytest.raises(ConfigError, match="at least one worker"):
        ev.set_workers(validate=0)
    ev.start()
    _until(lambda: ev.status()["proposals"] > 0, "the first proposal")
    ev.set_workers(evaluate=3)  # GEPA's alias: gate and validate
    ev.set_max_in_flight(2)
    changed = lambda kind: ev.events.filter(  # noqa: E731
        (pl.col("kind") == kind) & (pl.col("reason") == "set by user")
    )
    _until(lambda: changed("workers_changed").height == 2, "the two worker changes")
    assert sorted(changed("workers_changed")["stage"].to_list()) == ["gate", "validate"]
    _until(lambda: changed("job_bound_changed").height == 1, "the job bound change")
    # the pipeline drains to the new bound and stays there
    _until(lambda: ev.runtime.status()["jobs_in_flight"] <= 2, "jobs in flight to drain")
    board = Dashboard(ev, mode="manual")
    shown = board.refresh()["sources"][0]
    assert shown["max_in_flight"] == 2 and shown["jobs_in_flight"] <= 2
    assert "jobs in flight / bound" in board.panels[0].counters.value
    # the dashboard's own controls go through the same calls
    controls = board.panels[0].controls
    controls.fields["rollout"].value = 2
    controls.bound.value = 3
    assert controls.apply() == "applied: rollout 2, jobs bound 3"
    _until(lambda: changed("job_bound_changed").height == 2, "the dashboard's job bound")
    _until(
        lambda: changed("workers_changed").filter(pl.col("stage") == "rollout").height == 1,
        "the dashboard's worker change",
    )
    assert ev.runtime.max_in_flight == 3 and ev.runtime.targets["rollout"] == 2
    started = next(e for e in ev.event_list() if e.kind == "run_started")
    assert started.data["workers"]["rollout"] == 3 and started.data["max_in_flight"] == 8
    ev.stop()
    ev.wait(timeout=LIMIT_S)
    with pytest.raises(RuntimeError, match="stopped"):
        ev.set_max_in_flight(4)
    with pytest.raises(RuntimeError, match="sync run"):
        _evolver(base_url, mode="sync").set_workers(validate=2)


def test_stop_right_after_start_stops_the_run(scripted):
    base_url, _ = scripted
    before = _thread_names()
    ev = _evolver(base_url, name="early-stop")
    ev.start()
    ev.stop()  # possibly before the runtime exists: must not be lost
    ev.wait(timeout=LIMIT_S)
    assert ev.state == "stopped"
    _assert_no_leftovers(before, ev)


def test_stop_during_the_seed_evaluation_is_immediate():
    """The seed's validation runs before the pipeline starts; a hard stop must cut it short
    (the server here would take 10 minutes to answer)."""
    responder = ScriptedResponder(None, latency=600.0)
    with serve_in_thread(responder) as base_url:
        before = _thread_names()
        ev = _evolver(base_url, name="stuck-seed")
        ev.start()
        _until(lambda: responder.in_flight > 0, "the seed evaluation to reach the server")
        ev.stop()
        ev.wait(timeout=LIMIT_S)
        assert ev.state == "stopped"
        _until(lambda: responder.in_flight == 0, "the server to see the requests cancelled")
        _assert_no_leftovers(before, ev)


def test_graceful_stop_lets_in_flight_work_finish(scripted):
    base_url, _ = scripted
    before = _thread_names()
    ev = _evolver(base_url, name="graceful")
    ev.start()
    _until(lambda: ev.status()["proposals"] > 0, "the first proposal")
    ev.stop(graceful=True)
    ev.wait(timeout=LIMIT_S)
    assert ev.state == "stopped"
    outcomes = ev.requests["outcome"].to_list()
    assert "cancelled" not in outcomes and "in_flight" not in outcomes
    _assert_no_leftovers(before, ev)


class _BrokenSeedTask(SimulatedTask):
    def seed_artifact(self) -> dict[str, str]:
        raise ValueError("no seed prompt configured (raised on purpose)")


def test_exception_in_background_surfaces_from_wait_with_its_traceback(scripted):
    base_url, _ = scripted
    before = _thread_names()
    llm = flashevolve.backends.openai(base_url, "scripted", api_key_env=None)
    ev = Evolver(_BrokenSeedTask(n_train=20, n_val=10), llm, budget=600, name="broken")
    ev.start()
    with pytest.raises(ValueError, match="raised on purpose") as info:
        ev.wait(timeout=LIMIT_S)
    frames = traceback.extract_tb(info.value.__traceback__)
    assert any(f.name == "seed_artifact" for f in frames), "the original frame is missing"
    assert ev.state == "failed"
    assert (ev.events["kind"] == "error").any()
    _assert_no_leftovers(before, ev)


def test_run_sync_inside_a_running_event_loop(scripted):
    """A notebook kernel already runs a loop; run_sync() must still block and return."""
    base_url, _ = scripted
    before = _thread_names()
    ev = _evolver(base_url, budget={"proposals": 3}, name="in-kernel")

    async def cell() -> dict[str, Any]:
        asyncio.get_running_loop()  # we are inside a loop, like a kernel cell
        return ev.run_sync()

    summary = asyncio.run(cell())
    assert summary["proposals"] >= 3 and ev.state == "finished"
    _assert_no_leftovers(before, ev)


def test_await_run_in_the_callers_loop(scripted):
    base_url, _ = scripted
    ev = _evolver(base_url, budget={"proposals": 3}, name="awaited")

    async def cell() -> dict[str, Any]:
        summary = await ev.run()
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"the run left tasks in the caller's loop: {leftover}"
        return summary

    summary = asyncio.run(cell())
    assert summary["proposals"] >= 3 and ev.state == "finished"


def test_keyboard_interrupt_in_wait_stops_the_run(scripted):
    """A kernel interrupt arrives as KeyboardInterrupt in the thread blocked in wait()."""
    base_url, _ = scripted
    before = _thread_names()
    ev = _evolver(base_url, name="interrupted")
    armed = threading.Event()

    def interrupt_when_running() -> None:
        armed.wait(LIMIT_S)
        _until(lambda: ev.status()["proposals"] > 0, "the first proposal")
        # a real SIGINT, like Jupyter's interrupt: it also wakes a blocking join()
        os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=interrupt_when_running, name="test-interrupter")
    # A kernel always handles SIGINT; a test runner started in the background may have inherited
    # "ignore SIGINT", so install Python's own handler for the length of the test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        helper.start()
        ev.start()
        with pytest.raises(KeyboardInterrupt):
            armed.set()
            ev.wait(timeout=LIMIT_S)
        helper.join(LIMIT_S)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert ev.state == "stopped"
    _assert_no_leftovers(before, ev)


@pytest.mark.llama
def test_background_run_on_the_local_model_leaves_no_server_process():
    from flashevolve.backends.llama_build import find_llama_server
    from flashevolve.tasks import get_task

    if find_llama_server() is None:
        pytest.skip("llama-server is not built: run `make llama-server` (make test builds it)")
    before_threads = _thread_names()
    before_children = _child_pids()
    task = get_task("ifeval-lite", n_train=3, n_val=2, max_tokens=16)
    ev = Evolver(task, "local", budget=600, name="local-bg")  # the evolver owns the server
    ev.start()
    server_pids = _until(lambda: _child_pids() - before_children, "llama-server to start", 180)
    _until(lambda: ev.status()["in_flight"] > 0 or ev.requests.height > 0, "a first request", 180)
    assert ev.status()["state"] == "running"
    ev.stop()
    ev.wait(timeout=120)
    assert ev.state == "stopped"
    for pid in server_pids:
        assert not _alive(pid), f"llama-server pid {pid} is still running"
    _assert_no_leftovers(before_threads, ev)


def test_run_virtual_inside_a_running_event_loop():
    """run_virtual() from a kernel cell: the virtual loop cannot nest in the kernel's loop."""
    before = _thread_names()
    llm = flashevolve.backends.simulated(profile="vllm-h100-qwen3-8b", seed=0)
    ev = Evolver(SimulatedTask(n_train=20, n_val=10), llm, budget=120, name="virtual")

    async def cell() -> dict[str, Any]:
        return ev.run_virtual()

    summary = asyncio.run(cell())
    assert ev.state == "finished" and summary["duration_s"] == pytest.approx(120, abs=1)
    assert summary["proposals"] > 0
    _assert_no_leftovers(before, ev)
