"""Simulator parameters: how fast a *simulated* server serves requests.

Nothing here measures real hardware.  These are the knobs of the serving simulator, chosen so that
a synchronous GEPA step on the simulated task lands near the figures reported by the FlashEvolve
paper (about 2 minutes per step on one H100 serving Qwen3-8B with vLLM, ~80% of it evaluation),
and cross-checked against public, first-principles numbers.  Every field states where its value
comes from; ``docs/simulator.md`` has the calibration run and its script.

Two kinds of profile exist:

- :class:`EngineProfile` -- a continuous-batching server (vLLM-like): one decode step advances
  every running sequence by one token and costs ``base_step_s + per_seq_s * running`` seconds.
- :class:`ApiProfile` -- a hosted API (OpenAI-like): each request streams at its own fixed rate,
  no batch slowdown, but requests/min and tokens/min limits answer HTTP 429.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from flashevolve.errors import ConfigError


class EngineProfile(BaseModel):
    """Simulator parameters of a continuous-batching inference server (vLLM-style)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["engine"] = "engine"
    name: str
    model: str = Field(description="Model name the simulated server reports.")
    base_step_s: float = Field(
        gt=0,
        description="Memory-bound cost of one decode step (weights read once per step), seconds.",
    )
    per_seq_s: float = Field(
        ge=0, description="Extra cost per running sequence per decode step (attention/KV reads)."
    )
    prefill_tokens_per_s: float = Field(gt=0, description="Prompt processing rate (one lane).")
    max_running: int = Field(gt=0, description="Sequences decoded together at most.")
    kv_capacity_tokens: int = Field(
        gt=0, description="KV-cache size in tokens; a request reserves prompt + completion."
    )

    @property
    def attainable_tokens_per_s(self) -> float:
        """Decode throughput with a full batch: the denominator of utilization."""
        return self.max_running / self.step_time(self.max_running)

    def step_time(self, running: int) -> float:
        return self.base_step_s + self.per_seq_s * running

    def scaled(self, speed: float) -> EngineProfile:
        """The same server ``speed`` times faster (for real-time serving of the simulator)."""
        _check_speed(speed)
        return self.model_copy(
            update={
                "base_step_s": self.base_step_s / speed,
                "per_seq_s": self.per_seq_s / speed,
                "prefill_tokens_per_s": self.prefill_tokens_per_s * speed,
            }
        )


class ApiProfile(BaseModel):
    """Simulator parameters of a hosted chat API with rate limits (OpenAI-style)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["api"] = "api"
    name: str
    model: str
    ttft_s: float = Field(gt=0, description="Median time to first token, seconds.")
    ttft_sigma: float = Field(
        default=0.25, ge=0, description="Lognormal spread of the time to first token."
    )
    per_stream_tokens_per_s: float = Field(gt=0, description="Output rate of one request.")
    rpm_limit: int = Field(gt=0, description="Requests per sliding 60 s window before 429.")
    tpm_limit: int = Field(
        gt=0, description="Tokens (prompt + completion) per sliding 60 s window before 429."
    )
    window_s: float = Field(default=60.0, gt=0, description="Rate-limit window, seconds.")

    @property
    def attainable_tokens_per_s(self) -> float:
        """Output tokens/s the rate limit allows at most (the API's effective ceiling)."""
        return self.tpm_limit / self.window_s

    def scaled(self, speed: float) -> ApiProfile:
        _check_speed(speed)
        return self.model_copy(
            update={
                "ttft_s": self.ttft_s / speed,
                "per_stream_tokens_per_s": self.per_stream_tokens_per_s * speed,
                # The window shrinks with time, so the per-window limits stay the same.
                "window_s": self.window_s / speed,
            }
        )


Profile = EngineProfile | ApiProfile


def _check_speed(speed: float) -> None:
    if not speed > 0:
        raise ConfigError(f"speed must be > 0 (got {speed}); use 1.0 for real time")


# --- the built-in profiles ------------------------------------------------------------------
#
# vllm-h100-qwen3-8b
#   base_step_s 10 ms: Qwen3-8B in BF16 is ~16.4 GB of weights; at the H100 SXM's 3.35 TB/s a
#     decode step cannot be faster than ~4.9 ms.  Real single-stream vLLM decode of 8B models on
#     an H100 reports ~100-150 tok/s (7-10 ms/step); 10 ms is what makes the simulated sync GEPA
#     step match the paper's ~9 s rollout / ~96 s evaluate (docs/simulator.md, calibration).
#   per_seq_s 0.12 ms: gives ~6,400 tok/s decode at 256 sequences, in the range reported for
#     8B models on one H100 under vLLM at high batch (several thousand tok/s).
#   prefill 20,000 tok/s: 8B params -> ~16 GFLOP/token; ~30-40% of the H100's ~990 dense BF16
#     TFLOP/s.
#   max_running 256: vLLM's default max_num_seqs.
#   kv_capacity 400,000 tokens: Qwen3-8B keeps 36 layers x 8 KV heads x 128 dims x 2 (K,V) x 2 B
#     = 144 KiB per token; ~56 GiB left for the cache at gpu_memory_utilization 0.9 -> ~400k.
#
# api-gpt-4o-mini
#   ttft 0.5 s and 75 tok/s per stream: typical public measurements of gpt-4o-mini (0.4-0.6 s
#     to first token, 60-90 output tok/s).  Limits are tier-style values (a usage-tier-2-like
#     5,000 RPM / 2,000,000 TPM; the -tier1 variant 500 RPM / 200,000 TPM).  Real limits depend
#     on your account: read them from your provider's limits page and make your own profile.

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        EngineProfile(
            name="vllm-h100-qwen3-8b",
            model="Qwen/Qwen3-8B (simulated)",
            base_step_s=0.011,
            per_seq_s=0.0002,
            prefill_tokens_per_s=20_000.0,
            max_running=256,
            kv_capacity_tokens=400_000,
        ),
        ApiProfile(
            name="api-gpt-4o-mini",
            model="gpt-4o-mini (simulated)",
            ttft_s=0.5,
            per_stream_tokens_per_s=75.0,
            rpm_limit=5_000,
            tpm_limit=2_000_000,
        ),
        ApiProfile(
            name="api-gpt-4o-mini-tier1",
            model="gpt-4o-mini (simulated)",
            ttft_s=0.5,
            per_stream_tokens_per_s=75.0,
            rpm_limit=500,
            tpm_limit=200_000,
        ),
    )
}


def get_profile(profile: str | Profile) -> Profile:
    """A built-in profile by name, or the given profile object unchanged."""
    if isinstance(profile, EngineProfile | ApiProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ConfigError(
            f"unknown simulator profile {profile!r}; choose one of: {known} "
            f"(or pass an EngineProfile/ApiProfile object)"
        ) from None
