"""``flashevolve bench``: throughput of workflow configurations on the serving simulator."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flashevolve.commands.common import dumps_readable
from flashevolve.commands.sim_options import add_profile_option

#: GEPA's default rows; the other workflows' benches default to sync,async
DEFAULT_CONFIGS = "sync,async,k1=1/k3=1,k1=16/k3=8"

NAME = "bench"
HELP = (
    "benchmark configurations (sync, async, ablations, ...) on the serving simulator "
    "for M simulated minutes; prints a table and writes JSON"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_profile_option(p)
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="simulated minutes per config (default 30); with --peer, wall minutes per side "
        "(default 5)",
    )
    p.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help="comma list of configurations (see --list); 'grid' expands to the fixed grid "
        "fixedW@B, W in 4,8,16,32 and B in 16,32,64,96,128",
    )
    p.add_argument(
        "--staleness",
        default=None,
        help="comma list of staleness policies to sweep, e.g. full,guarded,reflective",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds",
        default=None,
        help="comma list of seeds, e.g. 0,1,2: each row is the mean over them "
        "(per-seed rows in the JSON)",
    )
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument(
        "--overhead",
        action="store_true",
        help="measure orchestrator overhead instead (zero-latency backend)",
    )
    p.add_argument("--list", action="store_true", help="list configurations and exit")
    p.add_argument(
        "--workflow",
        default="gepa",
        choices=("gepa", "ace", "meta-harness"),
        help="the workflow to bench (ace and meta-harness: their own configurations, default "
        "sync,async; see --list)",
    )
    p.add_argument(
        "--combee",
        action="store_true",
        help="GEPA rows with Combee reflection: sync, Combee k=10/k=40 on the sync loop, and "
        "async (the rows when --configs is not given; also combee-k10-async, ...)",
    )
    p.add_argument(
        "--peer",
        choices=("gepa",),
        default=None,
        help="the real gepa package's own loop against flashevolve async GEPA, both over HTTP "
        "on one simulated server (python -m flashevolve.bench.peer for its options)",
    )


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args)
    _check_budget(args)
    if args.overhead:
        return _overhead(args)
    if args.peer:
        return _peer(args)
    if args.workflow != "gepa":
        return _workflow_bench(args)
    return _gepa_bench(args)


def _list(args: argparse.Namespace) -> int:
    """``--list``: the configurations of the chosen workflow's bench."""
    if args.workflow != "gepa":
        for name, config in _bench_of(args).configs.items():
            print(f"{name:24s} {config.description}")
        return 0
    from flashevolve.bench.throughput import available_configs, get_config

    for name in available_configs():
        print(f"{name:24s} {get_config(name).description}")
    print(f"{'fixedW@B':24s} W workers in every stage, B jobs in flight, no controller")
    print(f"{'fixedR/P/G/V@B':24s} rollout/propose/gate/validate workers, B jobs in flight")
    print(f"{'...+winddown':24s} a fixed row that winds down before the deadline (auto)")
    return 0


def _check_budget(args: argparse.Namespace) -> None:
    """``--minutes`` (its default depends on ``--peer``) and ``--profile``, checked early."""
    from flashevolve.backends.sim import get_profile
    from flashevolve.errors import ConfigError

    if args.minutes is None:
        args.minutes = 5.0 if args.peer else 30.0
    if args.minutes <= 0:
        raise ConfigError("--minutes must be positive")
    get_profile(args.profile)  # fails early with the list of profiles


def _gepa_configs(args: argparse.Namespace) -> list[str]:
    """``--configs`` (``grid`` expanded; the Combee rows with ``--combee``), each checked."""
    from flashevolve.bench.throughput import FIXED_GRID, get_config

    given = args.configs
    if args.combee and given == DEFAULT_CONFIGS:
        given = "sync,combee-k10,combee-k40,async"
    configs: list[str] = []
    for c in (c.strip() for c in given.split(",")):
        configs += FIXED_GRID if c == "grid" else [c] if c else []
    for name in configs:
        get_config(name)
    return configs


