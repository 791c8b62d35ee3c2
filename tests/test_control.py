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
    c = AdaptiveController(min_workers=1, max_workers=32, grow_when_balanced=False)
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
    c2 = AdaptiveController(grow_when_balanced=False)
    feed(
        c2,
        now=100,
        latency={"rollout": 1, "propose": 10, "gate": 10},
        per_job={"rollout": 1.0, "propose": 1.0, "gate": 1.0},
    )
    rt2 = FakeRuntime({"rollout": 8, "propose": 8, "gate": 8})
    assert c2.step(rt2, 100) == {"rollout": (7, rt2.calls[0][2][len("adaptive: ") :])}


def test_bounds_and_no_evidence() -> None:
    c = AdaptiveController(max_workers=8, min_workers=2, grow_when_balanced=False)
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


def test_probe_when_balanced_keeps_growing_only_while_throughput_grows() -> None:
    c = AdaptiveController(window_s=120, min_gain=0.05)
    rt = FakeRuntime({"rollout": 4, "propose": 4})
    lat = {"rollout": 10, "propose": 12}
    feed(c, now=100, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=20)
    first = c.step(rt, 100)
    assert first == {"propose": (5, first["propose"][1])}  # the bottleneck gets one worker
    feed(c, now=230, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=30)
    assert c.step(rt, 230)  # throughput 10 -> 15 jobs/min: probe again (the new bottleneck)
    feed(c, now=360, latency=lat, per_job={"rollout": 1.0, "propose": 1.0}, jobs=30)
    assert c.step(rt, 360) == {}  # no gain: hold for two windows
    assert c.step(rt, 400) == {}


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
