"""Bench rows for the paper's mechanisms: adaptive worker control and speculative completion.

Imported by :mod:`flashevolve.bench.throughput` when it lists configurations.  ``extras`` builds a
fresh controller / speculation object per run, so no state leaks from one row to the next.

- ``adaptive*`` rows start from the GEPA workflow's default worker counts (rollout 8, propose 4,
  gate 8, validate 8) and 64 jobs in flight, as the fixed rows, and let the controller move
  both the workers and the job bound.
- ``valbound*`` rows are a fixed, validation-bound setting (16/16/16 with 2 validate workers):
  the regime of the paper's speculation ablation, where the validate stage is the one that
  limits sweeps.  With the adaptive controller validation is not starved in our simulator, so
  these rows are where speculative validation can be seen doing its job.
- The ``+alpha`` rows speculate on **validation** (``evaluate_alpha``: score a prefix, exact
  early reject, speculative admission with confirm/rollback).  Rollout speculation
  (``rollout_alpha``) is a separate setting and not in these rows: GEPA's minibatch has 3
  examples, so any alpha below 2/3 hands the reflection a single example; docs/benchmarks.md
  section 4 has the measured effect (it lowers the gate pass rate).
- ``+winddown`` rows are their base row with ``Budget(wind_down="auto")``: near the deadline
  no new job starts and the jobs in flight finish (flashevolve.policies.wind_down).  Both the
  best fixed rows and the adaptive row get it, so the comparison between them stays fair.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flashevolve.bench.throughput import CONFIGS, BenchConfig, register
from flashevolve.policies.control import AdaptiveController
from flashevolve.policies.speculation import Speculation

#: Where the adaptive rows start (the GepaWorkflow defaults).
ADAPTIVE_START = {"rollout": 8, "propose": 4, "gate": 8, "validate": 8}
#: A fixed setting whose validate stage is the bottleneck.
VALIDATION_BOUND = {"rollout": 16, "propose": 16, "gate": 16, "validate": 2}


def _extras(adaptive: bool, alpha: float | None = None) -> Any:
    def extras() -> dict[str, Any]:
        out: dict[str, Any] = {}
        if adaptive:
            out["control"] = AdaptiveController()
        if alpha is not None:
            out["speculation"] = Speculation(evaluate_alpha=alpha)
        return out

    return extras


register(
    BenchConfig(
        "adaptive",
        workers=dict(ADAPTIVE_START),
        extras=_extras(True),
        description="adaptive worker control from 8/4/8/8 and 64 jobs in flight (period 30 s, "
        "window 120 s, 1..64 workers per stage, job bound up to 512; balance rule + scale "
        "trials)",
    )
)
for _alpha in (0.25, 0.5):
    register(
        BenchConfig(
            f"adaptive+alpha{_alpha:g}",
            workers=dict(ADAPTIVE_START),
            extras=_extras(True, _alpha),
            description=f"adaptive + speculative validation, alpha {_alpha:g} "
            "(bar: parent's mean on the prefix)",
        )
    )
register(
    BenchConfig(
        "valbound",
        workers=dict(VALIDATION_BOUND),
        extras=_extras(False),
        description="fixed 16/16/16 with 2 validate workers: validation is the bottleneck",
    )
)
for _alpha in (0.25, 0.5):
    register(
        BenchConfig(
            f"valbound+alpha{_alpha:g}",
            workers=dict(VALIDATION_BOUND),
            extras=_extras(False, _alpha),
            description=f"valbound + speculative validation, alpha {_alpha:g} "
            "(bar: parent's mean on the prefix)",
        )
    )
for _base in ("async32", "async32@96", "adaptive"):
    register(
        replace(
            CONFIGS[_base],
            name=f"{_base}+winddown",
            wind_down="auto",
            description=f"{CONFIGS[_base].description}; winds down before the deadline (auto)",
        )
    )
