"""The adaptive controller's rule on synthetic rates, and a short virtual run."""

from __future__ import annotations

from flashevolve.events.schema import Event, Kind
from flashevolve.policies.control import AdaptiveController


class FakeRuntime:
    """Just what the controller reads and calls (targets, entry, the job bound, the setters)."""

    def __init__(self, targets: dict[str, int], max_in_flight: int = 64) -> None:
        self.targets = dict(targets)
        self.entry = "rollout"
        self.max_in_flight = max_in_flight
        self.calls: list[tuple[str, int, str]] = []
        self.bound_calls: list[tuple[int, str]] = []

    def set_workers(self, stage: str, n: int, reason: str = "") -> None:
        self.calls.append((stage, n, reason))
        self.targets[stage] = n

    def set_max_in_flight(self, n: int, reason: str = "") -> None:
        self.bound_calls.append((n, reason))
        self.max_in_flight = n


def feed(
    c: AdaptiveController,
    *,
    now: float,
    latency: dict[str, float],
    per_job: dict[str, float],
    jobs: int = 20,
    tokens: int = 0,
) -> None:
    """``jobs`` jobs entered; each stage got ``per_job`` items each and took ``latency`` s; the
    admitting (last) stage's requests finished with ``tokens`` completion tokens in the last
    minute."""
    last = list(per_job)[-1]  # the admitting stage of these pipelines: the last one
    for k in range(10 if tokens else 0):
        c.observe(
            Event(
                Kind.REQUEST_FINISHED,
                ts=now - 60 + k * 6,
                stage=last,
                completion_tokens=tokens // 10,
            )
        )
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


def test_scale_trial_kept_only_if_it_pays_then_undone_and_held() -> None:
    c = AdaptiveController(
        window_s=120,
        growth=0.25,
        initial_growth=0.25,
        min_return=0.2,
        bound_min_return=0.2,
        hold_windows=2,
    )
    rt = FakeRuntime({"rollout": 4, "propose": 8}, max_in_flight=16)
    lat = {"rollout": 10, "propose": 20}  # capacities 24 and 24 jobs/min: balanced
    both = {"rollout": 1.0, "propose": 1.0}
    feed(c, now=100, latency=lat, per_job=both, tokens=12_000)  # 6,000 tokens/min
    first = c.step(rt, 100)
    assert {s: n for s, (n, _) in first.items()} == {"rollout": 5, "propose": 10}
    assert all("try 25% more workers" in why for _, why in first.values())
    assert "admitting tokens/min" in first["rollout"][1]
    assert rt.max_in_flight == 20 and "jobs in flight" in rt.bound_calls[0][1]
    feed(c, now=160, latency=lat, per_job=both, tokens=7_000)
    assert c.step(rt, 160) == {}  # trial still being measured: nothing else changes
    # A window later: 6,300 tokens/min, +5% = 0.2 x 25%: it paid, keep and try again.
    feed(c, now=225, latency=lat, per_job=both, tokens=6_300)
    assert c.step(rt, 225) == {}  # judged and kept; the next period starts the next trial
    second = c.step(rt, 226)
    assert {s: n for s, (n, _) in second.items()} == {"rollout": 7, "propose": 13}
    assert rt.max_in_flight == 25
    # Next window: 6,400 tokens/min, +1.6% < +5%: go back to 5 / 10 and a bound of 20, hold.
    feed(c, now=350, latency=lat, per_job=both, tokens=6_400)
    undo = c.step(rt, 350)
    assert {s: n for s, (n, _) in undo.items()} == {"rollout": 5, "propose": 10}
    assert "gained too little" in undo["rollout"][1] and "undo" in undo["rollout"][1]
    assert rt.targets == {"rollout": 5, "propose": 10} and rt.max_in_flight == 20
    feed(c, now=400, latency=lat, per_job=both, jobs=30, tokens=6_000)
    assert c.step(rt, 400) == {}  # held for two windows (until 590)
    assert c.step(rt, 589) == {}
    feed(c, now=600, latency=lat, per_job=both, jobs=30, tokens=6_000)
    assert c.step(rt, 600) != {}  # and then it tries again
    assert [h["max_in_flight"] for h in c.history][:2] == [16, 20]  # recorded before changes


