"""Failover over real HTTP: a router over several ``flashevolve serve-sim`` processes, one killed
mid-run (SIGKILL: it disappears) and restarted on its port.

Requests keep coming from ``concurrency`` callers through the runtime's instrumented backend, so
everything is in an event log.  The phases are cut by what the log shows, not by the clock:
*before* (until the kill), *switching* (until the router takes the victim out), *during* (until
a health check takes it back after the restart), *returning* (until its client's circuit
breaker, opened by the kill, has closed again: the endpoint takes one request at a time) and
*after*.  The result says how many requests were issued and answered
(none may be lost), and how many each endpoint answered in each phase.

The servers are the serving *simulator* (``--speed`` times real time): the figures are about the
router, not about any hardware.  ``python -m flashevolve.bench.scaling --failover`` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from flashevolve.backends.base import ChatRequest
from flashevolve.backends.process import ManagedProcess, free_port, start_server
from flashevolve.backends.router import Router
from flashevolve.events.endpoints import endpoint_table
from flashevolve.events.log import EventLog
from flashevolve.events.schema import Event, Kind
from flashevolve.runtime.clock import LoopClock
from flashevolve.runtime.instrument import InFlight, InstrumentedLLM

SIM_MODEL = "Qwen/Qwen3-8B (simulated)"


@dataclass
class FailoverConfig:
    speeds: tuple[float, ...] = (10.0, 20.0, 40.0)  # one serve-sim per speed
    victim: int = -1  # index of the endpoint killed and restarted
    profile: str = "vllm-h100-qwen3-8b"
    concurrency: int = 24  # callers issuing requests back to back
    cap: int = 8  # each endpoint client's max_concurrency
    max_tokens: int = 64
    check_every_s: float = 0.25
    before: int = 150  # requests answered before the kill
    during: int = 150  # answered while the victim is out, before it is restarted
    after: int = 60  # answered by the victim after it is back
    max_requests: int = 20_000  # a bound on the whole scenario
    phase_timeout_s: float = 180.0  # a bound on each wait for the next phase
    seed: int = 0


def start_sim(port: int, speed: float, profile: str, seed: int = 0) -> ManagedProcess:
    command = [sys.executable, "-m", "flashevolve.cli", "serve-sim", "--profile", profile]
    command += ["--port", str(port), "--speed", f"{speed:g}", "--seed", str(seed)]
    return start_server(command, port=port, name=f"serve-sim-{port}", ready_timeout_s=120)


def kill(proc: ManagedProcess) -> None:
    """SIGKILL the whole process group (no goodbye), then reap it."""
    if proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.stop()


@dataclass
class _Marks:
    """Conditions the scenario waits for, set from the event log as events arrive."""

    victim: str
    answered: int = 0
    answered_by_victim_since_up: int = 0
    victim_down: asyncio.Event = field(default_factory=asyncio.Event)
    victim_up: asyncio.Event = field(default_factory=asyncio.Event)
    reached: dict[int, asyncio.Event] = field(default_factory=dict)
    victim_after: asyncio.Event = field(default_factory=asyncio.Event)
    after_goal: int = 0
    ts: dict[str, float] = field(default_factory=dict)

    def wait_for_answers(self, n: int) -> asyncio.Event:
        event = self.reached.setdefault(n, asyncio.Event())
        if self.answered >= n:
            event.set()
        return event

    def observe(self, event: Event) -> None:
        if event.kind == Kind.REQUEST_FINISHED:
            self.answered += 1
            for n, reached in self.reached.items():
                if self.answered >= n:
                    reached.set()
            if event.endpoint == self.victim and self.victim_up.is_set():
                self.answered_by_victim_since_up += 1
                if self.answered_by_victim_since_up >= self.after_goal:
                    self.victim_after.set()
        elif event.kind == Kind.ENDPOINT_STATE and event.endpoint == self.victim:
            state = (event.data or {}).get("state")
            if (event.data or {}).get("source") != "router":  # its client's circuit breaker
                if state == "closed" and self.victim_up.is_set():
                    self.ts.setdefault("circuit_closed", event.ts)
                return
            if state == "down" and not self.victim_down.is_set():
                self.ts["down"] = event.ts
                self.victim_down.set()
            elif state == "up" and self.victim_down.is_set() and not self.victim_up.is_set():
                self.ts["up"] = event.ts
                self.victim_up.set()


async def drive(
    llm: InstrumentedLLM,
    router: Router,
    config: FailoverConfig,
    kill_victim: Any,
    restart_victim: Any,
    clock: LoopClock,
) -> dict[str, Any]:
    """Callers issue requests until the victim answered ``after`` requests after its return."""
    victim = router.endpoints[config.victim].label
    marks = _Marks(victim, after_goal=config.after)
    llm.log.subscribe(marks.observe)
    issued = {"n": 0}
    stop = asyncio.Event()

    async def caller(i: int) -> None:
        while not stop.is_set() and issued["n"] < config.max_requests:
            issued["n"] += 1
            n = issued["n"]
            request = ChatRequest(
                messages=[
                    {"role": "system", "content": f"You are caller {i}."},
                    {"role": "user", "content": f"question {n}"},
                ],
                max_tokens=config.max_tokens,
                stage="rollout",
                item_id=f"c{i}",
                seed=n,
            )
            await llm.complete(request)

    callers = [asyncio.create_task(caller(i)) for i in range(config.concurrency)]

    async def phase(event: asyncio.Event, what: str) -> None:
        try:
            await asyncio.wait_for(event.wait(), config.phase_timeout_s)
        except TimeoutError:
            raise RuntimeError(f"failover scenario: {what} did not happen") from None

    try:
        await phase(marks.wait_for_answers(config.before), f"{config.before} answers")
        marks.ts["kill"] = clock.now()
        await asyncio.to_thread(kill_victim)
        await phase(marks.victim_down, "the router taking the victim out")
        goal = marks.answered + config.during
        await phase(marks.wait_for_answers(goal), f"{config.during} answers without the victim")
        marks.ts["restart"] = clock.now()
        await asyncio.to_thread(restart_victim)
        await phase(marks.victim_up, "the router taking the victim back")
        await phase(marks.victim_after, f"{config.after} answers from the victim after its return")
    finally:
        stop.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return {"issued": issued["n"], "victim": victim, "marks": dict(marks.ts)}


def phase_counts(df: pl.DataFrame, marks: dict[str, float]) -> dict[str, dict[str, int]]:
    """Requests answered per endpoint in each phase (by the time they were answered)."""
    finished = df.filter(pl.col("kind") == Kind.REQUEST_FINISHED)
    closed = marks.get("circuit_closed", marks["up"])  # its client's breaker closed again
    bounds = {
        "before": (float("-inf"), marks["kill"]),
        "switching": (marks["kill"], marks["down"]),
        "during": (marks["down"], marks["up"]),
        "returning": (marks["up"], closed),
        "after": (closed, float("inf")),
    }
    out = {}
    for name, (lo, hi) in bounds.items():
        part = finished.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
        counts = part.group_by("endpoint", maintain_order=True).len()
        out[name] = dict(zip(counts["endpoint"].to_list(), counts["len"].to_list(), strict=True))
    return out


async def _scenario(config: FailoverConfig, procs: list[ManagedProcess], ports: list[int]) -> Any:
    urls = [f"http://127.0.0.1:{p}/v1" for p in ports]
    router = Router(
        urls,
        model=SIM_MODEL,
        max_concurrency=config.cap,
        settings={"check_every_s": config.check_every_s},
    )
    clock = LoopClock()
    clock.start()
    log = EventLog(clock=clock)
    llm = InstrumentedLLM(router, "task", log, InFlight())
    victim = config.victim % len(procs)

    def kill_victim() -> None:
        kill(procs[victim])

    def restart_victim() -> None:
        procs[victim] = start_sim(ports[victim], config.speeds[victim], config.profile)

    try:
        run = await drive(llm, router, config, kill_victim, restart_victim, clock)
    finally:
        await router.aclose()
    return run, log.frame(), router


def run_failover(config: FailoverConfig | None = None) -> tuple[dict[str, Any], pl.DataFrame]:
    """Start the servers, run the scenario, stop them; (result, event frame)."""
    config = config or FailoverConfig()
    ports = [free_port() for _ in config.speeds]
    procs: list[ManagedProcess] = []
    try:
        for port, speed in zip(ports, config.speeds, strict=True):
            procs.append(start_sim(port, speed, config.profile, config.seed))
        run, df, router = asyncio.run(_scenario(config, procs, ports))
    finally:
        for proc in procs:
            proc.stop()
    kinds = df.group_by("kind").len()
    count = dict(zip(kinds["kind"].to_list(), kinds["len"].to_list(), strict=True))
    table = endpoint_table(df)
    result = {
        "simulated": True,
        "config": asdict(config),
        "endpoints": [e.label for e in router.endpoints],
        "speeds": dict(zip([e.label for e in router.endpoints], config.speeds, strict=True)),
        "victim": run["victim"],
        "issued": run["issued"],
        "answered": count.get(str(Kind.REQUEST_FINISHED), 0),
        "failed": count.get(str(Kind.REQUEST_FAILED), 0),
        "cancelled": count.get(str(Kind.REQUEST_CANCELLED), 0),
        "moved": int(table["moved_away"].sum()),
        "retries": count.get(str(Kind.REQUEST_RETRIED), 0),
        "marks": run["marks"],
        "phases": phase_counts(df, run["marks"]),
        "per_endpoint": table.to_dicts(),
    }
    result["lost"] = result["issued"] - result["answered"]
    return result, df
