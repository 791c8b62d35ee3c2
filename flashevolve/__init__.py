"""flashevolve: fast, asynchronous LLM-based evolution of text artifacts, Jupyter-first."""

from flashevolve.artifacts import Artifact
from flashevolve.evolver import Evolver
from flashevolve.pool import ArtifactPool, CandidateRecord
from flashevolve.runtime.budget import Budget
from flashevolve.runtime.clock import LoopClock, ManualClock, VirtualTimeLoop, run_virtual

__all__ = [
    "Artifact",
    "ArtifactPool",
    "Budget",
    "CandidateRecord",
    "Evolver",
    "LoopClock",
    "ManualClock",
    "VirtualTimeLoop",
    "run_virtual",
]
__version__ = "0.1.0"
