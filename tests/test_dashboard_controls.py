"""The dashboard's pause / resume button and the notebook chart renderer, without a browser
(``test_lab_browser.py`` drives both in JupyterLab)."""

from __future__ import annotations

from typing import Any

import altair as alt

from flashevolve.views.renderer import in_jupyter_kernel, use_offline_charts
from flashevolve.views.widgets import Dashboard


class PausableFake:
    """A source that pauses and resumes the way an Evolver does: its state says so at once."""

    name = "pausable"

    def __init__(self) -> None:
        self.state = "running"
        self.calls: list[str] = []

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "mode": "async", "state": self.state}

    def pause(self) -> None:
        self.calls.append("pause")
        self.state = "paused"

    def resume_run(self) -> None:
        self.calls.append("resume")
        self.state = "running"


def test_pause_button_pauses_resumes_and_follows_the_run():
    src = PausableFake()
    board = Dashboard(src, mode="manual")
    control = board.panels[0].pause
    assert control is not None and control.button.disabled  # no status yet: nothing to pause
    board.refresh()
    assert control.button.description == "pause" and not control.button.disabled
    control.button.click()
    assert src.calls == ["pause"] and control.button.description == "resume"
    board.refresh()
    assert board.snapshot()["sources"][0]["state"] == "paused"
    control.button.click()
    assert src.calls == ["pause", "resume"] and control.button.description == "pause"
    src.state = "paused"  # paused from code (evolver.pause()): the button follows
    board.refresh()
    assert control.button.description == "resume"
    src.state = "stopped"
    board.refresh()
    assert control.button.disabled
    control.button.click()  # a disabled button's click (e.g. a stale page) changes nothing
    assert src.calls == ["pause", "resume"]


def test_no_pause_button_for_read_only_sources_or_without_controls():
    board = Dashboard(lambda: {"state": "running"}, PausableFake(), mode="manual", controls=False)
    assert all(panel.pause is None for panel in board.panels)


def test_offline_chart_renderer_only_inside_a_kernel():
    before = alt.renderers.active
    assert not in_jupyter_kernel()
    assert use_offline_charts() is False and use_offline_charts(force=True) is False
    assert alt.renderers.active == before
