"""The live controls of a dashboard panel: pause / resume, and worker counts and the job bound.

Both act on a *target* that can take them (an ``Evolver``: its ``pause``/``resume_run``,
``set_workers`` and ``set_max_in_flight`` are safe to call from the dashboard's thread, which
is not the run's).  Each control is filled in and enabled from the live status the dashboard
polls, so what it offers always matches the run's state.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as ipw

if TYPE_CHECKING:
    from flashevolve.views.widgets import LiveStatus

TERMINAL_STATES = frozenset({"stopped", "finished", "failed"})


class PauseControl:
    """One button that pauses a running run and resumes a paused one.

    Pausing starts no new work while what is in flight finishes, so the run's requests in flight
    drain to zero; resuming starts work again.  The label follows the run's state as polled (the
    header shows it too), and the button is disabled before the run has begun and after it ended.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.button = ipw.Button(
            description="pause", icon="pause", disabled=True, layout=ipw.Layout(width="90px")
        )
        self.button.add_class("fe-pause")
        self.button.on_click(lambda _button: self.toggle())
        self.state = "pending"

    @staticmethod
    def supports(target: Any) -> bool:
        return callable(getattr(target, "pause", None)) and callable(
            getattr(target, "resume_run", None)
        )

    def _show(self) -> None:
        paused = self.state == "paused"
        self.button.description = "resume" if paused else "pause"
        self.button.icon = "play" if paused else "pause"
        self.button.disabled = self.state not in ("running", "paused")

    def sync(self, status: LiveStatus) -> None:
        self.state = status.state
        self._show()

    def toggle(self) -> str:
        """Pause a running run or resume a paused one; returns the state it asked for."""
        if self.state == "running":
            self.target.pause()
            self.state = "paused"
        elif self.state == "paused":
            self.target.resume_run()
            self.state = "running"
        self._show()  # at once: the next poll confirms it
        return self.state


class LiveControls:
    """Worker counts per stage and the job bound as number fields, with an "apply" button that
    calls ``target.set_workers(...)`` / ``target.set_max_in_flight(...)`` (thread-safe on an
    ``Evolver``; each change is a ``workers_changed`` / ``job_bound_changed`` event with reason
    "set by user").

    Only the fields the user edited since they were last filled in are sent: the adaptive
    controller may have moved the others meanwhile, and "apply" must not undo its moves.  The
    fields are filled from the first status and after every apply; the stage table above always
    shows the live counts.  Disabled for sync runs (one worker per stage is what sync means) and
    once the run has ended.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.fields: dict[str, ipw.BoundedIntText] = {}
        self.bound = ipw.BoundedIntText(
            min=1, max=100_000, description="jobs bound", layout=ipw.Layout(width="170px")
        )
        self.apply_button = ipw.Button(description="apply", layout=ipw.Layout(width="70px"))
        self.apply_button.on_click(lambda _button: self.apply())
        self.message = ipw.HTML()
        # class names a page (and the browser test) can find the controls by
        self.bound.add_class("fe-job-bound")
        self.apply_button.add_class("fe-apply")
        self.message.add_class("fe-message")
        self._row = ipw.HBox([])
        self.widget = ipw.VBox([self._row, ipw.HBox([self.bound, self.apply_button]), self.message])
        self._synced: dict[str, int] = {}  # stage -> worker count when last filled in
        self._synced_bound: int | None = None  # the job bound when last filled in
        self._filled = False

    @staticmethod
    def supports(target: Any) -> bool:
        return callable(getattr(target, "set_workers", None)) and callable(
            getattr(target, "set_max_in_flight", None)
        )

    def _fill(self, status: LiveStatus) -> None:
        for stage, s in status.stages.items():
            if stage not in self.fields:
                self.fields[stage] = ipw.BoundedIntText(
                    min=1, max=100_000, description=stage, layout=ipw.Layout(width="150px")
                )
                self.fields[stage].add_class(f"fe-workers-{stage}")
            self.fields[stage].value = max(1, s.workers)
            self._synced[stage] = self.fields[stage].value
        self._row.children = tuple(self.fields.values())
        if status.max_in_flight is not None:
            self.bound.value = status.max_in_flight
            self._synced_bound = status.max_in_flight
        self._filled = True

    def sync(self, status: LiveStatus) -> None:
        """Called with every status: fill the fields once, keep the enabled state current."""
        if not self._filled and status.stages:
            self._fill(status)
        live = status.mode != "sync" and status.state not in TERMINAL_STATES
        for w in (*self.fields.values(), self.bound, self.apply_button):
            w.disabled = not live
        if status.mode == "sync":
            self.message.value = "<i>sync run: one worker per stage, one job in flight</i>"

    def edited(self) -> tuple[dict[str, int], int | None]:
        """(worker counts, job bound) the user changed since the fields were filled in;
        nothing before the first status has filled them."""
        workers = {
            stage: int(f.value)
            for stage, f in self.fields.items()
            if stage in self._synced and f.value != self._synced[stage]
        }
        synced_bound = self._synced_bound
        bound = (
            int(self.bound.value)
            if synced_bound is not None and self.bound.value != synced_bound
            else None
        )
        return workers, bound

    def apply(self) -> str:
        """Send the edited values to the run; returns (and shows) what happened."""
        workers, bound = self.edited()
        done = []
        try:
            if workers:
                self.target.set_workers(**workers)
                done += [f"{stage} {n}" for stage, n in workers.items()]
            if bound is not None:
                self.target.set_max_in_flight(bound)
                done.append(f"jobs bound {bound}")
        except Exception as exc:  # noqa: BLE001 -- shown next to the button; the run goes on
            text = f"not applied: {exc}"
            self.message.value = f'<span style="color:#c62828">{html.escape(text)}</span>'
            return text
        text = "applied: " + ", ".join(done) if done else "nothing changed"
        self.message.value = html.escape(text)
        for stage, n in workers.items():
            self._synced[stage] = n
        if bound is not None:
            self._synced_bound = bound
        return text


__all__ = ["LiveControls", "PauseControl", "TERMINAL_STATES"]
