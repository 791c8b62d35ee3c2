"""Winding down before a time budget ends (virtual time on the simulator: nothing sleeps)."""

import json

import polars as pl
import pytest

from flashevolve import Evolver
from flashevolve.backends.sim import SimulatedTask, simulated
from flashevolve.errors import ConfigError
from flashevolve.events.schema import Event, Kind
from flashevolve.policies import WindDown

WIDE = {"workers": {"rollout": 8, "propose": 8, "gate": 8, "validate": 8}, "max_in_flight": 32}


def make(budget, seed=0):
    return Evolver(
        SimulatedTask(n_train=30, n_val=20, seed=seed),
        simulated(seed=seed),
        budget=budget,
        seed=seed,
        **WIDE,
    )


def of(ev, kind):
    return ev.events.filter(pl.col("kind") == kind)


def admitted(latency):
    return Event(Kind.ADMITTED, latency_s=latency)


def test_the_auto_margin_is_the_fastest_recent_job_once_there_is_evidence():
    wd = WindDown("auto", min_samples=3, recent=3)
    for t in (300.0, 200.0):
        wd.observe(admitted(t))
    wd.observe(Event(Kind.ITEM_DONE, latency_s=5.0))  # not a job time
    assert wd.margin() is None and wd.stop_reason(1.0) is None  # two samples: no evidence
    wd.observe(admitted(400.0))
    assert wd.margin() == 200.0
    assert wd.stop_reason(200.0) is None  # exactly the margin left: a job may still start
    assert "199 s left" in wd.stop_reason(199.0)
    for t in (500.0, 600.0):  # only the 3 most recent count: 300 and then 200 drop out
        wd.observe(admitted(t))
    assert wd.margin() == 400.0
    assert WindDown("auto", quantile=0.5, min_samples=1).margin() is None
    median = WindDown("auto", quantile=0.5, min_samples=1)
    for t in (10.0, 30.0, 20.0):
        median.observe(admitted(t))
    assert median.margin() == 20.0
    assert WindDown(90).margin() == 90.0  # a fixed margin needs no evidence


def test_no_job_starts_after_winding_down_and_the_run_still_ends_at_its_deadline():
    ev = make({"seconds": 600, "wind_down": 150})
    summary = ev.run_virtual()
    wind = of(ev, Kind.WIND_DOWN)
    assert wind.height == 1
    ts = wind["ts"][0]
    data = json.loads(wind["data"][0])
    assert data["margin_s"] == 150 and 0 < data["remaining_s"] < 150
    assert ts == pytest.approx(600 - data["remaining_s"])
    starts = of(ev, Kind.ITEM_ENQUEUED).filter(pl.col("stage") == "rollout")
    assert starts.filter(pl.col("ts") < ts).height > 0
    assert starts.filter(pl.col("ts") > ts).height == 0  # no new job after it
    # jobs that were in flight went on and some were admitted after the wind-down
    assert of(ev, Kind.ADMITTED).filter(pl.col("ts") > ts).height > 0
    assert summary["duration_s"] == pytest.approx(600)  # rates stay per budget minute
    assert ev.status()["wind_down_at"] == ts  # what a dashboard shows


def test_auto_wind_down_uses_the_job_times_of_admissions():
    ev = make({"seconds": 900, "wind_down": "auto"})
    ev.run_virtual()
    adm = of(ev, Kind.ADMITTED).filter(pl.col("latency_s").is_not_null())
    # every admission (the seed's aside) says how long its job took from start to admission
    assert adm.height > 5 and (adm["latency_s"] > 0).all() and (adm["latency_s"] <= adm["ts"]).all()
    wind = of(ev, Kind.WIND_DOWN)
    assert wind.height == 1
    ts = wind["ts"][0]
    before = adm.filter(pl.col("ts") <= ts)["latency_s"].to_list()[-50:]
    data = json.loads(wind["data"][0])
    assert data["margin_s"] == pytest.approx(min(before))
    assert data["remaining_s"] < data["margin_s"]


def test_wind_down_is_off_unless_asked_for():
    ev = make(600)
    ev.run_virtual()
    assert of(ev, Kind.WIND_DOWN).height == 0


@pytest.mark.parametrize(
    "budget, words",
    [
        ({"wind_down": "auto"}, ["wind_down", "seconds"]),
        ({"seconds": 60, "wind_down": -5}, ["wind_down", "positive"]),
        ({"seconds": 60, "wind_down": "soon"}, ["wind_down"]),
    ],
)
def test_a_bad_wind_down_names_the_field(budget, words):
    with pytest.raises(ConfigError) as err:
        make(budget)
    for word in words:
        assert word in str(err.value)
