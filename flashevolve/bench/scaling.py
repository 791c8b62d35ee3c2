"""Scaling over endpoints: accepted proposals per minute as a router spreads async GEPA over N
simulated vLLM servers (N = 1, 2, 4, 8), and the failover scenario over real HTTP.

Every number of the scaling table is **simulated**: N in-process serving simulators
(``backends.simulated``, the calibrated ``vllm-h100-qwen3-8b`` profile) behind
``backends.router``, on virtual time, on the calibrated GEPA workload (docs/simulator.md).  It
shows how the orchestration and the router use N servers, not what N GPUs do.

Each endpoint gets the same load whatever N: ``workers_per_endpoint`` workers per stage and
``in_flight_per_endpoint`` jobs per endpoint.  The N = 1 row is one endpoint's rate; a row's
``speed-up`` is its accepted/min over that, ``efficiency`` the speed-up over N (the goal:
at least 0.8).  Where efficiency falls, the other columns say why: the servers' own queue
(``queued/served``: the servers are full), the share of proposals accepted and the gate's pass
rate (the workflow: more jobs in flight against one pool make more proposals from the same
parents, and a run that climbs faster meets a harder gate), stale items.

    python -m flashevolve.bench.scaling [--endpoints 1,2,4,8] [--minutes 60] [--seeds 0,1,2]
                                        [--json docs/results/scaling.json]
    python -m flashevolve.bench.scaling --failover [--json docs/results/failover.json]
    python -m flashevolve.bench.scaling --overhead [--json docs/results/router-overhead.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from flashevolve.errors import ConfigError, UserError

PROFILE = "vllm-h100-qwen3-8b"


@dataclass(frozen=True)
class ScalingConfig:
    endpoints: tuple[int, ...] = (1, 2, 4, 8)
    minutes: float = 60.0
    seeds: tuple[int, ...] = (0, 1, 2)
    workers_per_endpoint: int = 16  # per stage
    in_flight_per_endpoint: int = 128  # jobs
    profile: str = PROFILE


def run_point(n: int, seed: int, config: ScalingConfig) -> dict[str, Any]:
    """One run: async GEPA over a router of ``n`` simulated servers, on virtual time."""
    from flashevolve import Evolver
    from flashevolve.backends.router import Router
    from flashevolve.backends.sim import SimulatedLLM, SimulatedTask
    from flashevolve.backends.sim.calibrate import N_TRAIN, N_VAL

    # what backends.simulated() builds without faults or resilience settings
    servers = [SimulatedLLM(profile=config.profile, seed=seed) for _ in range(n)]
    router = Router(servers)
    workers = config.workers_per_endpoint * n
    evolver = Evolver(
        SimulatedTask(seed=seed, n_train=N_TRAIN, n_val=N_VAL),
        router,
        mode="async",
        budget={"seconds": config.minutes * 60},
        seed=seed,
        workers={"rollout": workers, "propose": workers, "evaluate": workers},
        max_in_flight=config.in_flight_per_endpoint * n,
        name=f"{n} endpoints",
    )
    t0 = time.perf_counter()
    summary = evolver.run_virtual()
    wall = time.perf_counter() - t0
    stats = [s.stats() for s in servers]
    served = [e["requests"] for e in summary["endpoints"].values()]
    duration = max(summary["duration_s"], 1e-9)
    attainable = servers[0].profile.attainable_tokens_per_s
    return {
        "endpoints": n,
        "seed": seed,
        "accepted_per_min": summary["accepted_per_min"],
        "proposals_per_min": summary["proposals_per_min"],
        "validations_per_min": summary["validations_per_min"],
        "accepted_share": summary["accepted"] / max(1, summary["proposals"]),
        "gate_pass_rate": summary["gate_pass_rate"],
        "best_score": summary["best_score"],
        "stale_seen": summary["stale_seen"],
        "mean_concurrency": summary["mean_concurrency"],
        "per_endpoint_concurrency": mean(s["mean_concurrency"] for s in stats),
        "utilization": mean(s["completed_tokens"] / duration / attainable for s in stats),
        "server_queue_ratio": mean(
            s["mean_waiting"] / max(s["mean_concurrency"], 1e-9) for s in stats
        ),
        "balance": min(served) / max(served) if served and max(served) else None,
        "requests": summary["requests"],
        "wall_s": wall,
        "simulated": True,
    }


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        values = [r[key] for r in rows]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = sum(values) / len(values)
        else:
            out[key] = value if all(v == value for v in values) else None
    out["seeds"] = [r["seed"] for r in rows]
    out["accepted_per_min_by_seed"] = [round(r["accepted_per_min"], 3) for r in rows]
    out.pop("seed", None)
    return out


def run_scaling(config: ScalingConfig, progress: Any = None) -> list[dict[str, Any]]:
    rows = []
    for n in config.endpoints:
        runs = []
        for seed in config.seeds:
            if progress:
                progress(f"{n} endpoint(s), seed {seed} ...")
            runs.append(run_point(n, seed, config))
        row = _mean_rows(runs)
        row["endpoints"] = n
        rows.append(row)
    base = next((r for r in rows if r["endpoints"] == 1), None)
    for row in rows:
        one = base["accepted_per_min"] if base else None
        row["speedup"] = row["accepted_per_min"] / one if one else None
        row["efficiency"] = row["speedup"] / row["endpoints"] if row["speedup"] else None
    return rows


def router_overhead(metric_calls: int = 20_000, seed: int = 0) -> list[dict[str, Any]]:
    """What the router costs the orchestrator: async GEPA on zero-latency backends (answers at
    once, no time passes; bench/overhead.py), directly and behind routers of 1 and 4 endpoints.
    Wall-clock figures: indicative, on whatever else the machine runs."""
    import polars as pl

    from flashevolve import Evolver
    from flashevolve.backends.router import Router
    from flashevolve.backends.sim import SimulatedTask
    from flashevolve.bench.overhead import ZeroLatencyLLM
    from flashevolve.events.schema import Kind

    rows: list[dict[str, Any]] = []
    for label, endpoints in (("direct", 0), ("router, 1 endpoint", 1), ("router, 4 endpoints", 4)):
        backend: Any = ZeroLatencyLLM(seed)
        if endpoints:
            backend = Router([ZeroLatencyLLM(seed) for _ in range(endpoints)])
        evolver = Evolver(
            SimulatedTask(seed=seed),
            backend,
            mode="async",
            budget={"metric_calls": metric_calls},
            seed=seed,
            workers={"rollout": 8, "propose": 8, "evaluate": 8},
            max_in_flight=64,
            load_every_s=None,
        )
        t0 = time.perf_counter()
        evolver.run_virtual()
        wall = time.perf_counter() - t0
        requests = evolver.events.filter(pl.col("kind") == Kind.REQUEST_FINISHED).height
        rows.append(
            {
                "backend": label,
                "requests": requests,
                "wall_s": wall,
                "requests_per_s": requests / wall,
                "us_per_request": 1e6 * wall / max(1, requests),
            }
        )
    direct = rows[0]["us_per_request"]
    for row in rows:
        row["router_us_per_request"] = row["us_per_request"] - direct
    return rows


OVERHEAD_COLUMNS = [
    ("backend", "backend", ""),
    ("requests", "requests", "d"),
    ("wall_s", "wall s", ".2f"),
    ("requests_per_s", "requests/s", ",.0f"),
    ("us_per_request", "us/request", ".0f"),
    ("router_us_per_request", "router us/request", "+.0f"),
]


COLUMNS = [
    ("accepted_per_min", "accepted/min", ".2f"),
    ("endpoints", "endpoints", "d"),
    ("speedup", "speed-up", ".2f"),
    ("efficiency", "efficiency", ".2f"),
    ("proposals_per_min", "proposals/min", ".1f"),
    ("accepted_share", "accepted/proposals", ".1%"),
    ("gate_pass_rate", "gate pass", ".1%"),
    ("stale_seen", "stale items", ".0f"),
    ("per_endpoint_concurrency", "conc/endpoint", ".0f"),
    ("utilization", "utilization", ".1%"),
    ("server_queue_ratio", "queued/served", ".2f"),
    ("balance", "min/max served", ".2f"),
    ("best_score", "best val", ".3f"),
    ("wall_s", "wall s", ".1f"),
]


def format_scaling(rows: list[dict[str, Any]]) -> str:
    from flashevolve.commands.common import format_table

    return format_table(rows, COLUMNS)


def format_failover(result: dict[str, Any]) -> str:
    from flashevolve.commands.common import format_table

    phases = ("before", "switching", "during", "returning", "after")
    rows = []
    for label in result["endpoints"]:
        row: dict[str, Any] = {"endpoint": label, "speed": f"{result['speeds'][label]:g}x"}
        row["role"] = "killed + restarted" if label == result["victim"] else ""
        for phase in phases:
            row[phase] = result["phases"][phase].get(label, 0)
        rows.append(row)
    cols = [("endpoint", "endpoint", ""), ("speed", "speed", ""), ("role", "", "")]
    cols += [(p, p, "d") for p in phases]
    head = (
        f"requests issued {result['issued']}, answered {result['answered']}, failed "
        f"{result['failed']}, lost {result['lost']}; moved off the killed endpoint "
        f"{result['moved']}"
    )
    return head + "\n" + format_table(rows, cols)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes a comma list of integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"{flag} takes a comma list of non-negative integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flashevolve.bench.scaling", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--endpoints", default="1,2,4,8", help="numbers of simulated servers")
    parser.add_argument("--minutes", type=float, default=60.0, help="simulated minutes per run")
    parser.add_argument("--seeds", default="0,1,2", help="seeds; each row is their mean")
    parser.add_argument("--workers-per-endpoint", type=int, default=16)
    parser.add_argument("--in-flight-per-endpoint", type=int, default=128)
    parser.add_argument("--failover", action="store_true", help="run the failover scenario")
    parser.add_argument(
        "--overhead", action="store_true", help="the router's cost per request (wall clock)"
    )
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    payload: Any
    try:
        if args.overhead:
            from flashevolve.commands.common import format_table

            payload = router_overhead()
            print("zero-latency backends (bench/overhead.py), wall clock: indicative")
            print(format_table(payload, OVERHEAD_COLUMNS))
        elif args.failover:
            from flashevolve.bench.failover import run_failover

            result, _ = run_failover()
            print("SIMULATED servers (serve-sim processes over real HTTP)")
            print(format_failover(result))
            payload = result
        else:
            if (
                args.minutes <= 0
                or args.workers_per_endpoint < 1
                or args.in_flight_per_endpoint < 1
            ):
                raise ConfigError(
                    "--minutes, --workers-per-endpoint and --in-flight-per-endpoint must be positive"
                )
            config = ScalingConfig(
                endpoints=_ints(args.endpoints, "--endpoints"),
                minutes=args.minutes,
                seeds=_ints(args.seeds, "--seeds"),
                workers_per_endpoint=args.workers_per_endpoint,
                in_flight_per_endpoint=args.in_flight_per_endpoint,
            )
            rows = run_scaling(config, progress=lambda m: print(m, file=sys.stderr, flush=True))
            print(
                f"SIMULATED: async GEPA over N {PROFILE} simulators behind backends.router, "
                f"{config.minutes:g} virtual minutes, mean of seeds {list(config.seeds)}"
            )
            print(format_scaling(rows))
            payload = {"config": asdict(config), "rows": rows}
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
