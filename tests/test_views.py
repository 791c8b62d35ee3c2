"""Charts build and serialize, the report is self-contained, the dashboard shows live status."""

from __future__ import annotations

import json
import threading
from typing import Any

import polars as pl
import pytest

from flashevolve.errors import UserError
from flashevolve.events import EventLog, Kind
from flashevolve.events import frames as fr
from flashevolve.examples import example_events
from flashevolve.views import charts as ch
from flashevolve.views.report import render_report, save_chart, write_report
from flashevolve.views.widgets import Dashboard, LiveStatus

EMPTY = fr.empty_events()
SINGLE_RUN_CHARTS = [
    ch.throughput_chart,
    ch.concurrency_chart,
    ch.server_load_chart,
    ch.stage_breakdown_chart,
    ch.staleness_chart,
    ch.lineage_chart,
]


@pytest.fixture(scope="module")
def async_run():
    return example_events("async", seed=1)


@pytest.fixture(scope="module")
def sync_run():
    return example_events("sync", seed=1)


def _titles(spec: Any) -> list[str]:
    """Every title text anywhere in a spec."""
    found: list[str] = []
    if isinstance(spec, dict):
        title = spec.get("title")
        if isinstance(title, str):
            found.append(title)
        elif isinstance(title, dict) and isinstance(title.get("text"), str):
            found.append(title["text"])
        for value in spec.values():
            found.extend(_titles(value))
    elif isinstance(spec, list):
        for value in spec:
            found.extend(_titles(value))
    return found


def _rows(spec: Any) -> list[dict[str, Any]]:
    """Every inline data row in a spec (top-level datasets or per-layer ``data.values``)."""
    rows: list[dict[str, Any]] = []
    if isinstance(spec, dict):
        for ds in spec.get("datasets", {}).values():
            rows.extend(ds)
        data = spec.get("data")
        if isinstance(data, dict) and isinstance(data.get("values"), list):
            rows.extend(data["values"])
        for key, value in spec.items():
            if key not in ("datasets", "data"):
                rows.extend(_rows(value))
    elif isinstance(spec, list):
        for value in spec:
            rows.extend(_rows(value))
    return rows


def _has_url(spec: Any) -> bool:
    if isinstance(spec, dict):
        return "url" in spec or any(_has_url(v) for v in spec.values())
    if isinstance(spec, list):
        return any(_has_url(v) for v in spec)
    return False


# -- charts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", SINGLE_RUN_CHARTS, ids=lambda f: f.__name__)
def test_chart_with_data_serializes_inline_and_says_simulated(make, async_run):
    spec = make(async_run).to_dict()
    titles = _titles(spec)
    assert any("(simulated)" in t for t in titles), titles
    assert not any("no data yet" in t for t in titles)
    assert not _has_url(spec)
    json.dumps(spec)  # plain JSON, embeddable as is


@pytest.mark.parametrize("make", SINGLE_RUN_CHARTS, ids=lambda f: f.__name__)
def test_chart_without_data_still_builds(make):
    spec = make(EMPTY).to_dict()
    titles = _titles(spec)
    assert any("no data yet" in t for t in titles)
    assert not any("(simulated)" in t for t in titles)


def test_score_vs_time_compares_runs(async_run, sync_run):
    spec = ch.score_vs_time_chart({"sync baseline": sync_run, "async": async_run}).to_dict()
    values = _rows(spec)
    assert {row["run"] for row in values} == {"sync baseline", "async"}
    for run in ("sync baseline", "async"):
        best = [row["best_score"] for row in values if row["run"] == run]
        assert best == sorted(best)  # monotone per run
    assert "(simulated)" in _titles(spec)[0]
    empty = ch.score_vs_time_chart({}).to_dict()
    assert "no data yet" in _titles(empty)[0]
    # a single frame is accepted as a one-run comparison
    assert ch.score_vs_time_chart(async_run).to_dict()


