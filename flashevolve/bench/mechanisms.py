"""Bench rows for the paper's mechanisms: speculative validation in two regimes, wind-down.

Imported by :mod:`flashevolve.bench.throughput` when it lists configurations.  ``extras`` builds a
fresh speculation object per run, so no state leaks from one row to the next.

- ``valbound*`` rows are a fixed, validation-bound setting: 16 workers in every stage but 2 in
  validate, 16 jobs in flight.  Validation is what limits accepted proposals, and it is bound
  by its *workers* -- each waits for the long tail of a 300-example sweep -- while the server
  has room: the regime of the paper's speculation ablation, where releasing the validate worker
  on a prefix pays.
- ``async+alpha*`` rows are the default async configuration (adaptive controller) with
  speculation: the server is what limits, so the tails that keep running in the background take
  the same server time, and exact early rejects drop children GEPA would have admitted -- the
  regime where speculation does not pay.
- The ``+alpha`` rows speculate on **validation** (``evaluate_alpha``: score a prefix, exact
  early reject, speculative admission with confirm/rollback).  Rollout speculation
  (``rollout_alpha``) is a separate setting and not in these rows: GEPA's minibatch has 3
  examples, so any alpha below 2/3 hands the reflection a single example.
- ``+winddown`` rows are their base row with ``Budget(wind_down="auto")``: near the deadline
  no new job starts and the jobs in flight finish (flashevolve.policies.wind_down).  Any
  ``fixedW@B`` row takes ``+winddown`` too, so the comparison stays fair.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flashevolve.bench.throughput import CONFIGS, BenchConfig, register
from flashevolve.policies.speculation import Speculation

#: A fixed setting whose validate stage is the bottleneck (by its workers, not the server).
VALIDATION_BOUND = {"rollout": 16, "propose": 16, "gate": 16, "validate": 2}


def _speculate(alpha: float) -> Any:
    def extras() -> dict[str, Any]:
        return {"speculation": Speculation(evaluate_alpha=alpha)}

    return extras


register(
    BenchConfig(
        "valbound",
        workers=dict(VALIDATION_BOUND),
        max_in_flight=16,
        description="fixed 16/16/16 with 2 validate workers, 16 jobs: validation is the "
        "bottleneck (its workers wait on the sweeps' long tails)",
    )
)
for _alpha in (0.25, 0.5):
    register(
        BenchConfig(
            f"valbound+alpha{_alpha:g}",
            workers=dict(VALIDATION_BOUND),
            max_in_flight=16,
            extras=_speculate(_alpha),
            description=f"valbound + speculative validation, alpha {_alpha:g} "
            "(bar: parent's mean on the prefix)",
        )
    )
    register(
        replace(
            CONFIGS["async"],
            name=f"async+alpha{_alpha:g}",
            extras=_speculate(_alpha),
            description=f"the default async configuration + speculative validation, alpha "
            f"{_alpha:g}: the server is the bottleneck",
        )
    )
register(
    replace(
        CONFIGS["async"],
        name="async+winddown",
        wind_down="auto",
        description=f"{CONFIGS['async'].description}; winds down before the deadline (auto)",
    )
)