def test_slow_start_doubles_until_the_first_undo() -> None:
    c = AdaptiveController(window_s=120, growth=0.25, initial_growth=1.0, min_return=0.1)
    rt = FakeRuntime({"rollout": 4, "propose": 4}, max_in_flight=8)
    lat = {"rollout": 10, "propose": 10}
    both = {"rollout": 1.0, "propose": 1.0}
    feed(c, now=100, latency=lat, per_job=both, tokens=10_000)
    assert {s: n for s, (n, _) in c.step(rt, 100).items()} == {"rollout": 8, "propose": 8}
    feed(c, now=225, latency=lat, per_job=both, tokens=15_000)  # +50% >= +10%: kept
    assert c.step(rt, 225) == {}
    assert {s: n for s, (n, _) in c.step(rt, 226).items()} == {"rollout": 16, "propose": 16}
    assert rt.max_in_flight == 32
    feed(c, now=350, latency=lat, per_job=both, tokens=15_900)  # +6% < +10%: undo
    assert {s: n for s, (n, _) in c.step(rt, 350).items()} == {"rollout": 8, "propose": 8}
    assert rt.max_in_flight == 16
    feed(c, now=700, latency=lat, per_job=both, jobs=30, tokens=15_000)
    # after the undo and the hold: +25% steps, no more doubling
    assert {s: n for s, (n, _) in c.step(rt, 700).items()} == {"rollout": 10, "propose": 10}
    assert rt.max_in_flight == 20


def test_more_jobs_in_flight_must_pay_more_than_more_workers() -> None:
    """A trial that pays for the workers but not for the extra jobs keeps the workers and
    restores the job bound, which then sits out ``hold_windows`` windows of trials."""
    c = AdaptiveController(window_s=120, initial_growth=1.0, min_return=0.1, bound_min_return=0.5)
    rt = FakeRuntime({"rollout": 4, "propose": 4}, max_in_flight=16)
    lat = {"rollout": 10, "propose": 10}
    both = {"rollout": 1.0, "propose": 1.0}
    feed(c, now=100, latency=lat, per_job=both, tokens=10_000)
    c.step(rt, 100)
    assert rt.targets == {"rollout": 8, "propose": 8} and rt.max_in_flight == 32
    feed(c, now=225, latency=lat, per_job=both, tokens=13_000)  # +30%: >= +10%, < +50%
    assert c.step(rt, 225) == {}
    assert rt.targets == {"rollout": 8, "propose": 8} and rt.max_in_flight == 16
    assert "undo the job bound only" in rt.bound_calls[-1][1]
    feed(c, now=260, latency=lat, per_job=both, tokens=13_000)
    assert {s: n for s, (n, _) in c.step(rt, 260).items()} == {"rollout": 16, "propose": 16}
    assert rt.max_in_flight == 16  # the bound sits this one out (held until 465)
    feed(c, now=385, latency=lat, per_job=both, tokens=30_000)  # doubled: keep
    c.step(rt, 385)
    feed(c, now=470, latency=lat, per_job=both, tokens=30_000)
    c.step(rt, 470)
    assert rt.max_in_flight == 32  # hold over: the bound is tried again


def test_job_bound_respects_its_cap_and_can_be_left_alone() -> None:
    lat = {"rollout": 10, "propose": 10}
    both = {"rollout": 1.0, "propose": 1.0}
    c = AdaptiveController(max_workers=8, max_in_flight_cap=40)
    feed(c, now=100, latency=lat, per_job=both, tokens=1_000)
    rt = FakeRuntime({"rollout": 8, "propose": 8}, max_in_flight=32)
    assert c.step(rt, 100) == {}  # workers at their cap: only the bound grows
    assert rt.max_in_flight == 40 and c._trial is not None
    fixed = AdaptiveController(bound=False)
    feed(fixed, now=100, latency=lat, per_job=both, tokens=1_000)
    rt2 = FakeRuntime({"rollout": 4, "propose": 4}, max_in_flight=32)
    assert fixed.step(rt2, 100) != {}
    assert rt2.max_in_flight == 32 and rt2.bound_calls == []
    done = AdaptiveController(max_workers=8, max_in_flight_cap=32)
    feed(done, now=100, latency=lat, per_job=both, tokens=1_000)
    assert done.step(FakeRuntime({"rollout": 8, "propose": 8}, max_in_flight=32), 100) == {}
    assert done._trial is None  # nothing left to try


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


