"""Wasted tokens: what cancelled requests had generated reaches the event log."""

from flashevolve.events.schema import Kind


def test_cancelled_tails_carry_their_tokens_and_match_the_server_count() -> None:
    from flashevolve import Evolver
    from flashevolve.backends.sim import SimulatedTask, simulated
    from flashevolve.policies.speculation import Speculation

    llm = simulated("vllm-h100-qwen3-8b", seed=0)
    ev = Evolver(
        SimulatedTask(seed=0, n_val=20),
        llm,
        budget=900,
        workers={"rollout": 8, "propose": 8, "evaluate": 4},
        speculation=Speculation(evaluate_alpha=0.25),
        seed=0,
    )
    summary = ev.run_virtual()
    cancelled = ev.events.filter(ev.events["kind"] == Kind.REQUEST_CANCELLED)
    assert cancelled.height > 0, "the run should abandon some validation tails"
    assert summary["cancelled_requests"] == cancelled.height
    assert summary["cancelled_tokens_unknown"] == 0  # the simulator always knows
    # The event log's count is the simulated server's own count of thrown-away tokens.
    assert summary["wasted_tokens"] == llm.stats()["wasted_tokens"] > 0
