"""Derived frames on hand-built event logs, with exact expected values."""

from __future__ import annotations

import polars as pl
import pytest

from flashevolve.events import EventLog, Kind, metrics
from flashevolve.events import frames as fr


def request_log() -> EventLog:
    log = EventLog()
    log.emit(Kind.RUN_STARTED, ts=0.0, data={"mode": "async", "simulated": True})
    common = {"stage": "rollout", "item_id": "i1", "role": "task", "endpoint": "e1"}
    log.emit(Kind.REQUEST_STARTED, ts=1.0, request_id="r1", in_flight=1, **common)
    log.emit(Kind.REQUEST_STARTED, ts=2.0, request_id="r2", in_flight=2, **common)
    log.emit(
        Kind.REQUEST_FINISHED,
        ts=4.0,
        request_id="r1",
        in_flight=1,
        prompt_tokens=10,
        completion_tokens=5,
        latency_s=2.5,
        **common,
    )
    log.emit(
        Kind.REQUEST_FAILED,
        ts=5.0,
        request_id="r2",
        in_flight=0,
        reason="timeout",
        data={"wasted_tokens": 7},
        **common,
    )
    log.emit(
        Kind.REQUEST_STARTED,
        ts=5.0,
        request_id="r3",
        in_flight=1,
        stage="propose",
        item_id="i1",
        role="reflection",
        endpoint="e1",
    )
    return log


def lineage_log() -> EventLog:
    log = EventLog()
    log.emit(Kind.RUN_STARTED, ts=0.0, data={"mode": "async"})
    log.emit(Kind.ADMITTED, ts=0.0, artifact_id="a0", score=0.5, pool_version=1,
             data={"origin": "seed", "parents": []})  # fmt: skip
    log.emit(Kind.ADMITTED, ts=10.0, artifact_id="a1", parent_id="a0", score=0.6, pool_version=2,
             data={"origin": "reflection", "parents": ["a0"]})  # fmt: skip
    log.emit(Kind.ADMITTED, ts=20.0, artifact_id="a2", parent_id="a0", score=0.55, pool_version=3,
             data={"origin": "reflection", "parents": ["a0"]})  # fmt: skip
    log.emit(Kind.PROPOSAL_MADE, ts=22.0, stage="propose", item_id="i9", artifact_id="s1",
             parent_id="a1")  # fmt: skip
    log.emit(Kind.SPECULATIVE_ADMITTED, ts=25.0, artifact_id="s1", score=0.7)
    log.emit(Kind.SPECULATION_ROLLED_BACK, ts=27.0, artifact_id="s1", score=0.4)
    log.emit(Kind.STALE_DETECTED, ts=29.0, stage="validate", item_id="i3", artifact_id="a3",
             lag=2, frontier_lag=1, decision="patch", reason="behind")  # fmt: skip
    log.emit(Kind.STALE_DETECTED, ts=29.5, stage="gate", item_id="i4", lag=1, frontier_lag=0,
             decision="discard", reason="too old")  # fmt: skip
    log.emit(Kind.PATCH_MADE, ts=30.0, artifact_id="a3",
             data={"patched_from": ["i3"], "stale_artifacts": ["a2"]})  # fmt: skip
    log.emit(Kind.ADMITTED, ts=30.0, artifact_id="a3", parent_id="a1", score=0.58, pool_version=4,
             data={"origin": "patch", "parents": ["a1", "a2"], "patched_from": ["i3"]})  # fmt: skip
    log.emit(Kind.SPECULATIVE_ADMITTED, ts=40.0, artifact_id="a4", score=0.65)
    log.emit(Kind.SPECULATION_CONFIRMED, ts=45.0, artifact_id="a4", score=0.66)
    log.emit(Kind.ADMITTED, ts=45.0, artifact_id="a4", parent_id="a3", score=0.66, pool_version=5,
             data={"origin": "reflection", "parents": ["a3"]})  # fmt: skip
    return log


