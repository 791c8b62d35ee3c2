"""backends.router: spreading, caps, moving requests off a dead endpoint, affinity, cancellation,
giving up, per-endpoint numbers -- on the simulator's virtual time and against real HTTP servers
run in a thread (the serve-sim processes are in test_router_failover.py)."""

from __future__ import annotations

import asyncio
import json

import polars as pl
import pytest

from flashevolve import Evolver
from flashevolve.backends import simulated
from flashevolve.backends.base import ChatRequest, LLMError
from flashevolve.backends.process import free_port
from flashevolve.backends.router import Router, router
from flashevolve.backends.routing import parse_endpoints
from flashevolve.backends.routing.choice import rendezvous
from flashevolve.backends.server import ScriptedResponder, serve_in_thread
from flashevolve.backends.sim import SimulatedTask
from flashevolve.errors import ConfigError
from flashevolve.events import frames
from flashevolve.events.endpoints import endpoint_table, served_over_time
from flashevolve.events.log import EventLog
from flashevolve.events.metrics import summary
from flashevolve.events.schema import Kind
from flashevolve.runtime.clock import LoopClock, run_virtual
from flashevolve.runtime.instrument import InFlight, InstrumentedLLM

VLLM = "vllm-h100-qwen3-8b"


def _request(i: int, system: str = "You answer.", max_tokens: int | None = 200) -> ChatRequest:
    return ChatRequest(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": f"q{i}"}],
        max_tokens=max_tokens,
        stage="rollout",
        item_id=f"i{i}",
        seed=i,
    )


async def _drive(llm, requests: list[ChatRequest], concurrency: int) -> tuple[EventLog, list]:
    """Send ``requests`` through the runtime's instrumented wrapper, ``concurrency`` at a time."""
    clock = LoopClock()
    clock.start()
    log = EventLog(clock=clock)
    wrapped = InstrumentedLLM(llm, "task", log, InFlight())
    gate = asyncio.Semaphore(concurrency)

    async def one(request: ChatRequest):
        async with gate:
            return await wrapped.complete(request)

    results = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
    return log, results


def _counts(df: pl.DataFrame) -> dict[str, int]:
    reqs = frames.requests(df).filter(pl.col("outcome") == "finished")
    grouped = reqs.group_by("endpoint").len()
    return dict(zip(grouped["endpoint"].to_list(), grouped["len"].to_list(), strict=True))


# ---------------------------------------------------------------------------- virtual time


def test_least_outstanding_sends_more_to_the_faster_server_and_logs_each_endpoint() -> None:
    speeds = (1.0, 2.0, 4.0)
    r = Router([simulated(profile=VLLM, seed=0, speed=s) for s in speeds])
    labels = [e.label for e in r.endpoints]
    assert labels == [f"sim:{VLLM}#{i}" for i in (1, 2, 3)] and r.endpoint == "sim:router[3]"

    async def main():
        return await _drive(r, [_request(i) for i in range(300)], concurrency=48)

    log, results = run_virtual(main)
    assert all(not isinstance(x, BaseException) for x in results)
    df = log.frame()
    counts = _counts(df)
    assert sum(counts.values()) == 300 and set(counts) == set(labels)
    assert counts[labels[2]] > counts[labels[1]] > counts[labels[0]]  # 4x > 2x > 1x
    # every request was routed once, and its request_finished names where it was answered
    routed = df.filter(pl.col("kind") == Kind.REQUEST_ROUTED)
    assert routed.height == 300 and set(routed["endpoint"].to_list()) == set(labels)
    started = df.filter(pl.col("kind") == Kind.REQUEST_STARTED)
    assert set(started["endpoint"].to_list()) == {r.endpoint}
    per_endpoint = summary(df)["endpoints"]
    assert {k: v["requests"] for k, v in per_endpoint.items()} == counts
    assert all(v["tokens"] > 0 and v["failed"] == 0 for v in per_endpoint.values())
    assert sum(r.stats()["endpoints"][x]["finished"] for x in labels) == 300


