"""The adaptive controller's rule on synthetic rates, and a short virtual run."""

from __future__ import annotations

from flashevolve.events.schema import Event, Kind
from flashevolve.policies.control import AdaptiveController


class FakeRuntime:
    """Just what the controller reads and calls (targets, entry, set_workers)."""

    def __init__(self, targets: dict[str, int]) -> None:
        self.targets = dict(targets)
        self.entry = "rollout"
        self.calls: list[tuple[str, int, str]] = []

    def set_workers(self, stage: str, n: int, reason: str = "") -> None:
        self.calls.append((stage, n, reason))
        self.targets[stage] = n


def feed(
    c: AdaptiveController,
    *,
    now: float,
    latency: dict[str, float],
    per_job: dict[str, float],
    jobs: int = 20,
) -> None:
    """``jobs`` jobs entered; each stage got ``per_job`` items each and took ``latency`` s."""
    for stage, f in per_job.items():
        n = round(jobs * f)
        for k in range(n):
            ts = now - 60 + k * 0.1
            c.observe(Event(Kind.ITEM_ENQUEUED, ts=ts, stage=stage))
            c.observe(Event(Kind.ITEM_DONE, ts=ts, stage=stage, latency_s=latency[stage]))


def test_rates_normalise_by_items_per_job() -> None:
    c = AdaptiveController()
    feed(
        c,
        now=100,
        latency={"rollout": 10, "validate": 100},
        per_job={"rollout": 1.0, "validate": 0.2},
    )
    r = c.rates(100, {"rollout": 8, "validate": 8}, "rollout")
    assert round(r["rollout"].capacity_per_min, 1) == 48.0  # 60 * 8 / 10
    assert round(r["validate"].capacity_per_min, 1) == 24.0  # 60 * 8 / (100 * 0.2)


def test_rule_grows_the_slow_stage_and_shrinks_the_fast_one() -> None:
    c = AdaptiveController(min_workers=1, max_workers=32, scale=False)
    rt = FakeRuntime({"rollout": 8, "propose": 4, "gate": 8, "validate": 8})
    # capacities (jobs/min): rollout 48, propose 24, gate 48*... see below; validate slow.
    feed(
        c,
        now=100,
        latency={"rollout": 10, "propose": 10, "gate": 10, "validate": 400},
        per_job={"rollout": 1.0, "propose": 1.0, "gate": 1.0, "validate": 0.5},
    )
    # rollout 48, propose 24, gate 48, validate 60*8/(400*0.5)=2.4; median 36
    changes = c.step(rt, 100)
    assert changes["validate"][0] == 9  # 2.4 < 0.5 x 36
    assert "propose" not in changes and "rollout" not in changes
    assert rt.calls[0][0] == "validate" and rt.calls[0][2].startswith("adaptive:")
    c2 = AdaptiveController(scale=False)
    feed(
        c2,
        now=100,
        latency={"rollout": 1, "propose": 10, "gate": 10},
        per_job={"rollout": 1.0, "propose": 1.0, "gate": 1.0},
    )
    rt2 = FakeRuntime({"rollout": 8, "propose": 8, "gate": 8})
    assert c2.step(rt2, 100) == {"rollout": (7, rt2.calls[0][2][len("adaptive: ") :])}


def test_bounds_and_no_evidence() -> None:
    c = AdaptiveController(max_workers=8, min_workers=2, scale=False)
    feed(
        c,
        now=100,
        latency={"rollout": 1, "propose": 10, "gate": 10, "validate": 400},
        per_job={"rollout": 1.0, "propose": 1.0, "gate": 1.0, "validate": 1.0},
    )
    rt = FakeRuntime({"rollout": 2, "propose": 8, "gate": 8, "validate": 8, "idle": 3})
    # rollout is fast but already at min_workers; validate slow but at max_workers.
    assert c.step(rt, 100) == {}
    assert "idle" not in c.history[-1]["rates"]  # no finished items: left alone


def test_f_s_counts_the_whole_run_not_the_window() -> None:
    """A stage that sees a few items per window must not look fast because one window held
    fewer arrivals (the noise that used to shrink the validate stage)."""
    c = AdaptiveController(window_s=60)
    # First minute: 40 jobs, 8 of them reached validate (f = 0.2).
    feed(c, now=60, latency={"rollout": 10, "validate": 100}, per_job={"rollout": 1.0}, jobs=40)
    feed(c, now=60, latency={"rollout": 10, "validate": 100}, per_job={"validate": 1.0}, jobs=8)
    # Second minute: 40 jobs, only 2 reached validate.
    feed(c, now=120, latency={"rollout": 10, "validate": 100}, per_job={"rollout": 1.0}, jobs=40)
    feed(c, now=120, latency={"rollout": 10, "validate": 100}, per_job={"validate": 1.0}, jobs=2)
    r = c.rates(120, {"rollout": 8, "validate": 8}, "rollout")
    # f_validate over the run = 10 / 80; a per-window count would say 2 / 40 (2.5x higher r).
    assert r["validate"].per_job == 10 / 80
    assert round(r["validate"].capacity_per_min, 1) == round(60 * 8 / (100 * 10 / 80), 1)


