"""A live ipywidgets dashboard for one or more running evolvers.

A *source* is anything with ``.status() -> dict`` (and usually ``.name``), e.g. an ``Evolver``,
or a bare ``status_fn`` callable.  The dict follows the live-status contract in
:class:`LiveStatus`.  The dashboard polls every source at most once per ``refresh_s`` on a
daemon thread (or an asyncio task on the kernel's loop), so the notebook stays usable, and stops
by itself once every source is in a terminal state, or on :meth:`Dashboard.close`.
"""

from __future__ import annotations

import asyncio
import html
import threading
from collections.abc import Callable
from typing import Any, Literal

import ipywidgets as ipw
from pydantic import BaseModel, Field, ValidationError

from flashevolve.views.controls import TERMINAL_STATES, LiveControls, PauseControl

STATE_COLORS = {
    "running": "#2e7d32",
    "paused": "#f9a825",
    "stopped": "#616161",
    "finished": "#1565c0",
    "failed": "#c62828",
}
STALE_DECISIONS = ("accept", "patch", "merged", "discard")


class StageStatus(BaseModel):
    queue_depth: int = 0
    workers: int = 0
    busy: int = 0


class ServerLoad(BaseModel):
    running: int = 0
    waiting: int = 0
    kv_usage: float | None = None


class EndpointStatus(BaseModel):
    requests: int = 0  # answered there
    failed: int = 0
    state: str = "up"  # a router's (or a client's circuit's) latest word on it


class LiveStatus(BaseModel):
    """What ``source.status()`` returns; missing fields default so a starting run still shows."""

    name: str = ""
    mode: str = "?"
    state: str = "running"
    elapsed_s: float = 0.0
    stages: dict[str, StageStatus] = Field(default_factory=dict)
    in_flight: int = 0
    at_server: int | None = None  # of in_flight: at the server ...
    in_client: int = 0  # ... and waiting in the client (its cap on requests, a retry's backoff)
    utilization: float | None = None  # generated over attainable tokens/s (when known)
    jobs_in_flight: int = 0
    max_in_flight: int | None = None  # the job bound (moves under adaptive control)
    wind_down_at: float | None = None  # run clock when new jobs stopped before the deadline
    proposals: int = 0
    accepted: int = 0
    proposals_per_min: float = 0.0
    accepted_per_min: float = 0.0
    best_score: float | None = None
    stale: dict[str, int] = Field(default_factory=dict)
    pool_version: int = 0
    frontier_version: int = 0
    #: endpoint -> the server's latest report of its own load (servers that can tell)
    server_load: dict[str, ServerLoad] = Field(default_factory=dict)
    #: endpoint -> requests it answered and failed, and its state (shown with several endpoints)
    endpoints: dict[str, EndpointStatus] = Field(default_factory=dict)


def _status_fn(source: object) -> Callable[[], Any]:
    status: object = getattr(source, "status", None)
    if callable(status):
        return status
    if callable(source):
        return source
    raise TypeError(
        f"dashboard source {source!r} has no .status() method and is not callable; "
        "pass an Evolver or a function returning the live-status dict"
    )


def _fmt_elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _short_endpoint(endpoint: str) -> str:
    return endpoint.removeprefix("http://").removeprefix("https://").removesuffix("/v1")


def _endpoint_rows(endpoints: dict[str, EndpointStatus]) -> str:
    """One row per endpoint when requests went to several (a router): answered, failed, and
    whether it is out of the rotation."""
    if len(endpoints) < 2:
        return ""
    rows = []
    for endpoint, e in endpoints.items():
        state = "" if e.state in ("up", "closed") else f' · <b style="color:#c62828">{e.state}</b>'
        rows.append(
            f"<tr><td>endpoint {html.escape(_short_endpoint(endpoint))}</td><td align=right "
            f'data-fe="endpoint">{e.requests} answered · {e.failed} failed{state}</td></tr>'
        )
    return "".join(rows)


