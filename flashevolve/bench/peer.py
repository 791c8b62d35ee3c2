"""The real ``gepa`` package against flashevolve on the same server, task and wall time.

Each side gets a fresh simulated vLLM server behind real HTTP (the project's OpenAI-compatible
server running the serving simulator in real time, ``speed`` times faster than an H100 would
be), the same simulated task, and the same wall-clock budget:

1. ``gepa.optimize`` (0.1.4, unchanged) through an adapter that evaluates with 32 threads, what
   DSPy and GEPA users set (:mod:`flashevolve.bench.peer_gepa`);
2. flashevolve's async GEPA with its default configuration, through its OpenAI-compatible client.

Reported per side: proposals, accepted proposals and validation sweeps per real minute, the best
validation score, and the server's utilization (generated tokens over what the simulated engine
could have generated in that time).  The server is a simulator: every figure is labelled
simulated.  ::

    python -m flashevolve.bench.peer --minutes 5 --speed 10 --json docs/results/peer-gepa.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from flashevolve.commands.common import format_table

COLUMNS = [
    ("config", "config", "s"),
    ("accepted_per_min", "accepted/min", ".2f"),
    ("validations_per_min", "val sweeps/min", ".2f"),
    ("proposals_per_min", "proposals/min", ".2f"),
    ("best_score", "best val", ".3f"),
    ("utilization", "server util", ".1%"),
    ("requests", "requests", "d"),
    ("duration_s", "wall s", ".0f"),
]


def _task(seed: int, n_train: int, n_val: int) -> Any:
    from flashevolve.backends.sim import SimulatedTask

    return SimulatedTask(n_train=n_train, n_val=n_val, seed=seed)


def _server(seed: int, speed: float) -> tuple[Any, Any]:
    from flashevolve.backends.server import SimulatorResponder, serve_in_thread

    responder = SimulatorResponder("vllm-h100-qwen3-8b", seed=seed, speed=speed)
    return responder, serve_in_thread(responder)


def _utilization(responder: Any) -> float | None:
    """What the simulated engine generated over what it could have (its own count)."""
    value = responder.stats().get("utilization")
    return None if value is None else float(value)


def run_gepa_side(
    minutes: float, speed: float, seed: int, n_train: int, n_val: int
) -> dict[str, Any]:
    from flashevolve.bench.peer_gepa import run_gepa_peer

    responder, server = _server(seed, speed)
    with server as url:
        row = run_gepa_peer(
            _task(seed, n_train, n_val), url, responder.model, seconds=minutes * 60, seed=seed
        )
    row["utilization"] = _utilization(responder)
    return row


def run_flashevolve_side(
    minutes: float, speed: float, seed: int, n_train: int, n_val: int
) -> dict[str, Any]:
    from flashevolve import Evolver
    from flashevolve.backends.openai_compat import OpenAICompatLLM

    responder, server = _server(seed, speed)
    with server as url:
        llm = OpenAICompatLLM(url, responder.model, max_concurrency=256, seed=seed)
        evolver = Evolver(
            _task(seed, n_train, n_val),
            llm,
            mode="async",
            budget=minutes * 60,
            seed=seed,
            name="flashevolve async (defaults)",
        )
        t0 = time.perf_counter()
        summary = evolver.run_sync()
        wall = time.perf_counter() - t0
    return {
        "config": "flashevolve async (defaults)",
        "duration_s": wall,
        "proposals": summary["proposals"],
        "accepted": summary["accepted"],
        "validations": summary["validations"],
        "proposals_per_min": summary["proposals"] / (wall / 60),
        "accepted_per_min": summary["accepted"] / (wall / 60),
        "validations_per_min": summary["validations"] / (wall / 60),
        "best_score": summary["best_score"],
        "requests": summary["requests"],
        "utilization": _utilization(responder),
    }


def run_peer_bench(
    *,
    minutes: float = 5.0,
    speed: float = 10.0,
    seed: int = 0,
    n_train: int = 150,
    n_val: int = 300,
) -> dict[str, Any]:
    rows = [
        run_gepa_side(minutes, speed, seed, n_train, n_val),
        run_flashevolve_side(minutes, speed, seed, n_train, n_val),
    ]
    gepa, ours = rows
    ratio = (
        ours["accepted_per_min"] / gepa["accepted_per_min"] if gepa["accepted_per_min"] else None
    )
    return {
        "simulated": True,
        "server": f"serve-sim vllm-h100-qwen3-8b at {speed:g}x over HTTP",
        "minutes": minutes,
        "speed": speed,
        "seed": seed,
        "task": {"name": "sim", "n_train": n_train, "n_val": n_val},
        "rows": rows,
        "accepted_per_min_ratio": ratio,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="wall minutes per side")
    p.add_argument("--speed", type=float, default=10.0, help="simulated server speed-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=150)
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = run_peer_bench(
        minutes=args.minutes,
        speed=args.speed,
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
    )
    print(f"SIMULATED server ({result['server']}), {args.minutes:g} wall minutes per side")
    print(format_table(result["rows"], COLUMNS))
    if result["accepted_per_min_ratio"] is not None:
        print(f"flashevolve / gepa accepted per minute: {result['accepted_per_min_ratio']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
