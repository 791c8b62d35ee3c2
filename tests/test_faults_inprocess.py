"""The in-process simulator with injected faults, on virtual time: the short fault run (200+
faults at 25%), a hang that no longer stalls, the circuit breaker, the hedge budget, and what a
task makes of a request that failed for good."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from faultkit import instrumented, lost_requests, observed_faults

from flashevolve.backends import simulated
from flashevolve.backends.base import ChatRequest, LLMError
from flashevolve.backends.faults import FaultKind, FaultPlan, parse_fault_spec
from flashevolve.backends.faults.inprocess import ResilientSimulatedLLM
from flashevolve.backends.server import ScriptedResponder, serve_in_thread
from flashevolve.backends.sim import SimulatedLLM
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.runtime.clock import run_virtual
from flashevolve.tasks.base import Example, PromptTask

TIME_KINDS = (FaultKind.HANG, FaultKind.DRIP)


def _prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"[sim-example id=val-{i} difficulty=0.5] question {i}"}]


async def _run(llm: ResilientSimulatedLLM, n: int, concurrency: int = 64) -> EventLog:
    wrapped, log = instrumented(llm)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        stage = "validate" if i % 3 else "rollout"
        async with gate:
            await wrapped.complete(ChatRequest(_prompt(i), stage=stage, max_tokens=512))

    await asyncio.gather(*(one(i) for i in range(n)))
    return log


def _expected(stats: dict, *, drips_time_out: bool) -> Counter[str]:
    expected = Counter(stats["faults"]["expected_client_faults"])
    if drips_time_out:
        expected["timeout"] += stats["faults"]["injected"].get("drip", 0)
    return expected


def test_fault_run_every_injected_fault_is_in_the_log() -> None:
    # drips last longer than any deadline, so each is seen as a timeout; no hedges, so no fault
    # is absorbed by a twin that won the race
    llm = simulated(seed=3, faults="rate=0.25,seed=11,drip_s=1000", resilience={"hedge": False})
    log = run_virtual(_run(llm, 800))
    stats = llm.stats()
    injected = stats["faults"]["injected_total"]
    assert injected >= 200
    assert set(stats["faults"]["injected"]) == {str(k) for k in FaultKind}  # every kind came up
    assert observed_faults(log) == _expected(stats, drips_time_out=True)
    # no request lost: each one finished, or failed with its fault in the log
    assert not lost_requests(log)
    finished = len(log.of_kind(Kind.REQUEST_FINISHED))
    failed = log.of_kind(Kind.REQUEST_FAILED)
    assert finished + len(failed) == 800
    assert all(e.data["fault"] and e.data["attempts"] > 1 for e in failed)
    client = stats["client"]
    assert client["retries"] == len(log.of_kind(Kind.REQUEST_RETRIED))
    assert client["hedges_sent"] == 0 and client["failed"] == len(failed)


def test_fault_run_with_hedging_accounts_for_every_fault() -> None:
    llm = simulated(seed=3, faults="rate=0.25,seed=11,drip_s=1000")  # hedging on (the default)
    log = run_virtual(_run(llm, 800))
    stats = llm.stats()
    client = stats["client"]
    seen, expected = observed_faults(log), _expected(stats, drips_time_out=False)
    # faults that end an attempt at once are seen one for one
    for fault, n in expected.items():
        if fault != "timeout":
            assert seen[fault] == n, fault
    # a hang or a drip ends in a timeout, or loses the race to its hedged twin
    stuck = sum(stats["faults"]["injected"].get(str(k), 0) for k in TIME_KINDS)
    assert seen["timeout"] <= stuck <= seen["timeout"] + client["hedges_sent"]
    assert 0 < client["hedges_sent"] <= llm.settings.hedge_budget * 800  # the budget holds
    assert len(log.of_kind(Kind.HEDGE_RESOLVED)) == client["hedges_sent"]
    assert client["hedges_won"] == sum(
        1 for e in log.of_kind(Kind.HEDGE_RESOLVED) if e.data["winner"] == "hedge"
    )
    assert not lost_requests(log)


def _seed_where(spec: str, pattern: list[bool]) -> int:
    """The first seed whose first draws hit (True) or miss (False) as ``pattern`` says."""
    for seed in range(1000):
        plan = FaultPlan(parse_fault_spec(f"{spec},seed={seed}"))  # type: ignore[arg-type]
        if [plan.draw() is not None for _ in pattern] == pattern:
            return seed
    raise AssertionError("no such seed")


def test_a_hang_is_cut_by_the_deadline_and_retried() -> None:
    seed = _seed_where("rate=0.5,hang", [True, False])  # the first attempt hangs, not the retry
    llm = simulated(seed=1, faults=f"rate=0.5,hang,seed={seed}")

    async def main() -> tuple[str, EventLog, float]:
        wrapped, log = instrumented(llm)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await wrapped.complete(ChatRequest(_prompt(1), stage="rollout", max_tokens=64))
        return result.text, log, loop.time() - t0

    text, log, took = run_virtual(main())
    assert text
    (retry,) = log.of_kind(Kind.REQUEST_RETRIED)
    assert retry.data["fault"] == "timeout" and retry.data["attempt"] == 1
    # before the endpoint has shown its speed the deadline is the warm-up one (120 s): the hang
    # costs that, not the 3600 s it would have held
    assert retry.latency_s == pytest.approx(120.0)
    assert took < 130.0  # virtual seconds


def test_the_breaker_stops_sending_while_open_and_closes_when_a_probe_succeeds() -> None:
    llm = simulated(seed=1, faults="rate=1,http503", resilience={"hedge": False, "backoff_s": 0.1})
    assert isinstance(llm, ResilientSimulatedLLM) and llm.faults is not None
    plan = llm.faults

    async def main() -> EventLog:
        wrapped, log = instrumented(llm)

        def heal(event: Event) -> None:  # the endpoint recovers when the circuit opens again
            if event.kind == Kind.ENDPOINT_STATE and event.data["previous"] == "half_open":
                llm.faults = None

        log.subscribe(heal)
        await asyncio.gather(
            *(wrapped.complete(ChatRequest(_prompt(i), stage="rollout")) for i in range(10))
        )
        return log

    log = run_virtual(main())
    states = log.of_kind(Kind.ENDPOINT_STATE)
    assert [e.data["state"] for e in states] == ["open", "half_open", "open", "half_open", "closed"]
    assert [e.data.get("open_s") for e in states if e.data["state"] == "open"] == [5.0, 10.0]
    assert states[1].ts - states[0].ts == pytest.approx(5.0)  # virtual seconds
    # nothing went out while open: 8 failed attempts opened it (the other first attempts then
    # waited), 1 probe failed -- then the healed endpoint got one attempt per request
    assert plan.requests == 8 + 1
    assert len(log.of_kind(Kind.REQUEST_FINISHED)) == 10 and not log.of_kind(Kind.REQUEST_FAILED)
    assert llm.stats()["completed_requests"] == 10


def test_waiting_for_an_open_circuit_has_a_limit() -> None:
    llm = simulated(
        seed=1,
        faults="rate=1,refuse",
        resilience={"breaker_failures": 2, "breaker_give_up_s": 60, "max_retries": 50},
    )

    async def main() -> LLMError:
        wrapped, _ = instrumented(llm)
        with pytest.raises(LLMError) as err:
            await wrapped.complete(ChatRequest(_prompt(1), stage="rollout"))
        return err.value

    err = run_virtual(main())
    assert err.fault == "circuit_open" and not err.retryable and err.infrastructure


def test_without_faults_or_settings_the_bare_simulator_is_returned() -> None:
    assert type(simulated(seed=1)) is SimulatedLLM


# -- what a task makes of it -------------------------------------------------------------------


def _task(metric=lambda example, output: 1.0) -> PromptTask:
    ex = Example("e1", {"prompt": "[sim-example id=val-1 difficulty=0.5] hi"})
    return PromptTask("t", train=[ex], val=[ex], seed={"instruction": "Do it."}, metric=metric)


def test_a_rollout_whose_request_failed_for_good_is_an_infrastructure_failure() -> None:
    llm = simulated(seed=1, faults="rate=1,reset", resilience={"max_retries": 1, "hedge": False})
    task = _task()

    async def main():
        return await task.rollout(
            task.seed_artifact(), task.val[0], llm, stage="validate", item_id="i"
        )

    rollout = run_virtual(main())
    assert rollout.error_kind == "infrastructure" and rollout.infrastructure_failure
    assert rollout.score == 0.0 and rollout.error
    assert (rollout.trace["fault"], rollout.trace["attempts"]) == ("connection", 2)


def test_a_rejected_request_and_a_crashed_evaluator_are_not_infrastructure() -> None:
    task = _task()
    with serve_in_thread(ScriptedResponder(["x"], error_fn=lambda req, i: 400)) as url:
        from flashevolve.backends.openai_compat import OpenAICompatLLM

        llm = OpenAICompatLLM(url, "scripted")
        rollout = asyncio.run(
            task.rollout(task.seed_artifact(), task.val[0], llm, stage="validate", item_id="i")
        )
    assert rollout.error_kind == "request" and not rollout.infrastructure_failure

    def crash(example: Example, output: str) -> float:
        raise RuntimeError("metric bug")

    crashing = _task(metric=crash)
    rollout = run_virtual(
        crashing.rollout(
            crashing.seed_artifact(),
            crashing.val[0],
            simulated(seed=1),
            stage="validate",
            item_id="i",
        )
    )
    assert rollout.error_kind == "evaluator" and "metric bug" in (rollout.error or "")
