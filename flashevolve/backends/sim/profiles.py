"""Simulator parameters: how fast a *simulated* server serves requests.

Nothing here measures real hardware.  These are the knobs of the serving simulator, each fitted
to or taken from a public source (``docs/simulator.md`` lists the sources and the fit, and
:mod:`.fit` holds the published figures and the least-squares fit itself).  The paper's
~2-minute synchronous GEPA step is reached through the *workload* (output lengths, validation
set size, the sync loop's evaluation concurrency), not through a slow decoder.

Two kinds of profile exist:

- :class:`EngineProfile` -- a continuous-batching server (vLLM v1-like): each engine step
  carries one token of every decoding sequence plus up to a token budget of prefill chunks and
  costs ``base_step_s + per_seq_s * decoding + prefill_tokens / prefill_tokens_per_s``.
- :class:`ApiProfile` -- a hosted API (OpenAI-like): each request streams at its own fixed rate,
  no batch slowdown, but requests/min and tokens/min limits answer HTTP 429; tokens are
  *reserved* at admission (prompt + ``max_tokens``), as OpenAI's rate limiter counts them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from flashevolve.errors import ConfigError


class EngineProfile(BaseModel):
    """Simulator parameters of a continuous-batching inference server (vLLM v1-style)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["engine"] = "engine"
    name: str
    model: str = Field(description="Model name the simulated server reports.")
    base_step_s: float = Field(
        gt=0,
        description="Cost of one engine step with one sequence, less its per-sequence share "
        "(weights read once per step), seconds.",
    )
    per_seq_s: float = Field(
        ge=0, description="Extra cost per decoding sequence per step (attention/KV reads)."
    )
    prefill_tokens_per_s: float = Field(
        gt=0,
        description="Prompt tokens per second of step time: each prefill token in a step adds "
        "1/prefill_tokens_per_s seconds to it.",
    )
    max_batched_tokens: int = Field(
        default=8192,
        gt=0,
        description="Token budget of one step (vLLM's max_num_batched_tokens): the decoding "
        "sequences' tokens plus the prefill chunks.",
    )
    max_running: int = Field(gt=0, description="Sequences admitted at most (max_num_seqs).")
    kv_capacity_tokens: int = Field(
        gt=0, description="KV-cache size in tokens; a request reserves prompt + completion."
    )

    @property
    def attainable_tokens_per_s(self) -> float:
        """Decode throughput with a full batch: the denominator of utilization."""
        return self.max_running / self.step_time(self.max_running)

    def step_time(self, decoding: int, prefill_tokens: float = 0.0) -> float:
        """Seconds of one engine step with ``decoding`` sequences and that many prefill tokens."""
        return (
            self.base_step_s
            + self.per_seq_s * decoding
            + prefill_tokens / self.prefill_tokens_per_s
        )

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
        gt=0,
        description="Tokens per sliding 60 s window before 429.  A request reserves its prompt "
        "plus max_tokens at admission; one without max_tokens reserves its prompt and is "
        "charged its completion when it finishes.",
    )
    window_s: float = Field(default=60.0, gt=0, description="Rate-limit window, seconds.")

    @property
    def attainable_tokens_per_s(self) -> float:
        """Tokens/s the rate limit allows at most (the API's effective ceiling)."""
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
# vllm-h100-qwen3-8b (docs/simulator.md, "Fitted constants", has the table and the residuals)
#   base_step_s 7.27 ms and per_seq_s 0.0445 ms: least squares (flashevolve.backends.sim.fit)
#     over the time per output token of vLLM v0.11 serving Qwen3-8B (BF16) on one H100 SXM at
#     concurrency 1-8 (GPUStack performance lab) and of NVIDIA NIM serving Llama-3.1-8B-Instruct
#     on one H100 at concurrency 1-250 (NIM benchmarking guide), one slope for both, one
#     intercept per source; the profile takes the vLLM/Qwen3-8B intercept.
#   prefill 20,000 tok/s of step time: first principles, not fitted -- 8.2B parameters -> ~16
#     GFLOP per prompt token, at ~33% of the H100's ~990 dense BF16 TFLOP/s.
#   max_batched_tokens 8192 and max_running 1024: vLLM v1's defaults for the OpenAI server on a
#     GPU with >= 70 GiB that is not an A100 (vllm/engine/arg_utils.py, get_batch_defaults).
#   kv_capacity 400,000 tokens: Qwen3-8B keeps 36 layers x 8 KV heads x 128 dims x 2 (K,V) x 2 B
#     = 144 KiB per token; ~56 GiB left for the cache at gpu_memory_utilization 0.9 -> ~400k.
#
# api-gpt-4o-mini[-tierN]
#   ttft 0.5 s and 75 tok/s per stream: typical public measurements of gpt-4o-mini (0.4-0.6 s
#     to first token, 60-90 output tok/s).  RPM/TPM: OpenAI's usage tiers for gpt-4o-mini (tier
#     1: 500 RPM / 200,000 TPM; 2: 5,000 / 2M; 3: 5,000 / 4M; 4: 10,000 / 10M; 5: 30,000 / 150M;
#     sources in docs/simulator.md).  ``api-gpt-4o-mini`` is tier 2.  Real limits depend on the
#     account and change over time: read yours from the limits page and make your own profile.

#: gpt-4o-mini's (requests per minute, tokens per minute) by OpenAI usage tier.
GPT_4O_MINI_TIERS: dict[int, tuple[int, int]] = {
    1: (500, 200_000),
    2: (5_000, 2_000_000),
    3: (5_000, 4_000_000),
    4: (10_000, 10_000_000),
    5: (30_000, 150_000_000),
}


def _gpt_4o_mini(name: str, tier: int) -> ApiProfile:
    rpm, tpm = GPT_4O_MINI_TIERS[tier]
    return ApiProfile(
        name=name,
        model="gpt-4o-mini (simulated)",
        ttft_s=0.5,
        per_stream_tokens_per_s=75.0,
        rpm_limit=rpm,
        tpm_limit=tpm,
    )


_BUILT_IN: tuple[Profile, ...] = (
    EngineProfile(
        name="vllm-h100-qwen3-8b",
        model="Qwen/Qwen3-8B (simulated)",
        base_step_s=0.00727,
        per_seq_s=0.0000445,
        prefill_tokens_per_s=20_000.0,
        max_batched_tokens=8192,
        max_running=1024,
        kv_capacity_tokens=400_000,
    ),
    _gpt_4o_mini("api-gpt-4o-mini", 2),
    *(_gpt_4o_mini(f"api-gpt-4o-mini-tier{t}", t) for t in GPT_4O_MINI_TIERS),
)
PROFILES: dict[str, Profile] = {p.name: p for p in _BUILT_IN}


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
