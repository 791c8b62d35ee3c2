"""A server the caller owns outlives the runs that use it: two runs in a row on one managed
server (the notebooks' pattern), the second as able to reach it as the first."""

from __future__ import annotations

from flashevolve import Evolver
from flashevolve.backends.llama import ManagedServerLLM
from flashevolve.backends.process import free_port
from flashevolve.bench.failover import start_sim
from flashevolve.tasks import get_task


def test_a_run_leaves_the_callers_managed_server_running_for_the_next() -> None:
    llm = ManagedServerLLM(start_sim(free_port(), 200.0, "vllm-h100-qwen3-8b"), "sim")
    try:
        task = get_task("ifeval-lite", n_train=6, n_val=3, max_tokens=32)
        for mode in ("sync", "async"):
            run = Evolver(task, llm, mode=mode, budget={"proposals": 1}, seed=0, name=mode)
            run.start()
            summary = run.wait()
            assert llm.running, f"the {mode} run stopped the caller's server"
            assert summary["seed_score"] is not None, f"{mode}: the seed was never scored"
            assert not run.events.filter(run.events["kind"] == "request_retried").height
    finally:
        llm.close()
    assert not llm.running