def stage_log() -> EventLog:
    log = EventLog()
    for ts, lat in ((1.0, 1.0), (2.0, 1.0), (12.0, 2.0)):
        log.emit(Kind.ITEM_DONE, ts=ts, stage="rollout", item_id=f"i{ts}", latency_s=lat)
    log.emit(Kind.ITEM_DEQUEUED, ts=13.5, stage="propose", item_id="i1", data={"wait_s": 1.5})
    log.emit(Kind.ITEM_DONE, ts=15.0, stage="propose", item_id="i1", latency_s=6.0)
    log.emit(Kind.PROPOSAL_MADE, ts=15.0, stage="propose", item_id="i1", artifact_id="c1")
    log.emit(Kind.PROPOSAL_MADE, ts=25.0, stage="propose", item_id="i2", artifact_id="c2")
    log.emit(Kind.VALIDATION_FINISHED, ts=19.0, artifact_id="c1", score=0.5)
    for i, ts in enumerate((0.0, 10.0, 20.0, 30.0, 45.0)):
        log.emit(Kind.ADMITTED, ts=ts, artifact_id=f"a{i}", score=0.1 * i)
    log.emit(Kind.RUN_FINISHED, ts=55.0)
    return log


EMPTY = fr.empty_events()


# -- requests & concurrency ------------------------------------------------------------------
def test_requests_one_row_per_request_with_outcomes():
    out = fr.requests(request_log().frame())
    assert out["request_id"].to_list() == ["r1", "r2", "r3"]
    assert out["outcome"].to_list() == ["finished", "failed", "in_flight"]
    assert out["start"].to_list() == [1.0, 2.0, 5.0]
    assert out["end"].to_list() == [4.0, 5.0, None]
    # r1 keeps the latency the backend measured; r2 falls back to end - start
    assert out["latency_s"].to_list() == [2.5, 3.0, None]
    assert out["prompt_tokens"].to_list() == [10, None, None]
    assert out["wasted_tokens"].to_list() == [None, 7, None]
    assert out["reason"].to_list() == [None, "timeout", None]
    assert out["role"].to_list() == ["task", "task", "reflection"]
    assert out["stage"].to_list() == ["rollout", "rollout", "propose"]


def test_concurrency_step_series_from_recorded_in_flight():
    out = fr.concurrency(request_log().frame())
    # starts at (0, 0); the failure of r2 and the start of r3 at t=5 collapse to the last value
    assert out.select("ts", "in_flight").rows() == [
        (0.0, 0),
        (1.0, 1),
        (2.0, 2),
        (4.0, 1),
        (5.0, 1),
    ]
    assert out["in_client"].sum() == 0 and out["at_server"].equals(out["in_flight"])


def test_concurrency_rebuilt_when_in_flight_missing():
    frame = request_log().frame().with_columns(pl.lit(None, dtype=pl.Int64).alias("in_flight"))
    assert fr.concurrency(frame).select("ts", "in_flight").rows() == [
        (0.0, 0),
        (1.0, 1),
        (2.0, 2),
        (4.0, 1),
        (5.0, 1),
    ]


# -- lineage ---------------------------------------------------------------------------------
def test_artifacts_lineage_flags_and_patch():
    arts = fr.artifacts(lineage_log().frame())
    by_id = {r["artifact_id"]: r for r in arts.to_dicts()}
    assert arts["artifact_id"].to_list() == ["a0", "a1", "a2", "s1", "a3", "a4"]
    assert by_id["a0"]["origin"] == "seed" and by_id["a0"]["parent_id"] is None
    assert by_id["a3"]["origin"] == "patch"
    assert by_id["a3"]["parents"] == ["a1", "a2"]
    assert by_id["a3"]["patched_from"] == ["i3"]
    assert by_id["a3"]["pool_version"] == 4
    # rolled-back speculation: parent found from its proposal, never admitted, tombstoned
    s1 = by_id["s1"]
    assert (s1["parent_id"], s1["speculative"], s1["tombstoned"], s1["admitted"]) == (
        "a1",
        True,
        True,
        False,
    )
    a4 = by_id["a4"]
    assert (a4["speculative"], a4["confirmed"], a4["tombstoned"], a4["admitted"]) == (
        True,
        True,
        False,
        True,
    )
    assert a4["admitted_ts"] == 45.0 and a4["score"] == 0.66