def test_a_dead_endpoint_is_taken_out_and_its_requests_answered_elsewhere() -> None:
    dead = simulated(profile=VLLM, seed=0, faults="rate=1,refuse")
    r = Router(
        [simulated(profile=VLLM, seed=0), dead, simulated(profile=VLLM, seed=0)],
        settings={"check_every_s": 5.0},
    )
    dead_label = r.endpoints[1].label

    async def main():
        return await _drive(r, [_request(i) for i in range(200)], concurrency=32)

    log, results = run_virtual(main)
    assert all(not isinstance(x, BaseException) for x in results)  # no request lost
    df = log.frame()
    counts = _counts(df)
    assert sum(counts.values()) == 200 and counts.get(dead_label, 0) == 0
    table = {row["endpoint"]: row for row in endpoint_table(df).iter_rows(named=True)}
    assert table[dead_label]["moved_away"] >= 1 and table[dead_label]["downs"] >= 1
    moves = df.filter(pl.col("kind") == Kind.REQUEST_ROUTED)["data"].to_list()
    moved = [json.loads(d) for d in moves if json.loads(d)["reason"] == "moved"]
    assert moved and {m["moved_from"] for m in moved} == {dead_label}
    assert {m["fault"] for m in moved} <= {"connection", "circuit_open"}
    states = df.filter(pl.col("kind") == Kind.ENDPOINT_STATE)[["endpoint", "data"]]
    router_downs = [
        e
        for e, d in states.iter_rows()
        if json.loads(d).get("source") == "router" and json.loads(d)["state"] == "down"
    ]
    assert set(router_downs) == {dead_label}
    # it cannot be health-checked (in-process): it got trials after check_every_s, each of
    # which failed at once and took it out again
    assert r.endpoints[1].downs == table[dead_label]["downs"] >= 2


def test_affinity_keeps_a_system_prompt_on_one_server_until_it_is_busy() -> None:
    r = Router([simulated(profile=VLLM, seed=0) for _ in range(3)], affinity="system")
    prompts = [f"You are assistant number {k}." for k in range(12)]

    async def sequential():
        requests = [_request(i, prompts[i % 12]) for i in range(60)]
        return await _drive(r, requests, concurrency=1)

    log, _ = run_virtual(sequential)
    routed = log.frame().filter(pl.col("kind") == Kind.REQUEST_ROUTED)
    reasons = {json.loads(d)["reason"] for d in routed["data"].to_list()}
    assert reasons == {"affinity"}
    reqs = frames.requests(log.frame()).with_columns(
        pl.col("item_id").str.slice(1).cast(pl.Int64).mod(12).alias("prompt")
    )
    per_prompt = reqs.group_by("prompt").agg(pl.col("endpoint").n_unique().alias("servers"))
    assert per_prompt["servers"].max() == 1  # each prompt stayed on one server
    assert reqs["endpoint"].n_unique() > 1  # and the prompts spread over the servers

    async def crowded():  # one prompt, many at once: affinity yields to balance
        return await _drive(r, [_request(i, prompts[0]) for i in range(90)], concurrency=45)

    log, _ = run_virtual(crowded)
    counts = _counts(log.frame())
    assert len(counts) == 3 and max(counts.values()) < 90
    routed = log.frame().filter(pl.col("kind") == Kind.REQUEST_ROUTED)
    reasons = [json.loads(d)["reason"] for d in routed["data"].to_list()]
    assert "affinity_overflow" in reasons and "affinity" in reasons


def test_task_and_reflection_roles_use_their_own_routers() -> None:
    task_router = router([simulated(profile=VLLM, seed=s) for s in (0, 1)])
    reflection_router = router([simulated(profile="api-gpt-4o-mini", seed=s) for s in (0, 1)])
    evolver = Evolver(
        SimulatedTask(seed=0, n_train=20, n_val=10),
        {"task": task_router, "reflection": reflection_router},
        mode="async",
        budget={"seconds": 300},
        load_every_s=None,
    )
    evolver.run_virtual()
    reqs = evolver.requests.filter(pl.col("outcome") == "finished")
    by_role = reqs.group_by("role").agg(pl.col("endpoint").unique())
    roles = dict(zip(by_role["role"].to_list(), by_role["endpoint"].to_list(), strict=True))
    assert set(roles["task"]) == {e.label for e in task_router.endpoints}
    assert set(roles["reflection"]) == {e.label for e in reflection_router.endpoints}
    assert len(evolver.summary()["endpoints"]) == 4
    served = served_over_time(evolver.events, 60.0)
    assert served["requests"].sum() == reqs.height


