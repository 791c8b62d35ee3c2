"""``flashevolve run``: evolve a task in one or more modes and compare them side by side."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flashevolve.commands.common import (
    add_backend_arguments,
    format_table,
    make_backend,
    parse_workers,
    require_at_least_one,
    run_preflight,
)
from flashevolve.commands.policy_options import (
    add_policy_arguments,
    check_policy_arguments,
    policy_kwargs,
)
from flashevolve.commands.workflow_options import (
    add_workflow_arguments,
    apply_backend_defaults,
    check_workflow_arguments,
    workflow_kwargs,
)
from flashevolve.errors import ConfigError
from flashevolve.executors import NAMES, executor_from_options

if TYPE_CHECKING:
    from flashevolve import Evolver

NAME = "run"
HELP = "evolve a task (GEPA, ACE or Meta-Harness) in sync and/or async mode and compare them"

SUMMARY_ROWS = [
    # The objective first: accepted proposals per minute and the best score they reached.
    ("accepted_per_min", "accepted/min", ".3f"),
    ("best_score", "best val score", ".3f"),
    ("improvements_per_min", "new best/min", ".3f"),
    ("validations_per_min", "val sweeps/min", ".2f"),
    ("proposals_per_min", "proposals/min", ".2f"),
    ("seed_score", "seed val score", ".3f"),
    ("accepted", "accepted", "d"),
    ("validations", "val sweeps", "d"),
    ("proposals", "proposals", "d"),
    ("tokens", "tokens", "d"),
    ("tokens_per_accepted", "tokens/accepted", ".0f"),
    ("mean_concurrency", "requests at server, mean", ".1f"),
    ("peak_concurrency", "requests at server, peak", "d"),
    ("mean_in_client", "waiting in client, mean", ".1f"),
    ("utilization", "server utilization", ".1%"),
    ("server_waiting_per_running", "server waiting/running", ".2f"),
    ("stale_seen", "stale items", "d"),
    ("errors", "errors", "d"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    _add_task_options(p)
    _add_run_options(p)
    _add_async_options(p)
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    _add_token_options(p)
    p.add_argument("--list-tasks", action="store_true", help="list built-in tasks and exit")
    _add_executor_options(p)
    add_workflow_arguments(p)
    add_policy_arguments(p)
    add_backend_arguments(p)


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        default="ifeval-lite",
        help="built-in task name (see --list-tasks) or a task file (.jsonl/.json)",
    )
    p.add_argument(
        "--task-kind",
        default=None,
        help="for task files: aime, hotpotqa, hover, humaneval or prompt",
    )
    p.add_argument("--n-train", type=int, default=None, help="use only this many train examples")
    p.add_argument("--n-val", type=int, default=None, help="use only this many val examples")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Modes, budget, where the run goes and what it writes."""
    p.add_argument("--mode", default="sync,async", help="comma list of sync and/or async")
    p.add_argument("--minutes", type=float, default=3.0, help="run-clock budget per mode")
    p.add_argument("--out", default=None, help="run directory (default runs/<task>)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a stopped run from its run directory for --minutes more",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing run directory at --out first (never with --resume)",
    )
    p.add_argument("--json", default=None, help="also write the per-mode summary here")
    p.add_argument("--seed", type=int, default=0)


def _add_async_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers", default=None, help="async worker counts, e.g. rollout=4,propose=2,evaluate=4"
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="async: jobs in flight at once (default: one per worker, at most the client's "
        "concurrency; the adaptive controller then sizes it from the server's load)",
    )


def _add_token_options(p: argparse.ArgumentParser) -> None:
    """What the model may write: reflection grammar and token caps."""
    p.add_argument(
        "--reflection-grammar",
        choices=("auto", "on", "off"),
        default="auto",
        help="constrain reflections to one closed fenced block with a llama.cpp grammar "
        "(auto: on for --backend local, whose tiny default model rarely closes its block)",
    )
    p.add_argument(
        "--reflection-max-tokens",
        type=int,
        default=None,
        help="token cap of a reflection answer (default: the server's)",
    )
    p.add_argument(
        "--task-max-tokens",
        type=int,
        default=None,
        help="token cap of a task answer (default: the task's own, 200 for ifeval-lite)",
    )


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--executor",
        choices=NAMES,
        default=None,
        help="where CPU-heavy task metrics run: local (threads, default), process, or ray "
        "(docs/scale-out.md)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="with --executor ray: auto or HOST:PORT of a running cluster (default: a local one)",
    )


