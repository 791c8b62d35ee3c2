"""Throughput benchmark: run workflow configurations on a simulated server for M minutes.

Every number here comes from the serving *simulator* on virtual time (see docs/simulator.md):
it shows how the orchestration behaves against a calibrated model of a server, not a hardware
measurement.  Rows and JSON are labelled ``simulated``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    workers: dict[str, int] = field(default_factory=dict)
    max_in_flight: int = 64
    staleness: str = "full"
    #: Options of the workflow (GepaWorkflow's ``eval_concurrency``, ...), passed to the Evolver.
    workflow_options: dict[str, Any] = field(default_factory=dict)
    #: Builds extra Evolver keyword arguments (controller, speculation, ...) per run; a fresh
    #: object per run so no state leaks between rows.
    extras: Callable[[], dict[str, Any]] | None = None
    #: Budget.wind_down for the run ("auto", seconds, or None: off)
    wind_down: str | float | None = None
    description: str = ""


CONFIGS: dict[str, BenchConfig] = {}


def register(config: BenchConfig) -> BenchConfig:
    CONFIGS[config.name] = config
    return config


#: Evaluation threads of the synchronous baseline: what GEPA/DSPy users run (16-64 threads;
#: docs/simulator.md, "Calibration"), so that no speed-up is flattered by a weak baseline.
SYNC_EVAL_CONCURRENCY = 32

register(
    BenchConfig(
        "sync",
        mode="sync",
        workflow_options={"eval_concurrency": SYNC_EVAL_CONCURRENCY},
        description="classic loop: one step at a time, "
        f"barrier after every stage, {SYNC_EVAL_CONCURRENCY} concurrent evaluations",
    )
)
register(
    BenchConfig(
        "async",
        workers={"rollout": 8, "propose": 8, "evaluate": 8},
        description="fixed workers 8/8/8, up to 64 proposals in flight",
    )
)
for _n in (16, 32):  # larger fixed settings, so "best fixed" is not only the defaults
    register(
        BenchConfig(
            f"async{_n}",
            workers={"rollout": _n, "propose": _n, "evaluate": _n},
            description=f"fixed workers {_n}/{_n}/{_n}, up to 64 proposals in flight",
        )
    )
for _n, _bound in ((32, 96), (32, 128), (64, 256)):  # wider job bounds: where the server saturates
    register(
        BenchConfig(
            f"async{_n}@{_bound}",
            workers={"rollout": _n, "propose": _n, "evaluate": _n},
            max_in_flight=_bound,
            description=f"fixed workers {_n}/{_n}/{_n}, up to {_bound} proposals in flight",
        )
    )
register(
    BenchConfig(
        "k1=1/k3=1",
        workers={"rollout": 1, "propose": ABLATION_PROPOSE, "evaluate": 1},
        description="paper ablation: 1 rollout worker, 1 evaluate worker",
    )
)
register(
    BenchConfig(
        "k1=16/k3=8",
        workers={"rollout": 16, "propose": ABLATION_PROPOSE, "evaluate": 8},
        description="paper ablation: 16 rollout workers, 8 evaluate workers",
    )
)


def _load_optional_configs() -> None:
    """Configurations that need the mechanisms of flashevolve.policies register on import."""
    import importlib

    for mod in ("flashevolve.bench.mechanisms",):
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
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError(f"unknown bench config {name!r}; choose from {list(CONFIGS)}") from None


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
        for policy in staleness or [None]:
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
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric:
            out[key] = sum(values) / len(values)
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
