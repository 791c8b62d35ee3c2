"""What an Evolver decides before and around a run: the staleness policy and the controller it
was asked for, the backends it opens (and closes), what ``run_started`` says about them, and the
job bound a run starts with."""

from __future__ import annotations

from typing import Any

from flashevolve.backends import backend_from_spec
from flashevolve.backends.base import LLM
from flashevolve.errors import ConfigError
from flashevolve.policies.staleness import StalenessPolicy, make_policy
from flashevolve.workflows.base import Simulated


def staleness_policy(staleness: Any) -> StalenessPolicy:
    """``Evolver(staleness=...)`` as a policy; a bad value is a ``ConfigError`` naming it."""
    try:
        return make_policy(staleness)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"staleness: {err}") from None


def default_control(control: Any, mode: str) -> Any:
    """``control="auto"``: the adaptive controller for async runs (measured to make more
    accepted proposals per minute than fixed settings found in hindsight, docs/benchmarks.md
    section 4), nothing for sync (one worker per stage is what sync means)."""
    if not (isinstance(control, str) and control == "auto"):
        return control
    if mode != "async":
        return None
    from flashevolve.policies.control import AdaptiveController

    return AdaptiveController()


def open_backends(
    backend: Any, reflection: Any, workflow: Any, seed: int
) -> tuple[LLM, LLM | None, list[LLM]]:
    """The task backend, the reflection backend (None: the task's) and the ones made here from
    strings, which the run owns and closes.  ``backend`` may be a dict ``{"task": ...,
    "reflection": ...}``; the simulator gets the workflow's own workload."""
    owned: list[LLM] = []
    if isinstance(backend, dict):
        reflection = backend.get("reflection", reflection)
        backend = backend.get("task")
    workload = workflow.sim_workload() if isinstance(workflow, Simulated) else None
    if isinstance(backend, str):
        backend = backend_from_spec(backend, seed, workload=workload)
        owned.append(backend)
    if backend is None:
        raise ConfigError("Evolver needs a backend: an LLM object, 'local', or 'sim[:profile]'")
    if isinstance(reflection, str):
        reflection = backend_from_spec(reflection, seed, workload=workload)
        owned.append(reflection)
    return backend, reflection, owned


async def close_backends(owned: list[LLM], *in_use: LLM) -> None:
    """Close the backends the run made; a caller's own client only lets go of this loop."""
    for llm in owned:
        await llm.aclose()
    for llm in {id(b): b for b in in_use if b not in owned}.values():
        release = getattr(llm, "release_loop", None)  # a caller's client: this loop's part
        if release is not None:
            await release()


def backend_facts(llm: Any) -> dict[str, Any]:
    """What ``run_started`` says about a backend: where it is, and what the views need to read
    the log without it -- the throughput it can attain (``utilization``'s denominator, when it
    says: the simulator's profiles do) and the client's own cap on requests in flight."""
    facts: dict[str, Any] = {"endpoint": llm.endpoint, "model": llm.model}
    profile = getattr(llm, "profile", None)
    attainable = getattr(llm, "attainable_tokens_per_s", None)
    if attainable is None and profile is not None:
        attainable = getattr(profile, "attainable_tokens_per_s", None)
    if isinstance(attainable, int | float) and attainable > 0:
        facts["attainable_tokens_per_s"] = float(attainable)
    cap = getattr(llm, "max_concurrency", None)
    if isinstance(cap, int) and cap > 0:
        facts["max_concurrency"] = cap
        facts["queue"] = getattr(llm, "queue", None)
    return facts


def starting_bound(workflow: Any, workers: dict[str, int], llm: Any) -> int:
    """Jobs in flight when the user did not say: one per worker (fewer leave workers idle from
    the first minute), but no more than the client lets reach the server at once (its
    ``max_concurrency``: llama-server's slots, ``--concurrency``) -- a job keeps at least one
    request at the server, so jobs beyond that only wait in the client.  The adaptive
    controller sizes it from there, by the server's load."""
    total: int = sum(workers.get(spec.name, spec.default_workers) for spec in workflow.stages())
    cap = getattr(llm, "max_concurrency", None)
    return max(1, min(total, cap) if isinstance(cap, int) and cap > 0 else total)
