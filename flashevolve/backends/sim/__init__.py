"""The serving *simulator*: a workload model on a virtual clock.  It does not run any model.

- :func:`simulated` builds a :class:`SimulatedLLM` (the LLM Protocol) from a profile name.
- :mod:`.profiles` -- simulator parameters (continuous-batching engine, rate-limited API);
  :mod:`.fit` -- the public measurements the engine profile is fitted to.
- :mod:`.engine` / :mod:`.api` -- the latency models; :mod:`.lengths` -- output lengths.
- :mod:`.workload` -- :class:`SimWorkload` (what a workflow's requests look like), the generic
  markers and :class:`SimulatedTask`.  Each workflow brings its own workload (GEPA's:
  :mod:`flashevolve.workflows.gepa.sim`, the default when none is named).

See docs/simulator.md for what is modelled, what is not, and the calibration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flashevolve.backends.sim.api import SimulatedApi
from flashevolve.backends.sim.engine import ServingEngine, Timing
from flashevolve.backends.sim.lengths import LengthDist, count_prompt_tokens
from flashevolve.backends.sim.llm import SimulatedLLM
from flashevolve.backends.sim.profiles import (
    PROFILES,
    ApiProfile,
    EngineProfile,
    Profile,
    get_profile,
)
from flashevolve.backends.sim.workload import (
    ContentModel,
    SimulatedTask,
    SimWorkload,
    get_workload,
    register_workload,
)

if TYPE_CHECKING:
    from flashevolve.backends.faults.inprocess import ResilientSimulatedLLM


def simulated(
    profile: str | Profile = "vllm-h100-qwen3-8b",
    *,
    seed: int = 0,
    workload: str | SimWorkload | None = None,
    content: ContentModel | None = None,
    speed: float = 1.0,
    max_retries: int | None = None,
    faults: Any = None,
    resilience: Any = None,
) -> SimulatedLLM | ResilientSimulatedLLM:
    """A simulated LLM endpoint (``endpoint = "sim:<profile>"``).

    ``workload`` says what the requests look like (a :class:`SimWorkload` or its name; default
    GEPA's); ``content`` replaces just its content model.  Run it under
    :func:`flashevolve.runtime.clock.run_virtual` for simulated time, or on a normal loop for
    real time (``speed`` > 1 makes the simulated server that much faster).

    ``faults`` (a fault SPEC, see :mod:`flashevolve.backends.faults.spec`) injects faults into a
    seeded fraction of requests, and ``resilience`` (settings, see
    :class:`~flashevolve.backends.resilience.ResilienceSettings`) sets how the client holds;
    with either, the simulator runs behind the same client rules as the HTTP client
    (:class:`~flashevolve.backends.faults.inprocess.ResilientSimulatedLLM`).
    """
    retries = 4 if max_retries is None else max_retries  # the bare simulator retries 429s only
    llm = SimulatedLLM(
        profile, seed=seed, workload=workload, content=content, speed=speed, max_retries=retries
    )
    if faults is None and resilience is None:
        return llm
    from flashevolve.backends.faults.inprocess import ResilientSimulatedLLM
    from flashevolve.backends.resilience import resilience_settings

    settings = resilience_settings(resilience, max_retries=max_retries)
    return ResilientSimulatedLLM(llm, faults=faults, resilience=settings)


__all__ = [
    "PROFILES",
    "ApiProfile",
    "ContentModel",
    "EngineProfile",
    "LengthDist",
    "Profile",
    "ServingEngine",
    "SimWorkload",
    "SimulatedApi",
    "SimulatedLLM",
    "SimulatedTask",
    "Timing",
    "count_prompt_tokens",
    "get_profile",
    "get_workload",
    "register_workload",
    "simulated",
]
