"""Fault injection: the SPEC (:mod:`.spec`), the seeded draw and its counts (:mod:`.plan`),
broken answers (:mod:`.body`), and carrying them out over HTTP (:mod:`.http`, used by
``serve-sim --faults``) or inside the process (:mod:`.inprocess`, used by
``backends.simulated(faults=...)``).  See docs/reliability.md."""

from __future__ import annotations

from flashevolve.backends.faults.plan import FaultPlan
from flashevolve.backends.faults.spec import OBSERVED_AS, FaultKind, FaultSpec, parse_fault_spec

__all__ = ["OBSERVED_AS", "FaultKind", "FaultPlan", "FaultSpec", "parse_fault_spec"]
