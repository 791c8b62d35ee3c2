"""ACE bench rows: ACE's own loop (sync) against the default async runtime.

Every number is from the serving *simulator* on virtual time, labelled ``simulated``: the task is
:func:`~flashevolve.workflows.ace.sim.ace_sim_task` (hidden difficulties, pass/fail answers; 300
validation examples make a sweep of about two minutes, as in the paper's ACE step) and the
requests follow ACE's workload (:mod:`flashevolve.workflows.ace.sim`).  Run::

    flashevolve bench --workflow ace --minutes 30 --json ace-vllm.json

It prints a table (accepted playbook updates per minute first) and writes the rows as JSON.
"""

from __future__ import annotations

from typing import Any

from flashevolve.bench.throughput import BenchConfig
from flashevolve.bench.workflow_bench import WorkflowBench

WORKFLOW = "ace"


def _default_async(name: str, staleness: str, description: str) -> BenchConfig:
    # nothing tuned: ACE's own workers, the Evolver's job bound and the adaptive controller
    return BenchConfig(
        name, max_in_flight=None, adaptive=True, staleness=staleness, description=description
    )


CONFIGS: dict[str, BenchConfig] = {
    c.name: c
    for c in (
        BenchConfig(
            "sync",
            mode="sync",
            description="ACE's loop: generate, reflect, curate, then validate, one step at a time",
        ),
        _default_async("async", "full", "the default async run: stale operations kept"),
        _default_async(
            "async-guarded", "guarded", "as async; stale operations on changed bullets dropped"
        ),
        _default_async(
            "async-reflective",
            "reflective",
            "as async; stale operations reviewed and rebased onto the current playbook",
        ),
    )
}


def _task(seed: int) -> Any:
    from flashevolve.workflows.ace.sim import ace_sim_task

    return ace_sim_task(n_train=200, n_val=300, seed=seed)


BENCH = WorkflowBench(
    WORKFLOW, CONFIGS, make_task=_task, profile_stages=("generate", "reflect", "curate", "evaluate")
)