def test_lineage_edges_include_patch_edges():
    edges = fr.lineage_edges(lineage_log().frame())
    assert set(edges.rows()) == {
        ("a0", "a1", "parent"),
        ("a0", "a2", "parent"),
        ("a1", "s1", "parent"),
        ("a1", "a3", "patch"),
        ("a2", "a3", "patch"),
        ("a2", "a3", "patched_from"),
        ("a3", "a4", "parent"),
    }


def test_best_score_is_monotone_step_series():
    best = fr.best_score_over_time(lineage_log().frame())
    assert best["ts"].to_list() == [0.0, 10.0, 20.0, 30.0, 45.0]
    assert best["best_score"].to_list() == [0.5, 0.6, 0.6, 0.6, 0.66]
    assert best["is_new_best"].to_list() == [True, True, False, False, True]
    assert best["best_score"].is_sorted()


def test_summary_counts_improvements_apart_from_admissions():
    # a1 (0.6) and a4 (0.66) raise the best; a2 and a3 are admitted below it; the seed a0 is
    # the starting point.  The run lasts 45 s (run_started at 0, last event at 45).
    summary = metrics.summary(lineage_log().frame())
    assert summary["accepted"] == 4
    assert summary["improvements"] == 2
    assert summary["improvements_per_min"] == pytest.approx(2 / 0.75)


def test_staleness_rows_keep_both_lags():
    stale = fr.staleness(lineage_log().frame())
    assert stale.select("decision", "lag", "frontier_lag", "artifact_id").rows() == [
        ("patch", 2, 1, "a3"),
        ("discard", 1, 0, None),
    ]


def test_is_simulated_reads_run_started():
    assert fr.is_simulated(request_log().frame())
    assert not fr.is_simulated(lineage_log().frame())
    assert not fr.is_simulated(EMPTY)


# -- throughput & stage time -----------------------------------------------------------------
def test_throughput_buckets_with_zero_fill_and_partial_last_bucket():
    out = fr.throughput(stage_log().frame(), window_s=10.0)
    rollout = out.filter(pl.col("series") == "rollout")
    assert rollout["count"].to_list() == [2, 1, 0, 0, 0, 0]
    assert rollout["per_min"].to_list()[:2] == [12.0, 6.0]
    accepted = out.filter(pl.col("series") == "accepted")
    assert accepted["count"].to_list() == [1, 1, 1, 1, 1, 0]
    # the run ends at 55 s: the last bucket covers 5 s, so one event there would be 12/min
    assert accepted["t_end"].to_list()[-1] == 55.0
    assert accepted["per_min"].to_list()[4] == 6.0
    proposals = out.filter(pl.col("series") == "proposals")
    assert proposals["count"].to_list() == [0, 1, 1, 0, 0, 0]
    validations = out.filter(pl.col("series") == "validations")
    assert validations["count"].sum() == 1
    assert set(out["group"].to_list()) == {"stage", "pipeline"}
    # stages first in pipeline order, then pipeline series, within every bucket
    assert out.filter(pl.col("bucket") == 0)["series"].to_list() == [
        "rollout",
        "propose",
        "accepted",
        "proposals",
        "validations",
    ]


def test_throughput_rejects_bad_window():
    with pytest.raises(ValueError, match="window_s"):
        fr.throughput(stage_log().frame(), window_s=0)


def test_stage_time_breakdown_shares():
    out = fr.stage_time_breakdown(stage_log().frame())
    assert out.select("stage", "items", "busy_s", "wait_s").rows() == [
        ("rollout", 3, 4.0, 0.0),
        ("propose", 1, 6.0, 1.5),
    ]
    assert out["mean_s"].to_list() == pytest.approx([4.0 / 3, 6.0])
    assert out["share"].to_list() == pytest.approx([0.4, 0.6])


