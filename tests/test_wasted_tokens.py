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


def _http_run(stream: bool) -> dict:
    from flashevolve import Evolver
    from flashevolve.backends.openai_compat import OpenAICompatLLM
    from flashevolve.backends.server import FixedLatency, ScriptedResponder, serve_in_thread
    from flashevolve.backends.sim import SimulatedTask

    # Every answer takes 1.5 s to stream, so the 2 s budget's hard stop cuts requests mid-answer.
    responder = ScriptedResponder(None, latency=FixedLatency(1.5))
    with serve_in_thread(responder) as base_url:
        llm = OpenAICompatLLM(base_url, "scripted", max_retries=0, stream=stream)
        ev = Evolver(
            SimulatedTask(n_train=10, n_val=4),
            llm,
            budget=2,
            workers={"rollout": 2, "propose": 2, "evaluate": 2},
        )
        return ev.run_sync()


def test_streaming_http_counts_the_tokens_of_cancelled_requests() -> None:
    streamed = _http_run(stream=True)
    assert streamed["cancelled_requests"] > 0
    assert streamed["cancelled_tokens_unknown"] == 0
    assert streamed["wasted_tokens"] > 0  # pieces had arrived before the cut
    plain = _http_run(stream=False)
    assert plain["cancelled_requests"] > 0
    # Without streaming the client cannot know: recorded as unknown, not as zero work.
    assert plain["cancelled_tokens_unknown"] == plain["cancelled_requests"]
    assert plain["wasted_tokens"] == 0


def test_cli_stream_flag_reaches_the_client(tmp_path) -> None:
    import json
    import subprocess
    import sys

    from flashevolve.backends.server import FixedLatency, ScriptedResponder, serve_in_thread

    out = tmp_path / "run"
    with serve_in_thread(ScriptedResponder(None, latency=FixedLatency(1.5))) as url:
        proc = subprocess.run(
            [sys.executable, "-m", "flashevolve", "run", "--task", "sim", "--n-train", "10",
             "--n-val", "4", "--backend", "openai", "--base-url", url, "--model", "scripted",
             "--stream", "--mode", "async", "--minutes", "0.05", "--out", str(out),
             "--no-report"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())["async"]
    assert summary["cancelled_requests"] > 0  # the 3 s budget cut answers mid-stream
    assert summary["cancelled_tokens_unknown"] == 0
