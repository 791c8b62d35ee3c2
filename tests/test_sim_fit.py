"""The vLLM profile's step time is the least-squares fit to the published measurements."""

from __future__ import annotations

import pytest

from flashevolve.backends.sim import PROFILES
from flashevolve.backends.sim.fit import (
    MEASUREMENTS,
    PROFILE_SOURCE,
    SATURATED_RUN,
    fit_step_time,
    saturation_check,
)


def test_profile_carries_the_fitted_constants() -> None:
    fit = fit_step_time()
    profile = PROFILES["vllm-h100-qwen3-8b"]
    assert profile.base_step_s == pytest.approx(fit.base_ms[PROFILE_SOURCE] / 1000, abs=5e-6)
    assert profile.per_seq_s == pytest.approx(fit.per_seq_ms / 1000, rel=0.01)


def test_fit_is_least_squares_with_one_slope_and_an_intercept_per_source() -> None:
    fit = fit_step_time()
    # least squares: the residuals of each source sum to zero and are orthogonal to concurrency
    for source in fit.base_ms:
        rows = [(m, r) for m, _, r in fit.residuals_ms if m.source == source]
        assert sum(r for _, r in rows) == pytest.approx(0.0, abs=1e-9)
    assert sum(m.concurrency * r for m, _, r in fit.residuals_ms) == pytest.approx(0.0, abs=1e-6)
    # the vLLM/Qwen3-8B series is matched within 0.1 ms per token
    assert all(abs(r) < 0.1 for m, _, r in fit.residuals_ms if m.source == PROFILE_SOURCE)
    assert len(fit.residuals_ms) == len(MEASUREMENTS)


def test_saturated_sharegpt_run_out_of_sample() -> None:
    check = saturation_check()
    measured = SATURATED_RUN["total_tokens_per_s"]
    assert check["total_tokens_per_s"] == pytest.approx(measured, rel=0.10)
