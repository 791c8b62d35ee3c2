"""Soak run: many simulated hours of async GEPA on the serving simulator, watching memory.

Prints resident memory (RSS, from /proc/self/statm) and the event count every simulated hour,
the event log's own size, and the orchestrator's processing rate (events handled per wall
second), then writes JSON.  Everything runs on virtual time: the figures are about the
orchestrator's own memory and speed, not about a server (simulated).

    python scripts/soak.py --hours 24 --json docs/results/soak-24h.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask, simulated
    from flashevolve.events.schema import Kind

    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fe-soak-") as tmp:
        run_dir = Path(tmp) / "run"
        ev = Evolver(
            SimulatedTask(n_train=100, n_val=50, seed=args.seed),
            simulated(seed=args.seed),
            mode="async",
            workers={"rollout": 8, "propose": 8, "evaluate": 8},
            max_in_flight=64,
            budget=args.hours * 3600.0,
            seed=args.seed,
            run_dir=run_dir,
        )
        next_mark = [0.0]
        t_wall = time.perf_counter()

        def watch(event) -> None:
            if event.kind == Kind.RUN_STARTED or event.ts >= next_mark[0]:
                samples.append(
                    {
                        "sim_hours": round(event.ts / 3600.0, 2),
                        "events": len(ev._log),
                        "rss_mb": round(rss_mb(), 1),
                        "log_mb": round(ev._dir.events_path.stat().st_size / 2**20, 1)
                        if ev._dir.events_path.exists()
                        else 0.0,
                        "wall_s": round(time.perf_counter() - t_wall, 1),
                    }
                )
                next_mark[0] = (int(event.ts // 3600.0) + 1) * 3600.0

        original = ev._on_event

        def on_event(event) -> None:
            original(event)
            watch(event)

        ev._on_event = on_event  # type: ignore[method-assign]
        summary = ev.run_virtual()
        wall = time.perf_counter() - t_wall
        final = {
            "sim_hours": args.hours,
            "events": len(ev._log),
            "rss_mb": round(rss_mb(), 1),
            "log_mb": round(ev._dir.events_path.stat().st_size / 2**20, 1),
            "wall_s": round(wall, 1),
        }
        samples.append(final)
    first = samples[1] if len(samples) > 1 else samples[0]
    result = {
        "simulated": True,
        "hours": args.hours,
        "events": final["events"],
        "events_per_wall_s": round(final["events"] / wall, 0),
        "rss_start_mb": first["rss_mb"],
        "rss_end_mb": final["rss_mb"],
        "rss_growth_mb": round(final["rss_mb"] - first["rss_mb"], 1),
        "log_mb": final["log_mb"],
        "accepted": summary["accepted"],
        "proposals": summary["proposals"],
        "samples": samples,
    }
    print(f"{'sim h':>6} {'events':>9} {'RSS MB':>7} {'log MB':>7} {'wall s':>7}")
    for s in samples:
        print(
            f"{s['sim_hours']:>6} {s['events']:>9} {s['rss_mb']:>7} {s['log_mb']:>7} {s['wall_s']:>7}"
        )
    print(
        f"simulated {args.hours:g} h: {result['events']} events, {result['events_per_wall_s']:.0f} "
        f"events/wall-s; RSS {result['rss_start_mb']} -> {result['rss_end_mb']} MB "
        f"(+{result['rss_growth_mb']} MB) while the event log grew to {result['log_mb']} MB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
