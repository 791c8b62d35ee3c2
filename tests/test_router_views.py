"""Per-endpoint numbers where people look: ``summary()``, the live status and dashboard, and the
offline report -- for a run over a router with one dead endpoint (simulated, virtual time)."""

from __future__ import annotations

from flashevolve import Evolver
from flashevolve.backends import simulated
from flashevolve.backends.router import Router
from flashevolve.backends.sim import SimulatedTask
from flashevolve.views.charts import dashboard_charts
from flashevolve.views.report import render_report
from flashevolve.views.widgets import Dashboard

VLLM = "vllm-h100-qwen3-8b"


def _run() -> tuple[Evolver, Router]:
    router = Router(
        [
            simulated(profile=VLLM, seed=0),
            simulated(profile=VLLM, seed=0, faults="rate=1,refuse"),
            simulated(profile=VLLM, seed=0, speed=2.0),
        ]
    )
    evolver = Evolver(
        SimulatedTask(seed=0, n_train=30, n_val=20),
        router,
        mode="async",
        budget={"seconds": 600},
        workers={"rollout": 8, "propose": 4, "evaluate": 8},
        max_in_flight=32,
    )
    evolver.run_virtual()
    return evolver, router


def test_summary_status_dashboard_and_report_show_each_endpoint() -> None:
    evolver, router = _run()
    good, dead, fast = (e.label for e in router.endpoints)
    per_endpoint = evolver.summary()["endpoints"]
    assert per_endpoint[good]["requests"] > 0 and per_endpoint[fast]["requests"] > 0
    assert per_endpoint[dead]["requests"] == 0 and per_endpoint[dead]["moved_away"] > 0
    assert per_endpoint[dead]["downs"] >= 1
    assert per_endpoint[fast]["requests"] > per_endpoint[good]["requests"]  # twice as fast

    # each server's own load is its own backend_load event (the dead one never answers)
    assert {good, fast} <= set(evolver.backend_load["endpoint"].to_list())
    assert set(evolver.status()["server_load"]) >= {good, fast}

    live = evolver.status()["endpoints"]
    assert live[good]["requests"] == per_endpoint[good]["requests"]
    assert live[dead]["requests"] == 0 and live[dead]["failed"] == 0  # its requests moved
    # (an in-process endpoint cannot be health-checked: between trials it is down, on trial up)
    assert live[dead]["state"] in ("down", "up", "open")

    board = Dashboard(evolver, mode="manual")
    shown = board.refresh()["sources"][0]["endpoints"]
    assert shown[fast]["requests"] == per_endpoint[fast]["requests"]
    counters = board.panels[0].counters.value
    assert counters.count('data-fe="endpoint"') == 3 and "answered" in counters

    assert "endpoints" in dashboard_charts(evolver.events)
    page = render_report({"router": evolver.events})
    assert "<h3>Endpoints</h3>" in page and "moved away" in page
    for label in (good, dead, fast):
        assert label in page
