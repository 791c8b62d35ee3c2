"""Views of a run: Altair charts, the ipywidgets dashboard and the offline HTML report.

Heavy imports (Altair, ipywidgets, vl-convert) happen when a view module is first used, so
``import flashevolve`` stays cheap in scripts that never draw anything.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "throughput_chart": "flashevolve.views.charts",
    "concurrency_chart": "flashevolve.views.charts",
    "server_load_chart": "flashevolve.views.charts",
    "stage_breakdown_chart": "flashevolve.views.charts",
    "score_vs_time_chart": "flashevolve.views.charts",
    "staleness_chart": "flashevolve.views.charts",
    "lineage_chart": "flashevolve.views.charts",
    "artifact_size_chart": "flashevolve.views.edit_charts",
    "operations_chart": "flashevolve.views.edit_charts",
    "Dashboard": "flashevolve.views.widgets",
    "dashboard": "flashevolve.views.widgets",
    "write_report": "flashevolve.views.report",
    "save_chart": "flashevolve.views.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flashevolve.views' has no attribute {name!r}")


__all__ = [
    "Dashboard",
    "concurrency_chart",
    "dashboard",
    "lineage_chart",
    "save_chart",
    "score_vs_time_chart",
    "server_load_chart",
    "stage_breakdown_chart",
    "staleness_chart",
    "throughput_chart",
    "write_report",
]