def test_scale_trial_kept_unless_throughput_falls_then_undone_and_held() -> None:
    c = AdaptiveController(
        window_s=120, growth=0.25, initial_growth=0.25, tolerance=0.05, hold_windows=2
    )
    rt = FakeRuntime({"rollout": 4, "propose": 8})
    lat = {"rollout": 10, "propose": 20}  # capacities 24 and 24 jobs/min: balanced
    feed(c, now=100, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=20)
    first = c.step(rt, 100)  # 20 jobs in the 120 s window = 10 jobs/min before the trial
    assert {s: n for s, (n, _) in first.items()} == {"rollout": 5, "propose": 10}
    assert all("try 25% more workers" in why for _, why in first.values())
    feed(c, now=160, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=20)
    assert c.step(rt, 160) == {}  # trial still being measured: nothing else changes
    # A window later throughput is 9.6 jobs/min (within 5% of 10): keep and try again.
    feed(c, now=225, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=19)
    second = c.step(rt, 225)
    assert {s: n for s, (n, _) in second.items()} == {"rollout": 7, "propose": 13}
    # Next window: throughput falls to 7.5 jobs/min (> 5% loss): go back to 5 / 10 and hold.
    feed(c, now=350, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=15)
    undo = c.step(rt, 350)
    assert {s: n for s, (n, _) in undo.items()} == {"rollout": 5, "propose": 10}
    assert "undo" in undo["rollout"][1]
    assert rt.targets == {"rollout": 5, "propose": 10}
    feed(c, now=400, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=30)
    assert c.step(rt, 400) == {}  # held for two windows (until 590)
    assert c.step(rt, 589) == {}
    feed(c, now=600, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=30)
    assert c.step(rt, 600) != {}  # and then it tries again


def test_slow_start_doubles_until_the_first_undo() -> None:
    c = AdaptiveController(window_s=120, growth=0.25, initial_growth=1.0, tolerance=0.05)
    rt = FakeRuntime({"rollout": 4, "propose": 4})
    lat = {"rollout": 10, "propose": 10}
    feed(c, now=100, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=20)
    assert {s: n for s, (n, _) in c.step(rt, 100).items()} == {"rollout": 8, "propose": 8}
    feed(c, now=225, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=30)
    assert {s: n for s, (n, _) in c.step(rt, 225).items()} == {"rollout": 16, "propose": 16}
    feed(c, now=350, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=20)
    assert {s: n for s, (n, _) in c.step(rt, 350).items()} == {"rollout": 8, "propose": 8}
    feed(c, now=700, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=30)
    # after the undo and the hold: +25% steps, no more doubling
    assert {s: n for s, (n, _) in c.step(rt, 700).items()} == {"rollout": 10, "propose": 10}


def test_scale_needs_evidence_from_every_stage_and_respects_bounds() -> None:
    c = AdaptiveController(max_workers=8)
    feed(
        c, now=100, latency={"rollout": 10, "propose": 10}, per_job={"rollout": 1.0, "propose": 1.0}
    )
    rt = FakeRuntime({"rollout": 4, "propose": 4, "validate": 4})
    assert c.step(rt, 100) == {}  # validate has no finished item: no blind growth
    rt2 = FakeRuntime({"rollout": 7, "propose": 8})
    c2 = AdaptiveController(max_workers=8)
    feed(
        c2,
        now=100,
        latency={"rollout": 10, "propose": 10},
        per_job={"rollout": 1.0, "propose": 1.0},
    )
    assert {s: n for s, (n, _) in c2.step(rt2, 100).items()} == {"rollout": 8}


def test_a_failing_controller_is_logged_and_the_run_goes_on() -> None:
    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask, simulated

    class Broken(AdaptiveController):
        def step(self, runtime, now):  # noqa: ANN001, ANN201
            raise RuntimeError("boom")

    ev = Evolver(
        SimulatedTask(n_train=20, n_val=8, seed=0),
        simulated(seed=0),
        budget=240,
        workers={"rollout": 2, "propose": 2, "evaluate": 2},
        control=Broken(period_s=10),
    )
    summary = ev.run_virtual()
    errors = ev.events.filter(ev.events["kind"] == Kind.ERROR)
    assert errors.height == 1
    assert "worker controller failed" in errors["reason"][0] and "boom" in errors["reason"][0]
    assert summary["proposals"] > 0  # the run went on with its workers as they were


def test_controller_runs_on_virtual_time() -> None:
    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask, simulated

    c = AdaptiveController(period_s=10, window_s=40)
    ev = Evolver(
        SimulatedTask(n_train=20, n_val=8, seed=0),
        simulated(seed=0),
        budget=240,
        workers={"rollout": 1, "propose": 6, "evaluate": 6},
        max_in_flight=16,
        control=c,
    )
    ev.run_virtual()
    changes = ev.events.filter(ev.events["kind"] == Kind.WORKERS_CHANGED)
    assert len(c.history) >= 20
    assert changes.height >= 1
    assert all(r.startswith("adaptive:") for r in changes["reason"].to_list())
