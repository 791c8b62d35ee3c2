"""The orchestrator-overhead benchmark's two measurements (wall time is reported, never asserted)."""

from __future__ import annotations

from flashevolve.bench.overhead import ZeroLatencyLLM, items_per_second, simulated_run_fraction


def test_zero_latency_backend_runs_the_workflow_to_its_metric_budget() -> None:
    result = items_per_second(metric_calls=400, seed=0)
    assert result["items"] > 0 and result["events"] > result["items"]
    # every metric call is a request, plus the reflections
    assert result["requests"] >= 400
    assert result["items_per_s"] == result["items"] / result["wall_s"]
    assert ZeroLatencyLLM.endpoint.startswith("sim:")


def test_simulated_run_fraction_covers_the_run_span() -> None:
    frac = simulated_run_fraction("vllm-h100-qwen3-8b", minutes=8.0, seed=0)
    assert 470.0 <= frac["simulated_s"] <= 490.0
    assert frac["fraction"] == frac["wall_s"] / frac["simulated_s"]
    assert frac["events"] > 0 and frac["proposals"] >= 1