# -- backpressure and the objective signal ------------------------------------------------------
def report_load(c: AdaptiveController, *, now: float, running: int, waiting: int) -> None:
    """The server said, every 5 s of the last two minutes, that it ran and queued this many."""
    for k in range(24):
        c.observe(
            Event(
                Kind.BACKEND_LOAD,
                ts=now - 120 + 5 * k,
                endpoint="http://127.0.0.1:8000/v1",
                data={"running": running, "waiting": waiting, "kv_usage": 0.9},
            )
        )


LAT = {"rollout": 10, "propose": 10}
BOTH = {"rollout": 1.0, "propose": 1.0}


def test_backpressure_stops_growth_while_requests_wait_at_the_server():
    """A queue above queue_low: no scale trial and no added worker, though the stages are
    balanced (or one is slow); below it, the same evidence starts a trial."""
    c = AdaptiveController(queue_low=0.5, queue_high=2.0)
    feed(c, now=100, latency=LAT, per_job=BOTH, tokens=10_000)
    report_load(c, now=100, running=100, waiting=80)  # 0.8 waiting per request served
    rt = FakeRuntime({"rollout": 4, "propose": 4}, max_in_flight=16)
    assert c.step(rt, 100) == {}
    assert rt.max_in_flight == 16 and rt.calls == [] and rt.bound_calls == []
    assert c.history[-1]["queue"] == 0.8
    slow = AdaptiveController(queue_low=0.5, scale=False)  # validate slow: would gain a worker
    feed(
        slow,
        now=100,
        latency={"rollout": 10, "propose": 10, "validate": 400},
        per_job={"rollout": 1.0, "propose": 1.0, "validate": 0.5},
    )
    report_load(slow, now=100, running=100, waiting=80)
    assert slow.step(FakeRuntime({"rollout": 8, "propose": 8, "validate": 8}), 100) == {}
    roomy = AdaptiveController(queue_low=0.5)
    feed(roomy, now=100, latency=LAT, per_job=BOTH, tokens=10_000)
    report_load(roomy, now=100, running=100, waiting=10)
    rt2 = FakeRuntime({"rollout": 4, "propose": 4}, max_in_flight=16)
    assert roomy.step(rt2, 100) != {} and rt2.max_in_flight == 32  # room: the trial starts


def test_the_job_bound_shrinks_under_a_piled_up_queue_once_a_window():
    c = AdaptiveController(window_s=120, queue_high=2.0, shrink=0.75, min_in_flight=10)
    rt = FakeRuntime({"rollout": 4, "propose": 4}, max_in_flight=32)
    feed(c, now=100, latency=LAT, per_job=BOTH, tokens=10_000)
    report_load(c, now=100, running=100, waiting=300)  # 3 waiting per request served
    assert c.step(rt, 100) == {}
    assert rt.max_in_flight == 24 and "backpressure" in rt.bound_calls[-1][1]
    assert "300 waiting at the server" in rt.bound_calls[-1][1]
    report_load(c, now=130, running=100, waiting=300)
    c.step(rt, 130)
    assert rt.max_in_flight == 24  # a change needs a window to show: no second cut yet
    for now in (220, 340, 460):
        report_load(c, now=now, running=100, waiting=300)
        c.step(rt, now)
    assert [n for n, _ in rt.bound_calls] == [24, 18, 13, 10]  # never below min_in_flight
    report_load(c, now=580, running=100, waiting=300)
    c.step(rt, 580)
    assert rt.max_in_flight == 10 and len(rt.bound_calls) == 4