def _gepa_bench(args: argparse.Namespace) -> int:
    """GEPA's rows (with ``--staleness``, one per policy too): a table, and ``--json``."""
    from flashevolve.bench.throughput import format_rows, run_bench

    configs = _gepa_configs(args)
    policies = [s.strip() for s in args.staleness.split(",")] if args.staleness else None
    seeds = _seeds(args.seeds) if args.seeds else [args.seed]
    print(
        f"SIMULATED serving ({args.profile}), {args.minutes:g} simulated minutes per config, "
        f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}",
        file=sys.stderr,
    )
    rows = run_bench(
        configs,
        profile=args.profile,
        minutes=args.minutes,
        seeds=seeds,
        staleness=policies,
        progress=lambda m: print(m, file=sys.stderr),
    )
    print(f"# flashevolve bench --profile {args.profile} --minutes {args.minutes:g} (simulated)")
    print(format_rows(rows, staleness=bool(policies)))
    if args.json:
        payload = {
            "profile": args.profile,
            "minutes": args.minutes,
            "seeds": seeds,
            "simulated": True,
            "rows": rows,
        }
        Path(args.json).write_text(dumps_readable(payload))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _seeds(text: str) -> list[int]:
    from flashevolve.errors import ConfigError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds wants integers separated by commas, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds is empty; give e.g. --seeds 0,1,2")
    return seeds


def _overhead(args: argparse.Namespace) -> int:
    from flashevolve.bench.overhead import items_per_second, simulated_run_fraction

    zero = items_per_second(seed=args.seed)
    frac = simulated_run_fraction(args.profile, args.minutes, seed=args.seed)
    print(
        f"zero-latency backend: {zero['items']} queue items in {zero['wall_s']:.2f} s = "
        f"{zero['items_per_s']:,.0f} items/s ({zero['requests_per_s']:,.0f} requests/s, "
        f"{zero['events']} events)"
    )
    print(
        f"{args.profile} (simulated), {frac['simulated_s'] / 60:g} min async run: "
        f"{frac['wall_s']:.2f} s wall for {frac['simulated_s']:.0f} s simulated = "
        f"{frac['fraction']:.3%} of the run's span (orchestrator + simulator)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"zero_latency": zero, "simulated_run": frac}, indent=2)
        )
    return 0


def _bench_of(args: argparse.Namespace) -> Any:
    if args.workflow == "ace":
        from flashevolve.bench.ace import BENCH as ace_bench

        return ace_bench
    from flashevolve.bench.meta_harness import BENCH as mh_bench

    return mh_bench


def _workflow_bench(args: argparse.Namespace) -> int:
    """ACE, Meta-Harness or Combee rows (their own configurations; 'sync,async' by default)."""
    from flashevolve.bench.workflow_bench import COLUMNS, run_workflow_bench, stage_columns
    from flashevolve.commands.common import format_table

    bench = _bench_of(args)
    given = args.configs if args.configs != DEFAULT_CONFIGS else "sync,async"
    configs = [c.strip() for c in given.split(",") if c.strip()]
    seeds = _seeds(args.seeds) if args.seeds else [args.seed]
    print(
        f"SIMULATED serving ({args.profile}), {bench.workflow}, {args.minutes:g} simulated minutes per "
        f"config, seeds {','.join(map(str, seeds))}",
        file=sys.stderr,
    )
    rows = run_workflow_bench(
        bench,
        configs,
        profile=args.profile,
        minutes=args.minutes,
        seeds=seeds,
        progress=lambda m: print(m, file=sys.stderr),
    )
    print(
        f"# flashevolve bench --workflow {bench.workflow} "
        f"--profile {args.profile} --minutes {args.minutes:g} (simulated)"
    )
    print(format_table(rows, COLUMNS + stage_columns(bench)))
    if args.json:
        payload = {
            "workflow": bench.workflow,
            "profile": args.profile,
            "minutes": args.minutes,
            "seeds": seeds,
            "simulated": True,
            "rows": rows,
        }
        Path(args.json).write_text(dumps_readable(payload))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _peer(args: argparse.Namespace) -> int:
    from flashevolve.bench.peer import main as peer_main

    argv = ["--minutes", f"{args.minutes:g}", "--seed", str(args.seed)]
    if args.json:
        argv += ["--json", args.json]
    peer_main(argv)
    return 0