def _bar(busy: int, workers: int) -> str:
    share = 0.0 if workers <= 0 else min(1.0, busy / workers)
    return (
        '<div style="background:#eee;width:80px;height:10px;display:inline-block">'
        f'<div style="background:#4c78a8;width:{share * 100:.0f}%;height:10px"></div></div>'
    )


def _header_html(status: LiveStatus, name: str) -> str:
    color = STATE_COLORS.get(status.state, "#616161")
    return (
        f"<b>{html.escape(name)}</b> · {html.escape(status.mode)} · "
        f'<span data-fe="state" style="color:{color};font-weight:bold">'
        f"{html.escape(status.state)}</span>"
        f" · {_fmt_elapsed(status.elapsed_s)}"
    )


def _stages_html(status: LiveStatus) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(stage)}</td><td align=right>{s.queue_depth}</td>"
        f'<td align=right data-fe="workers-{html.escape(stage)}">{s.busy}/{s.workers}</td>'
        f"<td>{_bar(s.busy, s.workers)}</td></tr>"
        for stage, s in status.stages.items()
    )
    return (
        '<table style="font-size:12px"><tr><th align=left>stage</th><th>queue</th>'
        f"<th>busy/workers</th><th></th></tr>{rows}</table>"
        if rows
        else "<i>no stages yet</i>"
    )


def _counters_html(status: LiveStatus, stale: dict[str, int]) -> str:
    best = "–" if status.best_score is None else f"{status.best_score:.4f}"
    stale_text = " · ".join(f"{d} {n}" for d, n in stale.items())
    return (
        '<table style="font-size:12px">'
        "<tr><td>requests at server / waiting in client</td><td align=right data-fe=in_flight><b>"
        f"{status.in_flight - status.in_client if status.at_server is None else status.at_server}"
        f"</b> / {status.in_client}"
        + ("" if status.utilization is None else f" · utilization {status.utilization:.0%}")
        + "</td></tr>"
        f"<tr><td>jobs in flight / bound</td><td align=right>{status.jobs_in_flight} / "
        f"{'–' if status.max_in_flight is None else status.max_in_flight}"
        + (
            ""
            if status.wind_down_at is None
            else f" · winding down since {_fmt_elapsed(status.wind_down_at)}: no new jobs"
        )
        + "</td></tr>"
        f"<tr><td>accepted</td><td align=right data-fe=accepted><b>{status.accepted} "
        f"({status.accepted_per_min:.2f}/min)</b></td></tr>"
        f"<tr><td>proposals</td><td align=right data-fe=proposals>{status.proposals} "
        f"({status.proposals_per_min:.1f}/min)</td></tr>"
        f"<tr><td>best val score</td><td align=right data-fe=best_score><b>{best}</b></td></tr>"
        f"<tr><td>pool / frontier version</td><td align=right>{status.pool_version} / "
        f"{status.frontier_version}</td></tr>"
        f"<tr><td>stale work</td><td align=right>{stale_text}</td></tr>"
        + "".join(
            f"<tr><td>server {html.escape(_short_endpoint(endpoint))}</td><td align=right>"
            f"{load.running} running · {load.waiting} waiting"
            + ("" if load.kv_usage is None else f" · KV {load.kv_usage:.0%}")
            + "</td></tr>"
            for endpoint, load in status.server_load.items()
        )
        + _endpoint_rows(status.endpoints)
        + "</table>"
    )


def _shown(status: LiveStatus, name: str, stale: dict[str, int]) -> dict[str, Any]:
    """What the panel shows, as plain data (what ``show()`` returns)."""
    return {
        "name": name,
        "mode": status.mode,
        "state": status.state,
        "elapsed_s": status.elapsed_s,
        "stages": {k: v.model_dump() for k, v in status.stages.items()},
        "in_flight": status.in_flight,
        "at_server": status.at_server,
        "in_client": status.in_client,
        "utilization": status.utilization,
        "jobs_in_flight": status.jobs_in_flight,
        "max_in_flight": status.max_in_flight,
        "wind_down_at": status.wind_down_at,
        "proposals": status.proposals,
        "accepted": status.accepted,
        "proposals_per_min": status.proposals_per_min,
        "accepted_per_min": status.accepted_per_min,
        "best_score": status.best_score,
        "stale": stale,
        "pool_version": status.pool_version,
        "frontier_version": status.frontier_version,
        "server_load": {k: v.model_dump() for k, v in status.server_load.items()},
        "endpoints": {k: v.model_dump() for k, v in status.endpoints.items()},
        "error": None,
    }