# -- empty input -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fn", "schema"),
    [
        (fr.requests, fr.REQUESTS_SCHEMA),
        (fr.artifacts, fr.ARTIFACTS_SCHEMA),
        (fr.staleness, fr.STALENESS_SCHEMA),
        (fr.throughput, fr.THROUGHPUT_SCHEMA),
        (fr.concurrency, fr.CONCURRENCY_SCHEMA),
        (fr.backend_load, fr.BACKEND_LOAD_SCHEMA),
        (fr.best_score_over_time, fr.BEST_SCHEMA),
        (fr.stage_time_breakdown, fr.BREAKDOWN_SCHEMA),
    ],
)
def test_empty_frame_gives_empty_frame_with_columns(fn, schema):
    out = fn(EMPTY)
    assert out.is_empty()
    assert dict(out.schema) == schema
    # a log with only a run_started event is as empty as no log at all
    only_start = request_log().frame().head(1)
    assert fn(only_start).is_empty()
    assert dict(fn(only_start).schema) == schema


def test_frames_round_trip_through_jsonl(tmp_path):
    path = tmp_path / "events.jsonl"
    log = lineage_log()
    disk = EventLog(path)
    for event in log.snapshot():
        disk.append(event)
    disk.close()
    from flashevolve.events import events_to_frame

    frame = events_to_frame(EventLog.read(path))
    assert fr.artifacts(frame).equals(fr.artifacts(log.frame()))


def test_the_event_log_packs_old_events_into_chunks_and_loses_none():
    from flashevolve.events.log import EventLog
    from flashevolve.events.schema import Event, Kind

    log = EventLog(chunk_events=7)
    for i in range(30):
        log.emit(Kind.ITEM_DONE, ts=float(i), stage="s", latency_s=0.5, data={"i": i})
    assert len(log) == 30
    assert len(log._chunks) == 4 and len(log._events) == 2  # 4 packed chunks of 7, 2 loose
    frame = log.frame()
    assert frame.height == 30 and frame["ts"].to_list() == [float(i) for i in range(30)]
    events = log.snapshot()
    assert [e.data["i"] for e in events] == list(range(30))
    assert isinstance(events[0], Event) and events[3].latency_s == 0.5
    assert [e.ts for e in log.tail(3)] == [27.0, 28.0, 29.0]
    assert [e.ts for e in log.tail(9)] == [float(i) for i in range(21, 30)]


def test_edit_frames_and_charts_show_what_admissions_changed():
    from flashevolve.events import edits
    from flashevolve.examples import example_events
    from flashevolve.views.charts import dashboard_charts

    ace = example_events("async", seed=0, workflow="ace", staleness="guarded")
    sizes, ops = edits.artifact_sizes(ace), edits.operations(ace)
    admitted = ace.filter(pl.col("kind") == "admitted").height
    assert sizes.height == admitted and set(sizes["size_unit"]) == {"bullets"}
    assert {"ADD"} <= set(ops["type"]) and set(ops["status"]) <= {"applied", "rejected"}
    assert {"artifact_size", "operations"} <= set(dashboard_charts(ace))
    gepa = example_events("async", seed=0)
    assert set(edits.artifact_sizes(gepa)["size_unit"]) == {"characters"}
    assert edits.operations(gepa).is_empty() and "operations" not in dashboard_charts(gepa)


def test_summary_counts_what_the_infrastructure_did():
    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask, simulated

    llm = simulated(seed=0, faults="rate=0.25,seed=3")
    ev = Evolver(SimulatedTask(n_train=30, n_val=12, seed=0), llm, mode="async",
                 workers={"rollout": 4, "propose": 4, "evaluate": 4}, max_in_flight=16,
                 budget=300, seed=0)  # fmt: skip
    s = ev.run_virtual()
    df = ev.events
    retried = df.filter(pl.col("kind") == "request_retried").height
    assert s["retries"] == retried > 0
    assert s["faults"] == sum(s["faults_by_kind"].values()) >= retried
    assert s["hedges"] == df.filter(pl.col("kind") == "request_hedged").height
    assert s["hedges_won"] <= s["hedges"] and s["watchdog_cancelled"] == 0
    # the server's own count of what it injected and the client's view agree on the kinds
    expected = llm.stats()["faults"]["expected_client_faults"]
    assert expected and set(s["faults_by_kind"]) <= set(expected) | {"timeout"}
