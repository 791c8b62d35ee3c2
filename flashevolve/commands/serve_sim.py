"""``flashevolve serve-sim``: the serving *simulator* behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import asyncio

from flashevolve.backends.faults.spec import parse_fault_spec
from flashevolve.backends.server import (
    LognormalLatency,
    OpenAICompatServer,
    ScriptedResponder,
    SimulatorResponder,
)
from flashevolve.backends.sim.profiles import get_profile
from flashevolve.commands.sim_options import add_profile_option
from flashevolve.errors import ConfigError

NAME = "serve-sim"
HELP = (
    "Serve the serving simulator (a workload model, not a real LLM) on 127.0.0.1 with an "
    "OpenAI-compatible API, in real time, until Ctrl-C."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_option(parser)
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0 = any)")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="run the simulated server this many times faster than real time",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of lengths and content")
    parser.add_argument(
        "--scripted",
        action="store_true",
        help="serve the scripted test server instead: workload content after a long-tailed "
        "(lognormal) latency per request, no batching model",
    )
    parser.add_argument("--latency-mean", type=float, default=2.0, help="--scripted: mean s")
    parser.add_argument("--latency-sigma", type=float, default=1.0, help="--scripted: spread")
    parser.add_argument(
        "--faults",
        metavar="SPEC",
        default=None,
        help="inject faults into a seeded fraction of requests, e.g. 'rate=0.25' (every kind) "
        "or 'rate=0.1,seed=3,hang,http503=2' (kinds and weights); counts at GET /stats. "
        "Kinds: refuse, reset, hang, drip, http429, http429_retry_after, http500, http502, "
        "http503, malformed, truncated, empty_choices, missing_usage, absurd_usage, "
        "wrong_model, null_content (docs/reliability.md)",
    )


async def _serve(args: argparse.Namespace) -> None:
    responder: ScriptedResponder | SimulatorResponder
    if args.scripted:
        latency = LognormalLatency(args.latency_mean, args.latency_sigma)
        responder = ScriptedResponder(None, latency=latency, seed=args.seed)
        what = (
            f"scripted, lognormal latency mean {args.latency_mean:g} s sigma {args.latency_sigma:g}"
        )
    else:
        responder = SimulatorResponder(args.profile, seed=args.seed, speed=args.speed)
        what = f"profile {args.profile}, speed {args.speed:g}x"
    server = OpenAICompatServer(responder, "127.0.0.1", args.port, faults=args.faults)
    base_url = await server.start()
    print(f"flashevolve serve-sim: SIMULATED server ({what})", flush=True)
    print(f"  base URL: {base_url}", flush=True)
    print(f"  model:    {responder.model}", flush=True)
    if server.faults is not None:
        print(f"  faults:   {server.faults.spec.describe()}", flush=True)
        print(f"  stats:    {base_url.removesuffix('/v1')}/stats", flush=True)
    print("  Ctrl-C to stop.", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def run(args: argparse.Namespace) -> int:
    get_profile(args.profile)  # unknown profile -> one clear line
    parse_fault_spec(args.faults)  # a bad SPEC -> one clear line naming the item
    if args.scripted and not (args.latency_mean > 0 and args.latency_sigma >= 0):
        raise ConfigError("--latency-mean must be > 0 and --latency-sigma >= 0")
    if not args.speed > 0:
        raise ConfigError(f"--speed must be > 0 (got {args.speed})")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535 (got {args.port})")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        print("flashevolve serve-sim: stopped", flush=True)
    return 0
