"""Kill run: SIGKILL an async run at random moments (and halfway through admission writes), resume
it each time, and audit the run directory (docs/reliability.md).

Each trial starts a child process that evolves on the serving simulator (virtual time) into a run
directory and kills it: either from outside after a random wall delay, or from inside halfway
through its Nth admission write (``FLASHEVOLVE_CRASH_AT_WRITE``).  The trial then resumes the run
in this process for a few simulated minutes and audits it: admitted artifacts lost (announced in
the log but not on disk), duplicated, admissions whose event the kill cut off (recovered at
resume), and whether the pool rebuilt from disk equals the pool the log describes.  Simulated.

    python scripts/chaos_kill.py --trials 20 --json docs/results/chaos-kill.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def evolver(run_dir: Path, minutes: float, *, resume: bool, seed: int) -> Any:
    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask, simulated

    return Evolver(
        SimulatedTask(n_train=60, n_val=30, seed=seed),
        simulated(seed=seed),
        mode="async",
        workers={"rollout": 8, "propose": 8, "evaluate": 8},
        max_in_flight=32,
        budget=minutes * 60.0,
        seed=seed,
        run_dir=run_dir,
        resume=resume,
    )


def child(run_dir: Path, minutes: float, seed: int) -> None:
    evolver(
        run_dir, minutes, resume=run_dir.joinpath("events.jsonl").exists(), seed=seed
    ).run_virtual()


def in_flight_at_kill(run_dir: Path) -> int:
    """Jobs started but not finished in the log as the kill left it (work the kill lost)."""
    from flashevolve.events.log import EventLog
    from flashevolve.rundir import cut_torn_tail

    path = run_dir / "events.jsonl"
    cut_torn_tail(path)
    done_items = set()
    started: dict[str, str] = {}
    for e in EventLog.read(path):
        if e.kind == "item_enqueued" and e.data and "job_id" in e.data:
            started[e.item_id] = e.data["job_id"]
        elif e.kind in ("item_done", "item_dropped") and e.item_id:
            done_items.add(e.item_id)
    pending_jobs = {job for item, job in started.items() if item not in done_items}
    return len(pending_jobs)


def trial(k: int, rng: random.Random, *, minutes: float, seed: int, inside: bool) -> dict:
    from flashevolve.rundir import RunDirectory

    with tempfile.TemporaryDirectory(prefix="fe-kill-") as tmp:
        run_dir = Path(tmp) / "run"
        env = dict(os.environ)
        how = ""
        if inside:
            n = rng.randint(2, 25)
            env["FLASHEVOLVE_CRASH_AT_WRITE"] = str(n)
            how = f"halfway through admission write {n}"
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                str(run_dir),
                "--minutes",
                str(minutes),
                "--seed",
                str(seed),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if not inside:
            delay = rng.uniform(0.5, 4.0)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            how = f"SIGKILL after {delay:.2f} s"
        proc.wait()
        killed = proc.returncode == -signal.SIGKILL
        lost_work = in_flight_at_kill(run_dir) if (run_dir / "events.jsonl").exists() else 0
        before = (
            RunDirectory(run_dir, resume=True).audit()
            if (run_dir / "events.jsonl").exists()
            else {}
        )
        resumed = evolver(run_dir, 2.0, resume=True, seed=seed)
        resumed.run_virtual()
        after = RunDirectory(run_dir, resume=True).audit()
        return {
            "trial": k,
            "how": how,
            "killed": killed,
            "stored_at_kill": before.get("stored", 0),
            "jobs_in_flight_at_kill": lost_work,
            "cut_off_events_recovered": len(before.get("unannounced", [])),
            "lost": len(after["lost"]),
            "duplicated": after["duplicated"] + after["logged_twice"],
            "pool_matches_log": after["pool_matches_log"],
            "pool_after_resume": len(resumed.pool),
        }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--minutes", type=float, default=240.0, help="simulated minutes per child")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(Path(args.child), args.minutes, args.seed)
        return {}
    rng = random.Random(args.seed)
    rows = []
    t0 = time.perf_counter()
    for k in range(args.trials):
        row = trial(k, rng, minutes=args.minutes, seed=args.seed + k, inside=k % 2 == 1)
        rows.append(row)
        print(
            f"trial {k:2d}: {row['how']:<40} killed={row['killed']!s:<5} stored={row['stored_at_kill']:3d} "
            f"in-flight jobs lost={row['jobs_in_flight_at_kill']:3d} recovered events="
            f"{row['cut_off_events_recovered']} lost={row['lost']} dup={row['duplicated']} "
            f"pool==log={row['pool_matches_log']}",
            flush=True,
        )
    result = {
        "simulated": True,
        "trials": len(rows),
        "killed": sum(r["killed"] for r in rows),
        "admitted_lost": sum(r["lost"] for r in rows),
        "duplicated": sum(r["duplicated"] for r in rows),
        "pool_matches_log": sum(r["pool_matches_log"] for r in rows),
        "jobs_in_flight_lost": sum(r["jobs_in_flight_at_kill"] for r in rows),
        "cut_off_events_recovered": sum(r["cut_off_events_recovered"] for r in rows),
        "wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    print(
        f"{result['trials']} trials, {result['killed']} killed: admitted artifacts lost "
        f"{result['admitted_lost']}, duplicated {result['duplicated']}, pool == log in "
        f"{result['pool_matches_log']}/{result['trials']}; {result['jobs_in_flight_lost']} jobs in "
        f"flight lost; {result['cut_off_events_recovered']} cut-off admission events recovered"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