def test_a_trial_in_progress_is_undone_when_the_queue_piles_up():
    c = AdaptiveController(window_s=120)
    rt = FakeRuntime({"rollout": 4, "propose": 4}, max_in_flight=16)
    feed(c, now=100, latency=LAT, per_job=BOTH, tokens=10_000)
    c.step(rt, 100)
    assert rt.targets == {"rollout": 8, "propose": 8} and rt.max_in_flight == 32
    report_load(c, now=160, running=100, waiting=250)
    undo = c.step(rt, 160)  # mid-trial: no need to wait for the window
    assert {s: n for s, (n, _) in undo.items()} == {"rollout": 4, "propose": 4}
    assert rt.max_in_flight == 16 and "undo the trial" in rt.bound_calls[-1][1]


def test_a_trial_that_raises_tokens_but_lowers_accepted_work_is_undone():
    """More rollouts crowding out the validations that admit children: all tokens per minute
    rise by half, the admitting stage's fall by a fifth -- the trial is undone."""
    c = AdaptiveController(window_s=120, initial_growth=1.0)
    rt = FakeRuntime({"rollout": 4, "propose": 4, "validate": 4}, max_in_flight=16)
    three = {"rollout": 1.0, "propose": 1.0, "validate": 1.0}
    lat = {"rollout": 10, "propose": 10, "validate": 10}

    def tokens(now: float, stage: str, n: int) -> None:
        for k in range(10):
            c.observe(
                Event(Kind.REQUEST_FINISHED, ts=now - 60 + 6 * k, stage=stage, completion_tokens=n)
            )

    feed(c, now=100, latency=lat, per_job=three)
    tokens(100, "rollout", 400)
    tokens(100, "validate", 1_000)  # 14,000 tokens in the window, 10,000 of them validating
    c.step(rt, 100)
    assert rt.max_in_flight == 32
    feed(c, now=225, latency=lat, per_job=three)
    tokens(225, "rollout", 1_300)
    tokens(225, "validate", 800)  # 21,000 tokens (+50%), 8,000 validating (-20%)
    undo = c.step(rt, 225)
    assert {s: n for s, (n, _) in undo.items()} == {"rollout": 4, "propose": 4, "validate": 4}
    assert rt.max_in_flight == 16
    assert c.history[-1]["tokens_per_min"] > c.history[0]["tokens_per_min"]
    assert c.history[-1]["admitting_tokens_per_min"] < c.history[0]["admitting_tokens_per_min"]


def test_requests_waiting_in_the_client_count_as_queue():
    """A client capped below the demand (llama-server's slots) holds the rest back: the
    runtime's InFlight integrals make that a queue, with no server report needed."""
    from flashevolve.policies.control_signals import LoadSignal
    from flashevolve.runtime.instrument import InFlight

    flight, signal = InFlight(), LoadSignal()
    flight.change(0.0, count=12, held=8)  # 12 handed to the client, 8 of them waiting
    signal.sample_client(0.0, flight)
    signal.sample_client(120.0, flight)
    load = signal.read(120.0, 120.0)
    assert load is not None
    assert (load.running, load.client_waiting, load.queue) == (4.0, 8.0, 2.0)
    assert LoadSignal().read(120.0, 120.0) is None  # nobody can tell: no backpressure


def test_requests_that_fail_for_good_are_backpressure_too():
    """A rate-limited API answers 429 beyond what retries outlast: a server refusing work is past
    its capacity, whatever its queue says (a hosted API reports none)."""
    c = AdaptiveController(window_s=120, max_failed=0.02)
    rt = FakeRuntime({"rollout": 4, "propose": 4}, max_in_flight=32)
    feed(c, now=100, latency=LAT, per_job=BOTH, tokens=10_000)
    for k in range(50):
        kind = Kind.REQUEST_FAILED if k % 10 == 0 else Kind.REQUEST_FINISHED
        c.observe(Event(kind, ts=40 + k))
    c.load.sample_client(0.0, None)
    c.observe(Event(Kind.BACKEND_LOAD, ts=99, endpoint="api", data={"running": 50, "waiting": 0}))
    assert c.step(rt, 100) == {}  # 5 of the window's 60 requests failed
    assert rt.max_in_flight == 24 and "8% of requests failed" in rt.bound_calls[-1][1]