# ---------------------------------------------------------------------------- real HTTP


def test_each_endpoint_cap_holds_and_the_rest_wait_at_the_router() -> None:
    with (
        serve_in_thread(ScriptedResponder("ok", latency=0.05)) as a,
        serve_in_thread(ScriptedResponder("ok", latency=0.2)) as b,
    ):
        r = Router([a, b], model="scripted", max_concurrency=3)
        assert r.max_concurrency == 6

        async def main():
            try:
                return await _drive(r, [_request(i) for i in range(60)], concurrency=30)
            finally:
                await r.aclose()

        log, results = asyncio.run(main())
    assert all(not isinstance(x, BaseException) for x in results)
    stats = r.stats()["endpoints"]
    assert {s["peak"] for s in stats.values()} == {3}  # never above a client's own cap
    counts = _counts(log.frame())
    assert counts[f"{a}"] > counts[f"{b}"]  # the faster server answered more


def test_with_no_endpoint_left_a_request_fails_after_give_up_s() -> None:
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]  # nothing listens there
    r = Router(
        dead,
        model="scripted",
        settings={"check_every_s": 0.05, "give_up_s": 0.5},
        resilience={"max_retries": 0},
    )

    async def main():
        try:
            return await _drive(r, [_request(0)], concurrency=1)
        finally:
            await r.aclose()

    log, results = asyncio.run(main())
    assert isinstance(results[0], LLMError) and results[0].fault == "circuit_open"
    df = log.frame()
    failed = df.filter(pl.col("kind") == Kind.REQUEST_FAILED)
    assert failed.height == 1 and "no endpoint answered for 0.5s" in failed["reason"][0]
    assert {s["state"] for s in r.stats()["endpoints"].values()} == {"down"}
    assert df.filter(pl.col("kind") == Kind.REQUEST_ROUTED).height >= 1


def test_a_rejected_request_fails_at_once_without_moving() -> None:
    def reject(request: ChatRequest, index: int) -> int | None:
        return 400

    with (
        serve_in_thread(ScriptedResponder("ok", error_fn=reject)) as a,
        serve_in_thread(ScriptedResponder("ok", error_fn=reject)) as b,
    ):
        r = Router([a, b], model="scripted")

        async def main():
            try:
                return await _drive(r, [_request(0)], concurrency=1)
            finally:
                await r.aclose()

        log, results = asyncio.run(main())
    assert isinstance(results[0], LLMError) and results[0].status == 400
    assert not results[0].infrastructure
    routed = log.frame().filter(pl.col("kind") == Kind.REQUEST_ROUTED)
    assert routed.height == 1  # the same request fails anywhere: not moved
    states = {s["state"] for s in r.stats()["endpoints"].values()}
    assert states == {"up"}  # a bad request says nothing about the server


def _key_preferring(r: Router, label: str) -> str:
    """An affinity key whose first endpoint is ``label``."""
    return next(
        k for k in (f"key{i}" for i in range(1000)) if rendezvous(k, r.endpoints)[0].label == label
    )


