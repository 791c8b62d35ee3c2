"""Throughput benchmark: run workflow configurations on a simulated server for M minutes.

Every number here comes from the serving *simulator* on virtual time (see docs/simulator.md):
it shows how the orchestration behaves against a calibrated model of a server, not a hardware
measurement.  Rows and JSON are labelled ``simulated``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from flashevolve.backends.sim.calibrate import N_TRAIN, N_VAL
from flashevolve.commands.common import format_table
from flashevolve.errors import ConfigError
from flashevolve.events.metrics import best_score_series

#: The paper's K2 (propose workers) is not given; we hold it at 4 in the ablation rows.
ABLATION_PROPOSE = 4


@dataclass
class BenchConfig:
    name: str
    mode: str = "async"
    #: Worker counts (empty: the workflow's own) and the job bound (None: the Evolver's default,
    #: one job per worker to start).
    workers: dict[str, int] = field(default_factory=dict)
    max_in_flight: int | None = 64
    #: False: no controller -- the workers and the bound stay as given (a *fixed* setting);
    #: True: the Evolver's default control (the adaptive controller in async mode).
    adaptive: bool = False
    staleness: str = "full"
    #: Options of the workflow (GepaWorkflow's ``eval_concurrency``, ...), passed to the Evolver.
    workflow_options: dict[str, Any] = field(default_factory=dict)
    #: Builds extra Evolver keyword arguments (speculation, ...) per run; a fresh object per run
    #: so no state leaks between rows.
    extras: Callable[[], dict[str, Any]] | None = None
    #: Budget.wind_down for the run ("auto", seconds, or None: off)
    wind_down: str | float | None = None
    description: str = ""


CONFIGS: dict[str, BenchConfig] = {}


def register(config: BenchConfig) -> BenchConfig:
    CONFIGS[config.name] = config
    return config


#: The GEPA stages, in the order of the ``fixedR/P/G/V@B`` names.
STAGES = ("rollout", "propose", "gate", "validate")

register(
    BenchConfig(
        "sync",
        mode="sync",
        description="classic loop: one step at a time, barrier after every stage, the "
        "workflow's 32 concurrent evaluations (what GEPA/DSPy users run)",
    )
)
register(
    BenchConfig(
        "async",
        max_in_flight=None,
        adaptive=True,
        description="the default async configuration, nothing tuned: the workflow's workers "
        "(8/4/8/8), one job per worker to start, the adaptive controller",
    )
)
register(
    BenchConfig(
        "k1=1/k3=1",
        workers={"rollout": 1, "propose": ABLATION_PROPOSE, "evaluate": 1},
        description="paper ablation, fixed: 1 rollout worker, 1 evaluate worker, 64 jobs",
    )
)
register(
    BenchConfig(
        "k1=16/k3=8",
        workers={"rollout": 16, "propose": ABLATION_PROPOSE, "evaluate": 8},
        description="paper ablation, fixed: 16 rollout workers, 8 evaluate workers, 64 jobs",
    )
)

#: The grid of fixed settings the default is compared with (docs/benchmarks.md section 4):
#: W workers in every stage, B jobs in flight; ``fixed`` rows have no controller.
FIXED_GRID = [f"fixed{w}@{b}" for w in (4, 8, 16, 32) for b in (16, 32, 64, 96, 128)]
_FIXED = re.compile(r"fixed(\d+)(?:/(\d+)/(\d+)/(\d+))?@(\d+)")


def fixed_config(name: str) -> BenchConfig | None:
    """``fixedW@B`` (W workers in every stage) or ``fixedR/P/G/V@B``, B jobs in flight, no
    controller; None when ``name`` is not of that form."""
    m = _FIXED.fullmatch(name)
    if m is None:
        return None
    counts = [int(m.group(1))] * 4 if m.group(2) is None else [int(g) for g in m.groups()[:4]]
    if min(counts) < 1 or int(m.group(5)) < 1:
        raise ConfigError(f"bench config {name!r}: worker counts and the bound must be >= 1")
    return BenchConfig(
        name,
        workers=dict(zip(STAGES, counts, strict=True)),
        max_in_flight=int(m.group(5)),
        description=f"fixed workers {'/'.join(map(str, counts))}, {m.group(5)} jobs in flight",
    )


def _load_optional_configs() -> None:
    """Configurations that need the mechanisms of flashevolve.policies register on import."""
    import importlib

    for mod in ("flashevolve.bench.mechanisms", "flashevolve.bench.combee"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise


def available_configs() -> list[str]:
    _load_optional_configs()
    return list(CONFIGS)


def get_config(name: str) -> BenchConfig:
    _load_optional_configs()
    if name in CONFIGS:
        return CONFIGS[name]
    base, plus, extra = name.partition("+")
    fixed = fixed_config(base)
    if fixed is not None and not plus:
        return fixed
    if fixed is not None and extra == "winddown":
        return replace(fixed, name=name, wind_down="auto")
    raise ConfigError(
        f"unknown bench config {name!r}; choose from {list(CONFIGS)}, or fixedW@B / "
        "fixedR/P/G/V@B (fixed workers and jobs in flight, optionally +winddown)"
    )


def run_config(
    config: BenchConfig,
    *,
    profile: str,
    minutes: float,
    seed: int = 0,
    staleness: str | None = None,
    n_train: int = N_TRAIN,
    n_val: int = N_VAL,
) -> tuple[dict[str, Any], Any]:
    """One configuration on a fresh simulated server and task; returns (row, evolver).

    The task's size is the calibrated GEPA workload's (150 train / 300 validation examples,
    docs/simulator.md), so that a synchronous step takes about as long as the paper's.
    """
    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask, simulated

    llm = simulated(profile, seed=seed)
    task = SimulatedTask(seed=seed, n_train=n_train, n_val=n_val)
    kwargs: dict[str, Any] = {**config.workflow_options}
    kwargs.update(config.extras() if config.extras else {})
    if config.mode == "async":
        kwargs.setdefault("workers", config.workers)
        kwargs.setdefault("max_in_flight", config.max_in_flight)
        if not config.adaptive:
            kwargs.setdefault("control", None)  # a fixed setting
    evolver = Evolver(
        task,
        llm,
        mode=config.mode,
        budget={"seconds": minutes * 60, "wind_down": config.wind_down},
        seed=seed,
        staleness=staleness or config.staleness,
        name=config.name,
        **kwargs,
    )
    t0 = time.perf_counter()
    summary = evolver.run_virtual()
    wall = time.perf_counter() - t0
    server = llm.stats()
    row = {
        "config": config.name,
        "staleness": staleness or config.staleness,
        **summary,  # its utilization: generated tokens/s over the profile's attainable tokens/s
        "wall_s": wall,
        "profile": profile,
        "simulated": True,
        # (ts, best validation score so far) at each admission, for score-vs-time plots
        "best_over_time": [list(r) for r in best_score_series(evolver.events).iter_rows()],
        "sim_wasted_tokens": server.get("wasted_tokens"),
        "sim_retries": server.get("retries"),
        # Requests queued in the simulated server per request it served (time averages; engine
        # profiles only): ~0 while the server has room, rising once it is full -- the knee.
        "server_queue_ratio": server["mean_waiting"] / max(server["mean_concurrency"], 1e-9)
        if "mean_waiting" in server
        else None,
    }
    return row, evolver


def run_bench(
    configs: list[str],
    *,
    profile: str,
    minutes: float,
    seed: int = 0,
    seeds: list[int] | None = None,
    staleness: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per configuration (x policy).  With several ``seeds`` each row is the mean over
    the seeds (``seed="mean"``, per-seed rows under ``per_seed``): runs of one configuration
    differ by more between seeds than many of the differences the ablation asks about."""
    seeds = seeds or [seed]
    rows = []
    for name in configs:
        cfg = get_config(name)
        policies: list[str | None] = list(staleness) if staleness else [None]
        for policy in policies:
            runs = []
            for s in seeds:
                if progress:
                    label = name + (f" / {policy}" if policy else "")
                    progress(f"running {label} (seed {s}) ...")
                row, _ = run_config(cfg, profile=profile, minutes=minutes, seed=s, staleness=policy)
                row["seed"] = s
                runs.append(row)
            rows.append(runs[0] if len(runs) == 1 else mean_row(runs))
    base = next((r for r in rows if r["config"] == "sync"), None)
    for r in rows:
        r["speedup"] = (
            r["proposals_per_min"] / base["proposals_per_min"]
            if base and base["proposals_per_min"]
            else None
        )
        r["accepted_speedup"] = (
            r["accepted_per_min"] / base["accepted_per_min"]
            if base and base["accepted_per_min"]
            else None
        )
    return rows


