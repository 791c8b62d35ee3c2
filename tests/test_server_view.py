"""What the server sees: requests at the server are told apart from requests a client holds back
(its cap on requests in flight), over real HTTP; utilization is achieved over attainable."""

from __future__ import annotations

import asyncio

from flashevolve.backends.base import ChatRequest
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.server import ScriptedResponder, serve_in_thread
from flashevolve.events import frames, metrics
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Kind
from flashevolve.runtime.clock import LoopClock
from flashevolve.runtime.instrument import InFlight, InstrumentedLLM

MSGS = [{"role": "user", "content": "hello"}]


def run_capped_burst(base_url: str, n: int, cap: int) -> tuple[EventLog, InFlight]:
    """``n`` requests at once through a client capped at ``cap`` requests in flight."""

    async def main() -> tuple[EventLog, InFlight]:
        clock = LoopClock()
        clock.start()
        log = EventLog(clock=clock)
        in_flight = InFlight()
        client = OpenAICompatLLM(base_url, "scripted", max_concurrency=cap)
        llm = InstrumentedLLM(client, "task", log, in_flight)
        log.emit(Kind.RUN_STARTED, data={"backend": {"endpoint": base_url}})
        await asyncio.gather(
            *(llm.complete(ChatRequest(MSGS, stage="validate", item_id=f"i{k}")) for k in range(n))
        )
        log.emit(Kind.RUN_FINISHED)
        await client.aclose()
        return log, in_flight

    return asyncio.run(main())


def test_requests_held_by_a_capped_client_are_not_counted_at_the_server():
    with serve_in_thread(ScriptedResponder(latency=0.05)) as base_url:
        log, in_flight = run_capped_burst(base_url, n=6, cap=2)
    df = log.frame()
    series = frames.concurrency(df)
    assert int(series["in_flight"].max()) == 6  # all six were handed to the client at once
    assert int(series["at_server"].max()) == 2  # the server never had more than the cap
    # four wait for a slot at once; answered requests whose slot went on to a waiter are on
    # this side too until the caller has checked them, so the peak can be higher
    assert 4 <= int(series["in_client"].max()) <= 6
    assert (series["at_server"] + series["in_client"]).equals(series["in_flight"])
    assert series.tail(1).select("in_flight", "in_client", "at_server").row(0) == (0, 0, 0)
    # the four that waited were logged when they left the client's queue, with when they began
    sent = df.filter(df["kind"] == Kind.REQUEST_SENT)
    assert sent.height == 4
    assert in_flight.count == 0 and in_flight.held == 0
    summary = metrics.summary(df)
    assert summary["peak_concurrency"] == 2 and 4 <= summary["peak_in_client"] <= 6
    assert summary["mean_in_client"] > 0
    assert summary["mean_concurrency"] <= 2 + 1e-9
    assert summary["utilization"] is None  # the scripted server declares nothing attainable


def test_an_uncapped_client_holds_nothing_back():
    with serve_in_thread(ScriptedResponder(latency=0.05)) as base_url:
        log, _ = run_capped_burst(base_url, n=4, cap=16)
    series = frames.concurrency(log.frame())
    assert int(series["in_client"].max()) == 0
    assert int(series["at_server"].max()) == 4
    assert log.frame().filter(log.frame()["kind"] == Kind.REQUEST_SENT).height == 0


def test_in_flight_integrals_give_averages_over_any_interval():
    f = InFlight()
    f.change(0.0, count=2)  # two requests from t=0
    f.change(1.0, held=1)  # one of them held from t=1
    f.change(3.0, held=-1, count=-1)  # sent at t=3 and, at once, the other one finished
    count_s, held_s = f.integrals(4.0)
    assert (count_s, held_s) == (2 * 3 + 1 * 1, 1 * 2)
    assert f.at_server == 1


def test_a_simulated_run_reports_utilization_against_its_profile():
    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask, simulated

    llm = simulated("vllm-h100-qwen3-8b", seed=0)
    ev = Evolver(SimulatedTask(n_train=12, n_val=12, seed=0), llm, budget=300, max_in_flight=4)
    summary = ev.run_virtual()
    info = frames.run_info(ev.events)
    attainable = llm.profile.attainable_tokens_per_s
    assert info["backend"]["attainable_tokens_per_s"] == attainable
    generated = metrics.generated_tokens(ev.events)
    assert generated > 0
    assert summary["utilization"] == generated / summary["duration_s"] / attainable
    assert summary["peak_in_client"] == 0  # the simulator in-process holds nothing back


def test_a_request_cancelled_while_waiting_in_the_client_wasted_nothing():
    """It never reached the server: its wasted tokens are known to be 0, not unknown."""
    from flashevolve.backends.server import FixedLatency

    async def main(base_url: str) -> EventLog:
        clock = LoopClock()
        clock.start()
        log = EventLog(clock=clock)
        client = OpenAICompatLLM(base_url, "scripted", max_concurrency=1)
        llm = InstrumentedLLM(client, "task", log, InFlight())
        first = asyncio.create_task(llm.complete(ChatRequest(MSGS, stage="validate")))
        waiting = asyncio.create_task(llm.complete(ChatRequest(MSGS, stage="rollout")))
        _, gate = client._loop_state()
        while gate.waiting < 1:  # event-loop turns until the second one waits for the slot
            await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await first
        await client.aclose()
        return log

    with serve_in_thread(ScriptedResponder(latency=FixedLatency(0.2))) as base_url:
        log = asyncio.run(main(base_url))
    df = log.frame()
    cancelled = df.filter(df["kind"] == Kind.REQUEST_CANCELLED)
    assert cancelled["completion_tokens"].to_list() == [0]
    assert "waiting in the client" in cancelled["reason"][0]
    assert metrics.summary(df)["cancelled_tokens_unknown"] == 0
