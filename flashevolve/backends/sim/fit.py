"""The public measurements the engine profile's step time is fitted to, and the fit.

Run: ``python -m flashevolve.backends.sim.fit`` (prints the fit, its residuals and the
out-of-sample check; docs/simulator.md, "Fitted constants", shows the same tables).

The step model is ``time per output token = base + per_seq * concurrency`` while requests
decode: one engine step per token, every running sequence in every step.  Two sources measured
the time per output token of an 8B model on one H100 at several concurrencies; they ran
different engines and precisions, so each gets its own intercept (``base``) and both share the
per-sequence slope (attention and KV reads grow with the batch the same way whatever the weight
format).  The vLLM profile takes the intercept of the vLLM / Qwen3-8B / BF16 source.

Out of sample (not fitted): the GPUStack lab's saturated vLLM run of Qwen3-8B (BF16, one H100,
1,000 ShareGPT prompts sent at once) is replayed on the simulated engine with the fitted
constants -- :func:`saturation_check`.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from dataclasses import dataclass
from typing import Any

#: Where each series comes from (cited in docs/simulator.md).
SOURCES: dict[str, str] = {
    "vllm-qwen3-8b": (
        "GPUStack performance lab, 'Optimizing Qwen3-8B Latency on NVIDIA H100 GPUs' "
        "(github.com/gpustack/gpustack, docs/performance-lab/qwen3-8b/h100-latency.md): "
        "vLLM v0.11.0, Qwen/Qwen3-8B BF16, one H100 SXM, ShareGPT, 100 prompts, "
        "vllm bench serve --max-concurrency 1/2/4/8; mean TPOT and output tok/s"
    ),
    "nim-llama-3.1-8b": (
        "NVIDIA NIM LLM benchmarking guide, Performance page "
        "(docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance): "
        "Llama-3.1-8b-instruct, NIM 1.8.0, one H100 80G, concurrency 1-250; ITL and "
        "throughput. Precision not visible in our copy; a single-stream ITL of 4.6 ms is "
        "below the BF16 weight-read floor (~4.8 ms), so likely FP8: it gets its own intercept"
    ),
}


@dataclass(frozen=True, slots=True)
class Measurement:
    source: str
    concurrency: int
    ms_per_token: float  # mean time per output token (vLLM TPOT / NIM ITL)
    output_tokens_per_s: float  # reported output throughput at that concurrency


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("vllm-qwen3-8b", 1, 7.28, 132.86),
    Measurement("vllm-qwen3-8b", 2, 7.37, 257.19),
    Measurement("vllm-qwen3-8b", 4, 7.38, 496.88),
    Measurement("vllm-qwen3-8b", 8, 7.71, 917.28),
    Measurement("nim-llama-3.1-8b", 1, 4.63, 214.56),
    Measurement("nim-llama-3.1-8b", 5, 4.58, 1076.88),
    Measurement("nim-llama-3.1-8b", 25, 5.19, 4678.88),
    Measurement("nim-llama-3.1-8b", 50, 5.91, 8018.23),
    Measurement("nim-llama-3.1-8b", 100, 7.57, 12214.97),
    Measurement("nim-llama-3.1-8b", 150, 9.81, 12988.89),
    Measurement("nim-llama-3.1-8b", 200, 12.65, 13348.40),
    Measurement("nim-llama-3.1-8b", 250, 16.14, 12964.72),
)

#: The source whose intercept becomes the vLLM profile's base_step_s.
PROFILE_SOURCE = "vllm-qwen3-8b"


@dataclass(frozen=True)
class StepFit:
    per_seq_ms: float
    base_ms: dict[str, float]  # per source
    residuals_ms: tuple[tuple[Measurement, float, float], ...]  # (point, predicted, residual)

    @property
    def base_step_s(self) -> float:
        return round(self.base_ms[PROFILE_SOURCE] / 1000, 5)

    @property
    def per_seq_s(self) -> float:
        return round(self.per_seq_ms / 1000, 7)


def fit_step_time(points: tuple[Measurement, ...] = MEASUREMENTS) -> StepFit:
    """Least squares with one slope and one intercept per source (a within-source regression:
    the slope from the deviations around each source's means, each intercept from its means)."""
    by_source: dict[str, list[Measurement]] = {}
    for m in points:
        by_source.setdefault(m.source, []).append(m)
    num = den = 0.0
    means: dict[str, tuple[float, float]] = {}
    for source, ms in by_source.items():
        x_mean = statistics.fmean(m.concurrency for m in ms)
        y_mean = statistics.fmean(m.ms_per_token for m in ms)
        means[source] = (x_mean, y_mean)
        num += sum((m.concurrency - x_mean) * (m.ms_per_token - y_mean) for m in ms)
        den += sum((m.concurrency - x_mean) ** 2 for m in ms)
    slope = num / den
    base = {s: y - slope * x for s, (x, y) in means.items()}
    rows = []
    for m in points:
        predicted = base[m.source] + slope * m.concurrency
        rows.append((m, predicted, m.ms_per_token - predicted))
    return StepFit(slope, base, tuple(rows))


# -- out of sample: the saturated ShareGPT run ------------------------------------------------

#: GPUStack lab, 'The Impact of Quantization on vLLM Inference Performance' (same repository,
#: docs/performance-lab/references/): vLLM v0.9.2, Qwen3-8B BF16, one H100 80GB,
#: vllm bench serve on ShareGPT with --num-prompts 1000 (all sent at once).
SATURATED_RUN = {"total_tokens_per_s": 13305.38, "mean_tpot_ms": 126.55, "prompts": 1000}
#: ShareGPT as vllm bench samples it: 23,260 prompt / 22,061 output tokens over 100 prompts
#: (the latency page above); lengths drawn lognormal around those means, with vllm bench's
#: filter (prompts of at most 1,024 tokens, prompt + output of at most 2,048).
SHAREGPT_MEAN_PROMPT, SHAREGPT_MEAN_OUTPUT, SHAREGPT_SIGMA = 233, 221, 1.0


def saturation_check(profile: str = "vllm-h100-qwen3-8b", seed: int = 0) -> dict[str, float]:
    """Replay the saturated run on the simulated engine: 1,000 requests at once."""
    from flashevolve.backends.sim.engine import ServingEngine, Timing
    from flashevolve.backends.sim.lengths import LengthDist
    from flashevolve.backends.sim.profiles import EngineProfile, get_profile
    from flashevolve.runtime.clock import run_virtual

    p = get_profile(profile)
    assert isinstance(p, EngineProfile)
    rng = random.Random(f"sharegpt:{seed}")
    prompts = LengthDist(SHAREGPT_MEAN_PROMPT, SHAREGPT_SIGMA, 1024, floor=4)
    outputs = LengthDist(SHAREGPT_MEAN_OUTPUT, SHAREGPT_SIGMA, 2048, floor=4)
    sizes = []
    for _ in range(int(SATURATED_RUN["prompts"])):
        prompt = prompts.sample(rng)
        sizes.append((prompt, min(outputs.sample(rng), 2048 - prompt)))

    async def main() -> list[Timing]:
        engine = ServingEngine(p)
        return list(await asyncio.gather(*(engine.generate(i, o) for i, o in sizes)))

    timings = run_virtual(main())
    duration = max(t.finished for t in timings)
    tpots = [
        (t.finished - t.first_token) / (o - 1)
        for t, (_, o) in zip(timings, sizes, strict=True)
        if o > 1
    ]
    return {
        "total_tokens_per_s": sum(i + o for i, o in sizes) / duration,
        "mean_tpot_ms": 1000 * statistics.fmean(tpots),
    }


def closed_loop(profile: str, workers: int, minutes: float = 10.0, seed: int = 0) -> dict[str, Any]:
    """``workers`` clients each sending GEPA evaluation requests back to back for ``minutes``
    of virtual time: the throughput and latency a simulated server gives at that concurrency."""
    from flashevolve.backends.base import ChatRequest
    from flashevolve.backends.sim import SimulatedTask, simulated
    from flashevolve.runtime.clock import run_virtual

    llm = simulated(profile, seed=seed)
    task = SimulatedTask(n_val=300, seed=seed)
    latencies: list[float] = []

    async def worker(w: int, stop_at: float) -> None:
        loop = asyncio.get_running_loop()
        i = 0
        while loop.time() < stop_at:
            example = task.val[(w * 7919 + i) % len(task.val)]
            messages = task.messages(task.seed_artifact(), example)
            request = ChatRequest(messages, stage="validate", item_id=f"w{w}-{i}")
            request.max_tokens = task.max_tokens
            latencies.append((await llm.complete(request)).latency_s)
            i += 1

    async def main() -> None:
        await asyncio.gather(*(worker(w, minutes * 60) for w in range(workers)))

    run_virtual(main())
    stats = llm.stats()
    return {
        "workers": workers,
        "output_tokens_per_s": stats["completed_tokens"] / stats["elapsed_s"],
        "mean_latency_s": statistics.fmean(latencies),
        "p99_latency_s": sorted(latencies)[int(0.99 * (len(latencies) - 1))],
        "utilization": stats.get("utilization"),
    }


def main() -> None:
    fit = fit_step_time()
    print(f"per-sequence cost: {fit.per_seq_ms:.4f} ms per step")
    for source, base in fit.base_ms.items():
        print(f"base ({source}): {base:.3f} ms")
    print(f"{'source':18s} {'conc':>5s} {'measured':>9s} {'fitted':>7s} {'residual':>8s}")
    for m, predicted, residual in fit.residuals_ms:
        print(
            f"{m.source:18s} {m.concurrency:5d} {m.ms_per_token:9.2f} {predicted:7.2f} "
            f"{residual:+8.2f}"
        )
    check = saturation_check()
    print(
        f"out of sample, 1000 ShareGPT prompts at once: simulated "
        f"{check['total_tokens_per_s']:,.0f} tok/s total, mean TPOT {check['mean_tpot_ms']:.1f} ms "
        f"(measured {SATURATED_RUN['total_tokens_per_s']:,.0f} tok/s, "
        f"{SATURATED_RUN['mean_tpot_ms']:.1f} ms)"
    )
    print("closed loop, N clients sending GEPA evaluation requests for 10 simulated minutes:")
    for profile in ("vllm-h100-qwen3-8b", "api-gpt-4o-mini"):
        for n in (1, 8, 32, 64, 256):
            row = closed_loop(profile, n)
            util = row["utilization"]
            print(
                f"  {profile:20s} N={n:3d}: {row['output_tokens_per_s']:8,.0f} tok/s, latency "
                f"mean {row['mean_latency_s']:5.1f} s p99 {row['p99_latency_s']:5.1f} s"
                + (f", utilization {util:.0%}" if util is not None else "")
            )


if __name__ == "__main__":
    main()