def mean_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of the numeric fields of several seeds' rows; other fields only where every seed
    agrees (e.g. the config name), else None -- the per-seed values stay under ``per_seed``."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [r.get(key) for r in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) == len(values):
            out[key] = sum(numbers) / len(numbers)
        else:
            out[key] = value if all(v == value for v in values) else None
    out["seed"] = "mean"
    out["seeds"] = [r["seed"] for r in runs]
    out["accepted_per_min_by_seed"] = " ".join(f"{r['accepted_per_min']:.2f}" for r in runs)
    out["per_seed"] = runs
    return out


THROUGHPUT_COLUMNS = [
    ("config", "config", ""),
    # the objective first: accepted proposals per minute, and the progress of the best score
    ("accepted_per_min", "accepted/min", ".3f"),
    ("improvements_per_min", "new best/min", ".3f"),
    ("best_score", "best val", ".3f"),
    ("validations_per_min", "val sweeps/min", ".2f"),
    ("proposals_per_min", "proposals/min", ".2f"),
    ("time_to_admission_s", "to admission s", ".0f"),
    ("mean_concurrency", "at server", ".1f"),
    ("peak_concurrency", "peak at server", "d"),
    ("utilization", "utilization", ".1%"),
    ("server_queue_ratio", "queued/served", ".2f"),
    # requests that failed for good (API profiles: 429s that outlived the client's retries)
    ("failed_requests", "failed req", "d"),
    ("tokens_per_accepted", "tokens/accepted", ",.0f"),
    ("accepted_speedup", "accepted speed-up", ".2f"),
    ("speedup", "proposals speed-up", ".2f"),
]

#: Extra column when rows are means over several seeds.
SEEDS_COLUMN = ("accepted_per_min_by_seed", "accepted/min by seed", "")

STALENESS_COLUMNS = [
    ("config", "config", ""),
    ("staleness", "policy", ""),
    ("proposals_per_min", "proposals/min", ".2f"),
    ("accepted_per_min", "accepted/min", ".3f"),
    ("stale_seen", "stale seen", "d"),
    ("stale_accepted", "accepted", "d"),
    ("stale_patched", "patched", "d"),
    ("stale_discarded", "discarded", "d"),
    ("stale_merged", "merged", "d"),
    ("best_score", "best val", ".3f"),
]


def format_rows(rows: list[dict[str, Any]], staleness: bool = False) -> str:
    columns = list(STALENESS_COLUMNS if staleness else THROUGHPUT_COLUMNS)
    if any(r.get("seed") == "mean" for r in rows):
        # counts averaged over seeds are not integers any more
        columns = [(k, h, ".1f" if f == "d" else f) for k, h, f in columns] + [SEEDS_COLUMN]
    return format_table(rows, columns)