class SourcePanel:
    """The widgets of one source: a header line, a per-stage table and a counters table, and
    -- when the source can take them (an ``Evolver``) -- a pause / resume button and live worker
    and job-bound controls.

    Cells that show a number carry a ``data-fe`` attribute naming it (``data-fe="proposals"``),
    and the widgets carry ``fe-*`` classes, so a page can be read and driven without guessing
    from the layout (the JupyterLab browser test does).
    """

    def __init__(self, name: str, target: Any = None) -> None:
        self.name = name
        self.header = ipw.HTML()
        self.stages = ipw.HTML()
        self.counters = ipw.HTML()
        self.pause = PauseControl(target) if PauseControl.supports(target) else None
        self.controls = LiveControls(target) if LiveControls.supports(target) else None
        top: list[ipw.Widget] = [self.header]
        if self.pause is not None:
            top.append(self.pause.button)
        parts: list[ipw.Widget] = [
            ipw.HBox(top, layout=ipw.Layout(align_items="center")),
            self.stages,
            self.counters,
        ]
        if self.controls is not None:
            parts.append(self.controls.widget)
        self.widget = ipw.VBox(
            parts,
            layout=ipw.Layout(border="1px solid #ddd", padding="6px 10px", margin="0 8px 0 0"),
        )
        self.widget.add_class("fe-panel")
        self.shown: dict[str, Any] = {"name": name, "state": "pending"}
        self.header.value = f"<b>{html.escape(name)}</b> · waiting for the first status"

    def show(self, status: LiveStatus) -> dict[str, Any]:
        name = status.name or self.name
        stale = {d: int(status.stale.get(d, 0)) for d in STALE_DECISIONS}
        self.header.value = _header_html(status, name)
        self.stages.value = _stages_html(status)
        self.counters.value = _counters_html(status, stale)
        self.shown = _shown(status, name, stale)
        if self.pause is not None:
            self.pause.sync(status)
        if self.controls is not None:
            self.controls.sync(status)
        return self.shown

    def show_error(self, message: str) -> dict[str, Any]:
        # a source that fails to report must not take the other panels down with it
        self.header.value = (
            f"<b>{html.escape(self.name)}</b> · "
            f'<span style="color:#c62828">status unavailable: {html.escape(message)}</span>'
        )
        self.shown = {**self.shown, "error": message}
        return self.shown