def _check_arguments(args: argparse.Namespace) -> None:
    """Validate the options before a backend is started; one clear line per mistake."""
    require_at_least_one(
        args,
        {
            "minibatch_size": "--minibatch-size",
            "reflection_max_tokens": "--reflection-max-tokens",
            "task_max_tokens": "--task-max-tokens",
            "max_in_flight": "--max-in-flight",
        },
    )
    check_workflow_arguments(args)
    check_policy_arguments(args)
    args.executor_spec = executor_from_options(args.executor, args.ray_address)


def run(args: argparse.Namespace) -> int:
    from flashevolve.tasks import available_tasks

    if args.list_tasks:
        print("\n".join(available_tasks()))
        return 0
    modes = _modes(args)
    _check_arguments(args)
    task = _load_task(args)
    out = _run_directory(args, task)
    workers = parse_workers(args.workers)
    evolvers, summaries = _run_modes(task, modes, args, out, workers)
    _print_results(evolvers, summaries)
    _write_outputs(args, out, task, evolvers, summaries)
    return 0


def _modes(args: argparse.Namespace) -> list[str]:
    """``--mode`` as a list (checked, with ``--minutes``)."""
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("sync", "async")]
    if bad or not modes:
        raise ConfigError(f"--mode takes sync and/or async, got {args.mode!r}")
    if args.minutes <= 0:
        raise ConfigError("--minutes must be positive")
    return modes


def _run_directory(args: argparse.Namespace, task: Any) -> Path:
    """Where the run goes: ``--resume``'s directory, ``--out``, or runs/<task> (emptied first
    with ``--overwrite``)."""
    out = Path(args.resume or args.out or f"runs/{task.name}")
    if args.resume and not out.exists():
        raise ConfigError(f"--resume {out}: no such run directory")
    if args.overwrite and args.resume:
        raise ConfigError("--overwrite and --resume contradict each other; choose one")
    if args.overwrite and out.exists():
        shutil.rmtree(out)
    return out


def _run_modes(
    task: Any, modes: list[str], args: argparse.Namespace, out: Path, workers: dict[str, int]
) -> tuple[dict[str, Evolver], dict[str, dict[str, Any]]]:
    """Each mode's run on one backend (closed afterwards): the evolvers and their summaries."""
    apply_backend_defaults(args)
    backend = make_backend(args)
    simulated = str(backend.endpoint).startswith("sim:")
    summaries: dict[str, dict[str, Any]] = {}
    evolvers: dict[str, Evolver] = {}
    try:
        if not simulated:
            run_preflight(backend)
        print(
            f"task {task.name}: {len(task.train)} train / {len(task.val)} val examples; "
            f"backend {backend.endpoint} ({backend.model}); {args.minutes:g} min per mode"
            + (" [SIMULATED backend, virtual time]" if simulated else "")
        )
        for mode in modes:
            evolver = _make_evolver(task, backend, mode, args, out, workers)
            evolvers[mode] = evolver
            summaries[mode] = _run_one(evolver, args.minutes, simulated)
    finally:
        _close(backend)
    return evolvers, summaries


def _print_results(evolvers: dict[str, Evolver], summaries: dict[str, dict[str, Any]]) -> None:
    """The modes side by side, then each mode's best artifact."""
    print()
    print(_side_by_side(summaries))
    for mode, ev in evolvers.items():
        if not len(ev.pool):
            print(
                f"\n{mode}: nothing admitted -- the budget ran out while the seed was still "
                f"being scored; give it more --minutes or fewer --n-val examples"
            )
            continue
        best = ev.pool.best(confirmed=True)
        print(f"\nbest {mode} artifact ({best.mean_score:.3f}):")
        for name, text in best.artifact.components.items():
            print(f"  [{name}] {text[:400]}")


def _write_outputs(
    args: argparse.Namespace,
    out: Path,
    task: Any,
    evolvers: dict[str, Evolver],
    summaries: dict[str, dict[str, Any]],
) -> None:
    """summary.json (and ``--json``), report.html unless ``--no-report``."""
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=2, default=str))
    (out / "summary.json").write_text(json.dumps(summaries, indent=2, default=str))
    if not args.no_report:
        from flashevolve.views.report import write_report

        path = write_report(
            out / "report.html",
            {m: ev.events for m, ev in evolvers.items()},
            title=f"flashevolve run: {task.name}",
        )
        print(f"\nreport: {path}")
    print(f"run directory: {out}")


