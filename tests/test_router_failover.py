"""The router against real ``flashevolve serve-sim`` processes on 127.0.0.1 (different --speed):
one killed mid-run and restarted (nothing lost, traffic moves away and comes back), affinity
over HTTP, and health checks keeping a server that is still loading out of the rotation.

No wall-clock assertions: the phases are cut by what the event log shows, and every wait is
bounded."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import polars as pl
import pytest

from flashevolve.backends.base import ChatRequest
from flashevolve.backends.process import ManagedProcess, free_port, start_server
from flashevolve.backends.router import Router
from flashevolve.bench.failover import SIM_MODEL, FailoverConfig, run_failover, start_sim
from flashevolve.events import frames
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Kind
from flashevolve.runtime.clock import LoopClock
from flashevolve.runtime.instrument import InFlight, InstrumentedLLM


def test_a_killed_endpoint_loses_nothing_and_gets_traffic_again_after_its_restart() -> None:
    config = FailoverConfig(speeds=(10.0, 20.0, 40.0), before=60, during=60, after=20)
    result, df = run_failover(config)
    victim = result["victim"]
    others = [e for e in result["endpoints"] if e != victim]
    # no request lost: every request issued was answered, none failed
    assert result["issued"] == result["answered"] > 0
    assert result["failed"] == 0 and result["cancelled"] == 0 and result["lost"] == 0
    phases = result["phases"]
    assert all(phases["before"].get(e, 0) > 0 for e in result["endpoints"])
    # out of the rotation while it was gone: nothing was sent to it (an answer it had sent
    # just before the kill may still be read after the router took it out)
    marks = result["marks"]
    routed_at = df.filter(pl.col("kind") == Kind.REQUEST_ROUTED)
    sent_while_out = routed_at.filter(
        (pl.col("endpoint") == victim)
        & (pl.col("ts") > marks["down"])
        & (pl.col("ts") < marks["up"])
    )
    assert sent_while_out.height == 0
    assert phases["during"].get(victim, 0) <= config.cap  # at most what it had in flight
    assert all(phases["during"].get(e, 0) > 0 for e in others)
    assert phases["after"].get(victim, 0) >= config.after  # used again once back
    # the requests it had when it was killed moved to the others
    routed = [json.loads(d) for d in df.filter(pl.col("kind") == Kind.REQUEST_ROUTED)["data"]]
    moved = [r for r in routed if r["reason"] == "moved"]
    assert moved and {r["moved_from"] for r in moved} == {victim}
    assert {r["endpoint"] for r in moved} <= set(others)
    assert result["moved"] == len(moved)
    states = df.filter(pl.col("kind") == Kind.ENDPOINT_STATE)
    router_states = [
        (e, json.loads(d)["state"])
        for e, d in states[["endpoint", "data"]].iter_rows()
        if json.loads(d).get("source") == "router"
    ]
    assert router_states[0] == (victim, "down") and (victim, "up") in router_states


@pytest.fixture(scope="module")
def three_servers():
    speeds = (20.0, 40.0, 80.0)
    procs: list[ManagedProcess] = []
    try:
        for speed in speeds:
            procs.append(start_sim(free_port(), speed, "vllm-h100-qwen3-8b"))
        yield [f"{p.base_url}/v1" for p in procs]
    finally:
        for proc in procs:
            proc.stop()


def _request(i: int, system: str) -> ChatRequest:
    return ChatRequest(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": f"q{i}"}],
        max_tokens=32,
        stage="rollout",
        item_id=f"i{i}",
    )


async def _sequential(router: Router, requests: list[ChatRequest]) -> EventLog:
    clock = LoopClock()
    clock.start()
    log = EventLog(clock=clock)
    llm = InstrumentedLLM(router, "task", log, InFlight())
    try:
        for request in requests:
            await llm.complete(request)
    finally:
        await router.aclose()
    return log


def test_affinity_keeps_each_system_prompt_on_one_server(three_servers) -> None:
    router = Router(three_servers, model=SIM_MODEL, affinity="system")
    prompts = [f"You are assistant number {k}." for k in range(12)]
    requests = [_request(i, prompts[i % 12]) for i in range(48)]
    log = asyncio.run(_sequential(router, requests))
    reqs = frames.requests(log.frame())
    assert (reqs["outcome"] == "finished").all() and reqs.height == 48
    reqs = reqs.with_columns(pl.col("item_id").str.slice(1).cast(pl.Int64).mod(12).alias("p"))
    per_prompt = reqs.group_by("p").agg(pl.col("endpoint").n_unique().alias("servers"))
    assert per_prompt["servers"].max() == 1
    assert reqs["endpoint"].n_unique() > 1


def test_health_checks_keep_a_loading_server_out_until_it_is_ready(
    three_servers, fake_server_script: Path
) -> None:
    """A server whose /health answers 503 for its first probes (a model still loading) is
    taken out by the router's check and taken back once the check passes."""
    port = free_port()
    command = [sys.executable, str(fake_server_script), "serve", SIM_MODEL, "--port", str(port)]
    loading = start_server(
        [*command, "--slow-ready", "8"], port=port, name="loading", health_path="/v1/models"
    )
    late = f"http://127.0.0.1:{port}/v1"
    try:
        router = Router([three_servers[0], late], model=SIM_MODEL, settings={"check_every_s": 0.05})

        async def main() -> EventLog:
            clock = LoopClock()
            clock.start()
            log = EventLog(clock=clock)
            llm = InstrumentedLLM(router, "task", log, InFlight())
            late_endpoint = router.endpoints[1]
            answered_before: int | None = None
            try:
                for i in range(5000):  # bounded: until it answered 5 after its return
                    await llm.complete(_request(i, "s"))
                    back = late_endpoint.downs > 0 and late_endpoint.up
                    if back and answered_before is None:
                        answered_before = late_endpoint.finished
                    if back and late_endpoint.finished - (answered_before or 0) >= 5:
                        break
            finally:
                await router.aclose()
            return log

        log = asyncio.run(main())
    finally:
        loading.stop()
    df = log.frame()
    states = [
        (ts, json.loads(d)["state"])
        for ts, e, d in df.filter(pl.col("kind") == Kind.ENDPOINT_STATE)[
            ["ts", "endpoint", "data"]
        ].iter_rows()
        if e == late and json.loads(d).get("source") == "router"
    ]
    assert [s for _, s in states][:2] == ["down", "up"]
    down_at, up_at = states[0][0], states[1][0]
    routed = df.filter(pl.col("kind") == Kind.REQUEST_ROUTED)
    # nothing was sent to it while it was out (the up event is logged with the next request
    # routed, which may already go to it)
    while_out = routed.filter(
        (pl.col("ts") > down_at) & (pl.col("ts") < up_at) & (pl.col("endpoint") == late)
    )
    assert while_out.height == 0
    after = routed.filter((pl.col("ts") >= up_at) & (pl.col("endpoint") == late))
    assert after.height >= 5