def test_lineage_chart_styles_patch_edges():
    log = EventLog()
    log.emit(Kind.ADMITTED, ts=0.0, artifact_id="a0", score=0.5, data={"origin": "seed"})
    log.emit(Kind.ADMITTED, ts=5.0, artifact_id="a1", parent_id="a0", score=0.6, pool_version=2,
             data={"origin": "reflection", "parents": ["a0"]})  # fmt: skip
    log.emit(Kind.ADMITTED, ts=9.0, artifact_id="a2", parent_id="a1", score=0.7, pool_version=3,
             data={"origin": "patch", "parents": ["a1", "a0"], "patched_from": ["i2"]})  # fmt: skip
    spec = ch.lineage_chart(log.frame()).to_dict()
    text = json.dumps(spec)
    assert '"edge": "patch"' in text and '"edge": "parent"' in text
    rule = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "rule")
    assert rule["encoding"]["strokeDash"]["field"] == "edge"
    by_version = ch.lineage_chart(log.frame(), x="version").to_dict()
    assert "pool_version" in json.dumps(by_version)
    with pytest.raises(ValueError, match="x must be"):
        ch.lineage_chart(log.frame(), x="depth")


def test_staleness_chart_counts_by_lag(async_run):
    spec = ch.staleness_chart(async_run).to_dict()
    rows = _rows(spec)
    stale = fr.staleness(async_run)
    assert sum(r["count"] for r in rows) == stale.height
    assert ch.staleness_chart(async_run, lag="frontier_lag").to_dict()


def test_concurrency_chart_thins_long_series():
    log = EventLog()
    for i in range(3000):  # 6000 request events -> more than MAX_POINTS points
        log.emit(Kind.REQUEST_STARTED, ts=float(i), request_id=f"r{i}", in_flight=1 + i % 3)
        log.emit(Kind.REQUEST_FINISHED, ts=i + 0.5, request_id=f"r{i}", in_flight=i % 3)
    spec = ch.concurrency_chart(log.frame()).to_dict()
    rows = _rows(spec)
    assert len(rows) <= ch.MAX_POINTS + 1
    assert max(r["requests"] for r in rows) == 3
    assert {r["series"] for r in rows} == {"at the server"}  # nothing was held by the client


def test_concurrency_chart_shows_requests_held_by_the_client_apart():
    log = EventLog()
    log.emit(Kind.REQUEST_STARTED, ts=0.0, request_id="r0", in_flight=1)
    log.emit(Kind.REQUEST_STARTED, ts=0.0, request_id="r1", in_flight=2)
    log.emit(Kind.REQUEST_SENT, ts=2.0, request_id="r1", in_flight=2, data={"held_from": 0.0})
    log.emit(Kind.REQUEST_FINISHED, ts=2.0, request_id="r0", in_flight=1)
    log.emit(Kind.REQUEST_FINISHED, ts=3.0, request_id="r1", in_flight=0)
    series = fr.concurrency(log.frame())
    assert series.select("ts", "at_server", "in_client").rows() == [
        (0.0, 1, 1),
        (2.0, 1, 0),
        (3.0, 0, 0),
    ]
    rows = _rows(ch.concurrency_chart(log.frame()).to_dict())
    held = [r["requests"] for r in rows if r["series"] == "waiting in the client"]
    assert max(held) == 1


def test_auto_window_picks_round_bucket(async_run):
    assert ch.auto_window(EMPTY) == 1.0
    end = fr.run_end(async_run)
    width = ch.auto_window(async_run)
    assert end / width <= 20 and width in ch.WINDOW_CHOICES


# -- report and export -----------------------------------------------------------------------
def test_report_is_self_contained(tmp_path, async_run, sync_run):
    path = write_report(tmp_path / "r.html", {"sync": sync_run, "async": async_run}, title="T<1>")
    text = path.read_text(encoding="utf-8")
    assert "<script src" not in text and "https://cdn" not in text
    assert "vegaEmbed" in text and len(text) > 500_000  # the JS bundle is inlined
    assert "<title>T&lt;1&gt;</title>" in text
    # one comparison chart + seven per run (the simulated server reports its load, GEPA's
    # admissions the prompt's size)
    assert text.count('<script type="application/json" id="spec-') == 15
    assert text.count('class="chart"') == 15
    assert text.count("<h3>Artifact size</h3>") == 2
    assert text.count("<h3>Server load</h3>") == 2


def test_report_of_empty_run_renders_placeholders():
    text = render_report({"empty": EMPTY})
    assert text.count("no data yet") >= 6
    assert "Server load" not in text  # only for runs whose server reported its load


