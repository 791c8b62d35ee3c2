"""Calibration runs the real GEPA workflow (sync) on the simulator and reads its event log."""

from __future__ import annotations

from flashevolve.backends.sim.calibrate import STAGES, sync_step_profile


def test_calibration_runs_the_sync_workflow_with_its_evaluation_concurrency() -> None:
    report = sync_step_profile(minutes=10, n_val=40, eval_concurrency=8, seed=0)
    assert report["sim_minutes"] == 10.0
    # The workflow option reached the workflow: validation sweeps ran 8 requests at a time.
    assert report["peak_concurrency"] == 8
    # A full step (all four stages) is exactly a child that passed the gate and was admitted.
    assert report["full_steps"] == report["accepted"] >= 1
    assert report["short_steps"] >= 1  # skipped reflections and gate failures end early
    medians = report["median_item_s"]
    assert all(medians[s] > 0 for s in STAGES)
    assert medians["validate"] > medians["gate"]  # 40 examples, 8 at a time, against 3
    assert report["median_full_step_s"] >= medians["validate"]
    split = report["split_of_medians"]
    assert abs(sum(split.values()) - 1.0) < 0.01


def test_wider_evaluation_concurrency_shortens_validation() -> None:
    narrow = sync_step_profile(minutes=10, n_val=64, eval_concurrency=4, seed=1)
    wide = sync_step_profile(minutes=10, n_val=64, eval_concurrency=32, seed=1)
    assert wide["peak_concurrency"] == 32 and narrow["peak_concurrency"] == 4
    assert wide["median_item_s"]["validate"] < narrow["median_item_s"]["validate"] / 2


def test_reflection_prompts_carry_the_minibatch_records() -> None:
    # Evaluation answers are as long as their sampled completion, so a reflection prompt that
    # quotes three of them (input, output, feedback) is one to three thousand tokens.
    report = sync_step_profile(minutes=10, n_val=40, eval_concurrency=8, seed=0)
    by_stage = {row["stage"]: row for row in report["tokens_by_stage"]}
    assert 1000 <= by_stage["propose"]["prompt_p50"] <= 3000
    assert by_stage["validate"]["prompt_p95"] < 400  # instruction + one request
    assert by_stage["validate"]["completion_mean"] > 300
