"""``flashevolve bench``: throughput of workflow configurations on the serving simulator."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flashevolve.commands.common import dumps_readable
from flashevolve.commands.sim_options import add_profile_option

NAME = "bench"
HELP = (
    "benchmark configurations (sync, async, ablations, ...) on the serving simulator "
    "for M simulated minutes; prints a table and writes JSON"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_profile_option(p)
    p.add_argument("--minutes", type=float, default=30.0, help="simulated minutes per config")
    p.add_argument(
        "--configs",
        default="sync,async,k1=1/k3=1,k1=16/k3=8",
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


def run(args: argparse.Namespace) -> int:
    from flashevolve.backends.sim import get_profile
    from flashevolve.bench.throughput import available_configs, format_rows, get_config, run_bench
    from flashevolve.errors import ConfigError

    if args.list:
        for name in available_configs():
            print(f"{name:24s} {get_config(name).description}")
        print(f"{'fixedW@B':24s} W workers in every stage, B jobs in flight, no controller")
        print(f"{'fixedR/P/G/V@B':24s} rollout/propose/gate/validate workers, B jobs in flight")
        print(f"{'...+winddown':24s} a fixed row that winds down before the deadline (auto)")
        return 0
    if args.minutes <= 0:
        raise ConfigError("--minutes must be positive")
    get_profile(args.profile)  # fails early with the list of profiles
    if args.overhead:
        return _overhead(args)
    from flashevolve.bench.throughput import FIXED_GRID

    configs = []
    for c in (c.strip() for c in args.configs.split(",")):
        configs += FIXED_GRID if c == "grid" else [c] if c else []
    for name in configs:
        get_config(name)
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
        Path(args.json).write_text(
            dumps_readable(
                {
                    "profile": args.profile,
                    "minutes": args.minutes,
                    "seeds": seeds,
                    "simulated": True,
                    "rows": rows,
                }
            )
        )
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