def test_server_load_chart_draws_running_and_waiting(async_run):
    spec = ch.server_load_chart(async_run).to_dict()
    rows = spec["data"]["values"]
    assert {r["series"] for r in rows} == {"running", "waiting"}
    # the rows are the server's own reports, one pair per load event
    reported = async_run.filter(pl.col("kind") == "backend_load").height
    assert len(rows) == 2 * reported
    assert max(r["requests"] for r in rows if r["series"] == "running") > 0
    assert "strokeDash" not in spec["encoding"]  # one server: no per-server dashes


def test_write_report_rejects_wrong_suffix(tmp_path):
    with pytest.raises(UserError, match=r"\.html"):
        write_report(tmp_path / "r.pdf", {"x": EMPTY})


def test_save_chart_offline_formats(tmp_path, async_run):
    chart = ch.stage_breakdown_chart(async_run)
    png = save_chart(chart, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = save_chart(chart, tmp_path / "c.svg")
    assert "<svg" in svg.read_text()
    html = save_chart(chart, tmp_path / "c.html")
    assert "vegaEmbed" in html.read_text() and "<script src" not in html.read_text()
    with pytest.raises(UserError, match="cannot export"):
        save_chart(chart, tmp_path / "c.gif")


# -- dashboard -------------------------------------------------------------------------------
class FakeEvolver:
    """Duck-typed source: ``.name`` and ``.status()`` following the live-status contract."""

    def __init__(self, name: str, mode: str = "async") -> None:
        self.name = name
        self.state: dict[str, Any] = {
            "name": name,
            "mode": mode,
            "state": "running",
            "elapsed_s": 0.0,
            "stages": {"rollout": {"queue_depth": 0, "workers": 4, "busy": 0}},
            "in_flight": 0,
            "proposals": 0,
            "accepted": 0,
            "proposals_per_min": 0.0,
            "accepted_per_min": 0.0,
            "best_score": None,
            "stale": {"accept": 0, "discard": 0, "patch": 0, "merged": 0},
            "pool_version": 1,
            "frontier_version": 1,
        }
        self.calls = 0

    def status(self) -> dict[str, Any]:
        self.calls += 1
        return json.loads(json.dumps(self.state))


def test_dashboard_refresh_shows_changing_status():
    a, b = FakeEvolver("async"), FakeEvolver("sync baseline", mode="sync")
    board = Dashboard(a, b, mode="manual")
    assert board.snapshot()["sources"][0]["state"] == "pending"
    snap = board.refresh()
    assert [s["name"] for s in snap["sources"]] == ["async", "sync baseline"]
    assert snap["sources"][0]["best_score"] is None
    a.state.update(elapsed_s=75.0, in_flight=7, proposals=3, accepted=1, best_score=0.61,
                   proposals_per_min=2.4, pool_version=2)  # fmt: skip
    a.state["stages"]["rollout"].update(queue_depth=5, busy=3)
    a.state["stale"]["patch"] = 2
    snap = board.refresh()
    shown = snap["sources"][0]
    assert shown["in_flight"] == 7 and shown["best_score"] == 0.61
    assert shown["stages"]["rollout"] == {"queue_depth": 5, "workers": 4, "busy": 3}
    assert shown["stale"]["patch"] == 2 and shown["proposals_per_min"] == 2.4
    assert snap["refreshes"] == 2 and not snap["stopped"]
    panel = board.panels[0]
    assert "0.6100" in panel.counters.value and "1:15" in panel.header.value
    assert "3/4" in panel.stages.value
    assert "running ·" not in panel.counters.value  # no server has reported its load yet
    assert "requests at server / waiting in client" in panel.counters.value
    a.state["server_load"] = {"http://127.0.0.1:8000/v1": {"running": 5, "waiting": 2,
                                                          "kv_usage": 0.5}}  # fmt: skip
    shown = board.refresh()["sources"][0]
    assert shown["server_load"]["http://127.0.0.1:8000/v1"]["waiting"] == 2
    assert "server 127.0.0.1:8000" in panel.counters.value
    assert "5 running · 2 waiting · KV 50%" in panel.counters.value
    assert "winding down" not in panel.counters.value
    a.state["wind_down_at"] = 1380.0  # Budget.wind_down: no new jobs from 23:00 on
    assert board.refresh()["sources"][0]["wind_down_at"] == 1380.0
    assert "winding down since 23:00: no new jobs" in panel.counters.value
    assert len(board.widget.children) == 2
    # both finished -> the dashboard stops polling by itself
    a.state["state"] = "finished"
    b.state["state"] = "failed"
    assert board.refresh()["stopped"]
    assert board.all_terminal


class SteerableFake(FakeEvolver):
    """A source that can also change its workers and job bound (as an Evolver can)."""

    def __init__(self, name: str, mode: str = "async") -> None:
        super().__init__(name, mode)
        self.state["stages"]["validate"] = {"queue_depth": 0, "workers": 8, "busy": 2}
        self.state["max_in_flight"] = 64
        self.sent: list[tuple[str, Any]] = []
        self.refuse: str | None = None

    def set_workers(self, **counts: int) -> None:
        if self.refuse:
            raise RuntimeError(self.refuse)
        self.sent.append(("workers", counts))
        for stage, n in counts.items():
            self.state["stages"][stage]["workers"] = n

    def set_max_in_flight(self, n: int) -> None:
        self.sent.append(("bound", n))
        self.state["max_in_flight"] = n


def test_dashboard_controls_send_only_what_the_user_edited():
    src = SteerableFake("live")
    board = Dashboard(src, FakeEvolver("read-only"), mode="manual")
    assert board.panels[1].controls is None  # no set_workers: no controls
    controls = board.panels[0].controls
    assert controls is not None and controls.apply() == "nothing changed"  # before any status
    board.refresh()
    assert {k: f.value for k, f in controls.fields.items()} == {"rollout": 4, "validate": 8}
    assert controls.bound.value == 64 and not controls.apply_button.disabled
    # meanwhile the controller moves rollout; the user edits validate and the bound only
    src.state["stages"]["rollout"]["workers"] = 6
    board.refresh()
    controls.fields["validate"].value = 12
    controls.bound.value = 96
    controls.apply_button.click()
    assert src.sent == [("workers", {"validate": 12}), ("bound", 96)]  # rollout not reverted
    assert controls.message.value == "applied: validate 12, jobs bound 96"
    assert controls.apply() == "nothing changed" and len(src.sent) == 2
    # a refusal is shown next to the button, nothing is raised, the fields keep the edit
    src.refuse = "the run is stopped: worker counts can no longer change"
    controls.fields["rollout"].value = 2
    assert controls.apply().startswith("not applied: the run is stopped")
    assert "not applied" in controls.message.value and controls.edited() == ({"rollout": 2}, None)
    # the run ends: the controls are disabled
    src.state["state"] = "stopped"
    board.refresh()
    assert controls.apply_button.disabled and controls.fields["validate"].disabled


def test_dashboard_controls_are_off_for_sync_runs_and_on_request():
    board = Dashboard(SteerableFake("sync", mode="sync"), mode="manual")
    board.refresh()
    controls = board.panels[0].controls
    assert controls is not None and controls.apply_button.disabled
    assert "sync run" in controls.message.value
    assert Dashboard(SteerableFake("x"), mode="manual", controls=False).panels[0].controls is None


def test_dashboard_shows_source_errors_and_keeps_others():
    good = FakeEvolver("good")

    class Broken:
        name = "broken"

        def status(self) -> dict[str, Any]:
            raise RuntimeError("endpoint gone")

    snap = Dashboard(good, Broken(), lambda: {"state": "running", "in_flight": "many"},
                     mode="manual").refresh()  # fmt: skip
    assert snap["sources"][0]["error"] is None
    assert "endpoint gone" in snap["sources"][1]["error"]
    assert "in_flight" in snap["sources"][2]["error"]
    assert snap["sources"][2]["name"] == "run 3"


def test_dashboard_rejects_bad_sources():
    with pytest.raises(TypeError, match="at least one source"):
        Dashboard()
    with pytest.raises(TypeError, match="status"):
        Dashboard(42)


def test_dashboard_thread_stops_when_sources_finish():
    done = FakeEvolver("done")
    done.state["state"] = "finished"
    board = Dashboard(done, refresh_s=0.2)
    polled = threading.Event()
    original = board.refresh

    def refresh() -> dict[str, Any]:
        out = original()
        polled.set()
        return out

    board.refresh = refresh  # type: ignore[method-assign]
    board.start()
    assert polled.wait(timeout=30)  # readiness poll with a timeout, not a timing sleep
    board.close()
    assert not board.running
    assert done.calls == 1 and board.snapshot()["stopped"]


def test_live_status_contract_defaults():
    status = LiveStatus.model_validate({"name": "x"})
    assert status.state == "running" and status.stages == {} and status.best_score is None
