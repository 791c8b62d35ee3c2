"""The fault run of docs/reliability.md: an async GEPA run against a server that injects faults,
beside the same run without faults; prints a table and writes JSON.

Over HTTP (default) the server is flashevolve's scripted server (the simulator's workload
content after a long-tailed lognormal latency) in a thread on 127.0.0.1, with ``--faults``; the
client is ``OpenAICompatLLM`` with its default reliability settings.  With ``--sim`` the run is
the in-process simulator on virtual time instead (``backends.simulated(faults=...)``): minutes
of simulated time in seconds, numbers labelled simulated.

    python scripts/chaos_faults.py --minutes 30 --faults rate=0.25 --out chaos.json
    python scripts/chaos_faults.py --sim --minutes 30 --faults rate=0.25

Reported per run: accepted proposals per minute, faults injected (the server's count) and
observed in the event log (per fault kind, and whether they match), retries, hedges (sent, won,
wasted tokens), requests that failed for good (each logged with its fault), requests lost
(started and never ended: must be 0), rollouts that ended as infrastructure failures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from flashevolve import Evolver
from flashevolve.backends import simulated
from flashevolve.backends.faults import OBSERVED_AS, FaultKind, parse_fault_spec
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.server import LognormalLatency, ScriptedResponder, serve_in_thread
from flashevolve.events.schema import Event, Kind

FAULT_EVENTS = {Kind.REQUEST_RETRIED, Kind.REQUEST_FAULT, Kind.REQUEST_FAILED}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=2.0, help="budget of each run")
    p.add_argument("--faults", default="rate=0.25", help="fault SPEC (docs/reliability.md)")
    p.add_argument("--in-flight", type=int, default=64, help="jobs in flight and client cap")
    p.add_argument("--latency-mean", type=float, default=2.0, help="scripted server, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sim", action="store_true", help="in-process simulator, virtual time")
    p.add_argument(
        "--hedge-budget",
        type=float,
        default=None,
        help="the client's hedge budget (fraction of requests; 0 = no hedging; default: the "
        "client's default)",
    )
    p.add_argument("--no-reference", action="store_true", help="skip the fault-free run")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


@contextlib.contextmanager
def _backend(args: argparse.Namespace, faults: str | None) -> Iterator[tuple[Any, Any]]:
    """(llm, read_server_faults) for one run."""
    resilience = {} if args.hedge_budget is None else {"hedge_budget": args.hedge_budget}
    if args.sim:
        llm = simulated(seed=args.seed, faults=faults or None, resilience=resilience)
        yield llm, lambda: llm.stats().get("faults")
        return
    responder = ScriptedResponder(
        None, latency=LognormalLatency(args.latency_mean, 1.0), seed=args.seed
    )
    with serve_in_thread(responder, faults=faults) as url:
        llm = OpenAICompatLLM(
            url, responder.model, max_concurrency=args.in_flight, resilience=resilience
        )

        def server_faults() -> dict[str, Any] | None:
            stats = httpx.get(url.removesuffix("/v1") + "/stats", timeout=10, trust_env=False)
            return stats.json().get("faults")

        yield llm, server_faults


def _observed(events: list[Event]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for e in events:
        if e.kind in FAULT_EVENTS and e.data and e.data.get("fault"):
            seen[e.data["fault"]] += 1
    return seen


def _lost(events: list[Event]) -> int:
    started = {e.request_id for e in events if e.kind == Kind.REQUEST_STARTED}
    ended = {
        e.request_id
        for e in events
        if e.kind in (Kind.REQUEST_FINISHED, Kind.REQUEST_FAILED, Kind.REQUEST_CANCELLED)
    }
    return len(started - ended)


def one_run(args: argparse.Namespace, faults: str | None) -> dict[str, Any]:
    with _backend(args, faults) as (llm, server_faults):
        evolver = Evolver(
            "sim",
            llm,
            mode="async",
            budget=args.minutes * 60,
            seed=args.seed,
            max_in_flight=args.in_flight,
            name="faults" if faults else "reference",
        )
        summary = evolver.run_virtual() if args.sim else evolver.run_sync()
        injected = server_faults()
        events = evolver.event_list()
    seen = _observed(events)
    expected: Counter[str] = Counter((injected or {}).get("expected_client_faults", {}))
    injected_by_kind = (injected or {}).get("injected", {})
    kinds = Counter(e.kind for e in events)
    hedged = [e for e in events if e.kind == Kind.HEDGE_RESOLVED]
    infra = sum(
        1
        for e in events
        if e.kind == Kind.REQUEST_FAILED and e.data and e.data.get("infrastructure")
    )
    stuck = sum(injected_by_kind.get(str(k), 0) for k in (FaultKind.HANG, FaultKind.DRIP))
    immediate = {f: n for f, n in expected.items() if f != "timeout"}
    return {
        "run": "faults" if faults else "reference",
        "faults": faults,
        "simulated": args.sim,
        "minutes": args.minutes,
        "accepted_per_min": summary["accepted_per_min"],
        "proposals_per_min": summary["proposals_per_min"],
        "requests": summary["requests"],
        "injected": (injected or {}).get("injected_total", 0),
        "injected_by_kind": injected_by_kind,
        "observed": sum(seen.values()),
        "observed_by_fault": dict(sorted(seen.items())),
        # faults that end an attempt at once: each must be in the log, one for one
        "immediate_all_logged": all(seen.get(f, 0) == n for f, n in immediate.items()),
        "immediate_injected": sum(immediate.values()),
        "immediate_logged": sum(min(seen.get(f, 0), n) for f, n in immediate.items()),
        "unlogged_by_fault": {
            f: n - seen.get(f, 0) for f, n in sorted(immediate.items()) if seen.get(f, 0) < n
        },
        # items a fault killed (an error event of a stage) and items the watchdog had to free
        "items_lost_to_faults": sum(1 for e in events if e.kind == Kind.ERROR and e.stage),
        "hung_items_cancelled": kinds.get(Kind.WATCHDOG, 0),
        # hangs and drips: a timeout in the log, or the loser of a hedged race
        "stuck_injected": stuck,
        "timeouts_observed": seen.get("timeout", 0),
        "retries": kinds.get(Kind.REQUEST_RETRIED, 0),
        "hedges_sent": kinds.get(Kind.REQUEST_HEDGED, 0),
        "hedges_won": sum(1 for e in hedged if e.data and e.data.get("winner") == "hedge"),
        "hedge_wasted_tokens": sum((e.data or {}).get("wasted_tokens") or 0 for e in hedged),
        "breaker_changes": kinds.get(Kind.ENDPOINT_STATE, 0),
        "requests_failed": kinds.get(Kind.REQUEST_FAILED, 0),
        "requests_failed_infrastructure": infra,
        "requests_lost": _lost(events),
    }


COLUMNS = (
    ("run", "run", ""),
    ("accepted_per_min", "accepted/min", ".1f"),
    ("requests", "requests", "d"),
    ("injected", "injected", "d"),
    ("observed", "observed", "d"),
    ("immediate_all_logged", "all logged", ""),
    ("stuck_injected", "hang+drip", "d"),
    ("timeouts_observed", "timeouts", "d"),
    ("retries", "retries", "d"),
    ("hedges_sent", "hedges", "d"),
    ("hedges_won", "won", "d"),
    ("requests_failed", "failed", "d"),
    ("requests_lost", "lost", "d"),
    ("items_lost_to_faults", "items lost", "d"),
    ("hung_items_cancelled", "hung", "d"),
)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    spec = parse_fault_spec(args.faults)
    if spec is None:
        print("--faults names no faults; nothing to compare", file=sys.stderr)
        return 2
    rows = [one_run(args, spec.describe())]
    if not args.no_reference:
        rows.append(one_run(args, None))
    from flashevolve.commands.common import format_table

    label = "SIMULATED (virtual time)" if args.sim else "real time over HTTP on 127.0.0.1"
    print(f"fault run, {args.minutes:g} min each, {label}, faults: {spec.describe()}")
    print(format_table(rows, COLUMNS))
    if len(rows) == 2 and rows[1]["accepted_per_min"]:
        ratio = rows[0]["accepted_per_min"] / rows[1]["accepted_per_min"]
        print(f"accepted/min with faults / without: {ratio:.2f}")
    for row in rows[:1]:
        print("observed by fault:", row["observed_by_fault"])
        print(
            "mapping of injected kinds to client faults:",
            {str(k): str(v) for k, v in OBSERVED_AS.items()},
        )
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2, sort_keys=True))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