def test_cancelling_the_caller_aborts_the_request_on_its_server() -> None:
    slow = ScriptedResponder("late", latency=60.0)
    with serve_in_thread(slow) as a, serve_in_thread(ScriptedResponder("ok")) as b:
        key = {"k": ""}
        r = Router([a, b], model="scripted", affinity=lambda request: key["k"])
        key["k"] = _key_preferring(r, a)

        async def main():
            clock = LoopClock()
            clock.start()
            log = EventLog(clock=clock)
            wrapped = InstrumentedLLM(r, "task", log, InFlight())
            task = asyncio.create_task(wrapped.complete(_request(0)))
            for _ in range(2000):  # until the slow server works on it (bounded poll)
                if slow.in_flight:
                    break
                await asyncio.sleep(0.005)
            assert slow.in_flight == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(2000):  # the server sees the disconnect (bounded poll)
                if slow.cancelled:
                    break
                await asyncio.sleep(0.005)
            await r.aclose()
            return log

        log = asyncio.run(main())
    assert slow.cancelled == 1 and slow.in_flight == 0
    cancelled = log.frame().filter(pl.col("kind") == Kind.REQUEST_CANCELLED)
    assert cancelled["endpoint"].to_list() == [a]  # logged under the server that had it


# ---------------------------------------------------------------------------- settings


def test_endpoints_from_a_comma_list_a_text_file_and_json(tmp_path) -> None:
    parsed = parse_endpoints("http://h1:8000/v1, http://h2:8000/v1/")
    assert [e.base_url for e in parsed.endpoints] == ["http://h1:8000/v1", "http://h2:8000/v1"]
    text = tmp_path / "endpoints.txt"
    text.write_text("# two GPUs\nhttp://h1:8000/v1  max_concurrency=32\n\nhttp://h2:8000/v1\n")
    parsed = parse_endpoints(text)
    assert [e.max_concurrency for e in parsed.endpoints] == [32, None]
    data = {
        "model": "Qwen/Qwen3-8B",
        "endpoints": ["http://h1:8000/v1", {"base_url": "http://h2:8000/v1", "name": "gpu1"}],
        "router": {"affinity": "system"},
    }
    spec = tmp_path / "endpoints.json"
    spec.write_text(json.dumps(data))
    r = router(spec)
    assert r.model == "Qwen/Qwen3-8B" and r.settings.affinity == "system"
    assert [e.label for e in r.endpoints] == ["http://h1:8000/v1", "gpu1"]
    assert r.max_concurrency == 32  # two clients at the default cap of 16


def test_bad_endpoint_lists_name_the_line_and_the_fix(tmp_path) -> None:
    bad = tmp_path / "endpoints.txt"
    bad.write_text("http://h1:8000/v1\nhttp://h2:8000/v1 max_concurrency=0\n")
    with pytest.raises(ConfigError, match=r"endpoints.txt:2: max_concurrency"):
        parse_endpoints(bad)
    bad.write_text("h1:8000\n")
    with pytest.raises(ConfigError, match="not an http"):
        parse_endpoints(bad)
    with pytest.raises(ConfigError, match="listed twice"):
        parse_endpoints("http://h1/v1,http://h1/v1")
    with pytest.raises(ConfigError, match="not a file"):
        parse_endpoints("no-such-file.txt")
    with pytest.raises(ConfigError, match="give model="):
        router("http://h1:8000/v1")
    with pytest.raises(ConfigError, match="different models"):
        Router([simulated(profile=VLLM), simulated(profile="api-gpt-4o-mini")])
    with pytest.raises(ConfigError, match="affinity"):
        Router([simulated(profile=VLLM)], affinity="job")
    with pytest.raises(ConfigError, match="at least one endpoint"):
        Router([])


def test_command_line_options_make_a_router_only_for_several_endpoints(tmp_path) -> None:
    from flashevolve.backends.router import router_from_options

    assert router_from_options("http://h1:8000/v1", None, "m") is None
    r = router_from_options("http://h1:8000/v1,http://h2:8000/v1", None, "m", max_concurrency=8)
    assert isinstance(r, Router) and r.max_concurrency == 16
    listed = tmp_path / "endpoints.txt"
    listed.write_text("http://h1:8000/v1\n")
    assert len(router_from_options(None, str(listed), "m", stream=None).endpoints) == 1
    with pytest.raises(ConfigError, match="not both"):
        router_from_options("http://h1:8000/v1", str(listed), "m")


def test_backends_router_is_the_factory() -> None:
    from flashevolve import backends

    made = backends.router(["http://h1:8000/v1", "http://h2:8000/v1"], model="m")
    assert isinstance(made, backends.Router) and made.endpoint == "router[2]"
