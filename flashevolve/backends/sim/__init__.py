"""The serving *simulator*: a workload model on a virtual clock.  It does not run any model.

- :func:`simulated` builds a :class:`SimulatedLLM` (the LLM Protocol) from a profile name.
- :mod:`.profiles` -- simulator parameters (continuous-batching engine, rate-limited API).
- :mod:`.engine` / :mod:`.api` -- the latency models; :mod:`.lengths` -- output lengths.
- :mod:`.workload` -- :class:`SimulatedTask` and the content model answering its requests.

See docs/simulator.md for what is modelled, what is not, and the calibration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flashevolve.backends.sim.api import SimulatedApi
from flashevolve.backends.sim.engine import ServingEngine, Timing
from flashevolve.backends.sim.lengths import STAGE_LENGTHS, LengthDist, count_prompt_tokens
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
    WorkloadContent,
    infer_stage,
    respond_patch,
)

if TYPE_CHECKING:
    from flashevolve.backends.faults.inprocess import ResilientSimulatedLLM


def simulated(
    profile: str | Profile = "vllm-h100-qwen3-8b",
    *,
    seed: int = 0,
    content: ContentModel | None = None,
    speed: float = 1.0,
    max_retries: int | None = None,
    faults: Any = None,
    resilience: Any = None,
) -> SimulatedLLM | ResilientSimulatedLLM:
    """A simulated LLM endpoint (``endpoint = "sim:<profile>"``).

    Run it under :func:`flashevolve.runtime.clock.run_virtual` for simulated time, or on a normal
    loop for real time (``speed`` > 1 makes the simulated server that much faster).

    ``faults`` (a fault SPEC, see :mod:`flashevolve.backends.faults.spec`) injects faults into a
    seeded fraction of requests, and ``resilience`` (settings, see
    :class:`~flashevolve.backends.resilience.ResilienceSettings`) sets how the client holds;
    with either, the simulator runs behind the same client rules as the HTTP client
    (:class:`~flashevolve.backends.faults.inprocess.ResilientSimulatedLLM`).
    """
    retries = 4 if max_retries is None else max_retries  # the bare simulator retries 429s only
    llm = SimulatedLLM(profile, seed=seed, content=content, speed=speed, max_retries=retries)
    if faults is None and resilience is None:
        return llm
    from flashevolve.backends.faults.inprocess import ResilientSimulatedLLM
    from flashevolve.backends.resilience import resilience_settings

    settings = resilience_settings(resilience, max_retries=max_retries)
    return ResilientSimulatedLLM(llm, faults=faults, resilience=settings)


__all__ = [
    "PROFILES",
    "STAGE_LENGTHS",
    "ApiProfile",
    "ContentModel",
    "EngineProfile",
    "LengthDist",
    "Profile",
    "ServingEngine",
    "SimulatedApi",
    "SimulatedLLM",
    "SimulatedTask",
    "Timing",
    "WorkloadContent",
    "count_prompt_tokens",
    "get_profile",
    "infer_stage",
    "respond_patch",
    "simulated",
]