class Dashboard:
    """Live panels, side by side, one per source; display it as the last line of a cell.

    ``refresh_s`` is the polling period (at least 0.2 s).  ``mode`` picks how polling runs:
    "thread" (a daemon thread; the default, it keeps updating while a cell blocks), "asyncio"
    (a task on the running loop, e.g. the kernel's) or "manual" (only :meth:`refresh` updates;
    tests use this).  Polling starts when the dashboard is displayed or :meth:`start` is called.
    ``controls`` adds worker and job-bound fields to the panel of every source that can change
    them (an ``Evolver``; see :class:`LiveControls`).
    """

    def __init__(
        self,
        *sources: Any,
        refresh_s: float = 1.0,
        mode: Literal["thread", "asyncio", "manual"] = "thread",
        controls: bool = True,
    ) -> None:
        if not sources:
            raise TypeError("Dashboard needs at least one source (an Evolver or a status function)")
        if mode not in ("thread", "asyncio", "manual"):
            raise ValueError(f"mode must be 'thread', 'asyncio' or 'manual', got {mode!r}")
        self.refresh_s = max(0.2, float(refresh_s))
        self.mode = mode
        self._fns = [_status_fn(s) for s in sources]
        names = [str(getattr(s, "name", "") or f"run {i + 1}") for i, s in enumerate(sources)]
        self.panels = [
            SourcePanel(n, s if controls else None) for n, s in zip(names, sources, strict=True)
        ]
        self.widget = ipw.HBox([p.widget for p in self.panels])
        self.widget.add_class("fe-dashboard")
        self.refreshes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._shown_in_cell: int | None = None  # see _ipython_display_

    # -- polling -----------------------------------------------------------------------------
    def refresh(self) -> dict[str, Any]:
        """Poll every source once, update the widgets, and return :meth:`snapshot`."""
        with self._lock:
            for fn, panel in zip(self._fns, self.panels, strict=True):
                try:
                    status = LiveStatus.model_validate(fn())
                except ValidationError as exc:
                    first = exc.errors()[0]
                    field = ".".join(str(p) for p in first["loc"])
                    panel.show_error(f"field {field!r}: {first['msg']}")
                except Exception as exc:  # noqa: BLE001 -- shown in the panel, polling goes on
                    panel.show_error(f"{type(exc).__name__}: {exc}")
                else:
                    panel.show(status)
            self.refreshes += 1
            if self.all_terminal:
                self._stop.set()
            return self._snapshot()

    @property
    def all_terminal(self) -> bool:
        return all(p.shown.get("state") in TERMINAL_STATES for p in self.panels)

    @property
    def running(self) -> bool:
        alive_thread = self._thread is not None and self._thread.is_alive()
        alive_task = self._task is not None and not self._task.done()
        return alive_thread or alive_task

    def start(self) -> Dashboard:
        """Begin polling in the background (no-op when already polling or in manual mode)."""
        if self.mode == "manual" or self.running or self._stop.is_set():
            return self
        if self.mode == "asyncio":
            loop = asyncio.get_running_loop()  # raises outside a loop: use mode="thread" there
            self._task = loop.create_task(self._poll_async())
        else:
            self._thread = threading.Thread(target=self._poll_thread, name="fe-dashboard")
            self._thread.daemon = True
            self._thread.start()
        return self

    def _poll_thread(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            # Event.wait doubles as the period and as the prompt wake-up on close()
            if self._stop.wait(self.refresh_s):
                break

    async def _poll_async(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            await asyncio.sleep(self.refresh_s)

    def close(self) -> None:
        """Stop polling; the widgets stay on screen with their last values."""
        self._stop.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.refresh_s + 1.0)

    # -- reading -----------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        return {
            "refreshes": self.refreshes,
            "stopped": self._stop.is_set(),
            "sources": [dict(p.shown) for p in self.panels],
        }

    def snapshot(self) -> dict[str, Any]:
        """What the panels show right now: one dict per source, in display order."""
        with self._lock:
            return self._snapshot()

    def show(self) -> Dashboard:
        """Display the panels (in a notebook; nothing outside IPython) and start polling."""
        try:
            from IPython.display import display
        except ImportError:  # plain Python: nothing to show, polling still feeds snapshot()
            return self.start()
        display(self.widget)  # type: ignore[no-untyped-call]  # IPython leaves display unannotated
        self._shown_in_cell = _current_cell()
        return self.start()

    def _ipython_display_(self) -> None:
        # `ev.dashboard()` as a cell's last line shows the panels and then returns the board,
        # which the cell would display a second time: once per cell is what the user asked for
        if self._shown_in_cell is None or self._shown_in_cell != _current_cell():
            self.show()


def _current_cell() -> int | None:
    """The running cell's execution count in an IPython kernel, else None."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else int(shell.execution_count)


def dashboard(*sources: Any, refresh_s: float = 1.0, controls: bool = True) -> Dashboard:
    """Build a :class:`Dashboard`, show it (in a notebook) and start polling."""
    return Dashboard(*sources, refresh_s=refresh_s, controls=controls).show()


__all__ = [
    "Dashboard",
    "LiveControls",
    "LiveStatus",
    "PauseControl",
    "StageStatus",
    "TERMINAL_STATES",
    "dashboard",
]
