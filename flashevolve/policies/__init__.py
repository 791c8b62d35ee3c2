"""Policies the runtime consults: staleness (full / guarded / reflective), speculative stage
completion, adaptive worker control, and winding down before a time budget ends.  See docs/mechanisms.md.

Names are resolved lazily so that importing the runtime does not pull in every policy.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FullAsync": "flashevolve.policies.staleness",
    "StaleItem": "flashevolve.policies.staleness",
    "StaleDecision": "flashevolve.policies.staleness",
    "StalenessPolicy": "flashevolve.policies.staleness",
    "make_policy": "flashevolve.policies.staleness",
    "Guarded": "flashevolve.policies.guarded",
    "Reflective": "flashevolve.policies.reflective",
    "Speculation": "flashevolve.policies.speculation",
    "AdaptiveController": "flashevolve.policies.control",
    "WindDown": "flashevolve.policies.wind_down",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flashevolve.policies' has no attribute {name!r}")
