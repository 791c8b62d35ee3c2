"""Bench rows for the paper's mechanisms: adaptive worker control and speculative completion.

Imported by :mod:`flashevolve.bench.throughput` when it lists configurations.  ``extras`` builds a
fresh controller / speculation object per run, so no state leaks from one row to the next.  Every
row starts from the GEPA workflow's default worker counts (rollout 8, propose 4, gate 8,
validate 8) and lets the controller move them; up to 64 jobs in flight, as the fixed rows.
"""

from __future__ import annotations

from typing import Any

from flashevolve.bench.throughput import BenchConfig, register
from flashevolve.policies.control import AdaptiveController
from flashevolve.policies.speculation import Speculation

#: Where the adaptive rows start (the GepaWorkflow defaults).
ADAPTIVE_START = {"rollout": 8, "propose": 4, "gate": 8, "validate": 8}


def _adaptive(alpha: float | None = None) -> Any:
    def extras() -> dict[str, Any]:
        out: dict[str, Any] = {"control": AdaptiveController()}
        if alpha is not None:
            out["speculation"] = Speculation(rollout_alpha=alpha, evaluate_alpha=alpha)
        return out

    return extras


register(
    BenchConfig(
        "adaptive",
        workers=dict(ADAPTIVE_START),
        extras=_adaptive(),
        description="adaptive worker control from 8/4/8/8 (period 30 s, window "
        "120 s, 1..32 workers per stage)",
    )
)
register(
    BenchConfig(
        "adaptive+alpha0.25",
        workers=dict(ADAPTIVE_START),
        extras=_adaptive(0.25),
        description="adaptive + speculative completion, alpha 0.25 for rollout "
        "and validation (bar: parent's mean)",
    )
)
register(
    BenchConfig(
        "adaptive+alpha0.5",
        workers=dict(ADAPTIVE_START),
        extras=_adaptive(0.5),
        description="adaptive + speculative completion, alpha 0.5 for rollout "
        "and validation (bar: parent's mean)",
    )
)