def _load_task(args: argparse.Namespace) -> Any:
    from flashevolve.tasks import get_task, load_task_file

    sizes = {
        k: v
        for k, v in (
            ("n_train", args.n_train),
            ("n_val", args.n_val),
            ("max_tokens", args.task_max_tokens),
        )
        if v is not None
    }
    # Tasks whose metric runs model-written code take the same opt-out as Meta-Harness.
    unsandboxed = {"allow_unsandboxed": True} if args.i_accept_unsandboxed_code else {}
    if Path(args.task).suffix in (".json", ".jsonl"):
        kind = args.task_kind
        extra = unsandboxed if kind == "humaneval" else {}
        return load_task_file(args.task, kind=kind, **sizes, **extra)
    extra = unsandboxed if args.task.strip().lower() == "intent-lite" else {}
    return get_task(args.task, **sizes, **extra)


def _make_evolver(
    task: Any, backend: Any, mode: str, args: argparse.Namespace, out: Path, workers: dict[str, int]
) -> Evolver:
    from flashevolve import Evolver

    kwargs: dict[str, Any] = {}
    if mode == "async":
        kwargs["workers"] = workers  # empty: the workflow's own (GEPA: 8/4/8/8)
        kwargs["max_in_flight"] = args.max_in_flight  # None: sized by the Evolver and controller
    kwargs.update(workflow_kwargs(args, mode, args.backend.partition(":")[0]))
    kwargs.update(policy_kwargs(args, mode))
    wind_down = kwargs.pop("wind_down", None)  # async only, like the other mechanisms
    run_dir = out / mode
    resume = bool(args.resume) and (run_dir / "events.jsonl").exists()
    return Evolver(
        task,
        backend,
        mode=mode,
        seed=args.seed,
        budget={"seconds": args.minutes * 60, "wind_down": wind_down},
        run_dir=run_dir,
        name=mode,
        resume=resume,
        executor=args.executor_spec,
        **kwargs,
    )


def _run_one(evolver: Evolver, minutes: float, simulated: bool) -> dict[str, Any]:
    if simulated:
        return evolver.run_virtual()
    from tqdm import tqdm

    total = minutes * 60
    evolver.start()
    with tqdm(
        total=round(total),
        desc=f"{evolver.name:>5}",
        unit="s",
        bar_format="{desc}: {bar} {n:.0f}/{total:.0f}s {postfix}",
    ) as bar:
        while True:
            try:
                summary = evolver.wait(timeout=0.5)  # re-raises the run's own failure
                break
            except TimeoutError:
                st = evolver.status()
                bar.n = min(total, st["elapsed_s"])
                best = st["best_score"]
                bar.set_postfix_str(
                    f"proposals {st['proposals']} accepted {st['accepted']} "
                    f"best {best if best is None else round(best, 3)}"
                )
        bar.n = total
        bar.refresh()
    return summary


def _side_by_side(summaries: dict[str, dict[str, Any]]) -> str:
    modes = list(summaries)
    rows = []
    for key, label, fmt in SUMMARY_ROWS:
        row: dict[str, Any] = {"metric": label}
        for m in modes:
            row[m] = summaries[m].get(key)
        rows.append((row, fmt))
    cols = [("metric", "metric", "")] + [(m, m, "") for m in modes]
    table_rows = []
    for row, fmt in rows:
        table_rows.append(
            {k: (v if k == "metric" or v is None else format(v, fmt)) for k, v in row.items()}
        )
    text = format_table(table_rows, cols)
    if "sync" in summaries and "async" in summaries:
        text += "\n"
        for key, what in (("accepted_per_min", "accepted"), ("proposals_per_min", "proposals")):
            s, a = summaries["sync"][key], summaries["async"][key]
            ratio = f"{a / s:.2f}x" if s else f"{a:.3f} vs {s:.3f}"
            text += f"\nasync / sync {what} per minute: {ratio}"
    return text


def _close(backend: Any) -> None:
    import asyncio

    close = getattr(backend, "close", None)
    if callable(close):
        close()
    else:
        with contextlib.suppress(Exception):
            asyncio.run(backend.aclose())
