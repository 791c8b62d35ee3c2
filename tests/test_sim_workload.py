"""The simulator's output lengths and workload content model (virtual time, no real model)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics

import pytest

from flashevolve.backends.base import ChatRequest
from flashevolve.backends.sim import SimulatedLLM, SimulatedTask, count_prompt_tokens
from flashevolve.backends.sim.workload import QUALITY_RE, quality_marker
from flashevolve.runtime.clock import run_virtual
from flashevolve.workflows.gepa.sim import (
    STAGE_LENGTHS,
    WorkloadContent,
    infer_stage,
    respond_patch,
)

Q = re.compile(r"sim-quality=([0-9.]+)")


def test_length_distributions_are_long_tailed_with_the_right_means() -> None:
    rng = random.Random(0)
    evals = [STAGE_LENGTHS["validate"].sample(rng) for _ in range(20_000)]
    assert 620 <= statistics.fmean(evals) <= 760
    assert statistics.median(evals) < 500  # long right tail: median well below the mean
    assert max(evals) <= 7000 and sorted(evals)[int(0.999 * len(evals))] > 3500
    props = [STAGE_LENGTHS["propose"].sample(rng) for _ in range(5000)]
    assert 1600 <= statistics.fmean(props) <= 1800
    patches = [STAGE_LENGTHS["patch"].sample(rng) for _ in range(5000)]
    assert 700 <= statistics.fmean(patches) <= 900


def test_prompt_tokens_are_four_chars_per_token_plus_overhead() -> None:
    msgs = [{"role": "system", "content": "x" * 40}, {"role": "user", "content": "y" * 10}]
    assert count_prompt_tokens(msgs) == 10 + 4 + 3 + 4


def _eval_text(q: float, difficulty: float, example: str = "val-1") -> str:
    content = WorkloadContent()
    msgs = [
        {"role": "system", "content": f"Do it. {quality_marker(q)}"},
        {"role": "user", "content": f"[sim-example id={example} difficulty={difficulty}]"},
    ]
    return content.respond(msgs, "validate", random.Random(0))


def test_evaluation_depends_on_quality_versus_difficulty() -> None:
    assert _eval_text(0.9, 0.2) == "ANSWER: pass"
    assert _eval_text(0.1, 0.8).startswith("ANSWER: fail")
    assert _eval_text(0.5, 0.5) == _eval_text(0.5, 0.5)  # deterministic
    task = SimulatedTask(n_val=50)

    def score(q: float) -> float:
        comps = {"instruction": f"Do it. {quality_marker(q)}"}
        content = WorkloadContent()
        total = 0.0
        for ex in task.val:
            out = content.respond(task.messages(comps, ex), "validate", random.Random(0))
            total += task.metric(ex, out).score
        return total / len(task.val)

    assert score(0.2) < score(0.5) < score(0.8)


def _reflection_prompt(q: float, answers: list[str]) -> list[dict[str, str]]:
    records = "\n".join(f"# Example {i}\n## Output\n{a}" for i, a in enumerate(answers))
    text = (
        f"Current instruction:\n```\nAnswer well.\n{quality_marker(q)}\n```\n{records}\n"
        "Write an improved instruction in a fenced block."
    )
    return [{"role": "user", "content": text}]


def _child_q(reply: str) -> float | None:
    if reply.count("```") < 2:
        return None
    return float(Q.search(reply).group(1))  # type: ignore[union-attr]


def test_reflection_moves_quality_mostly_up_and_sometimes_down() -> None:
    content = WorkloadContent()
    failing = _reflection_prompt(0.4, ["ANSWER: fail (missed constraint 1)"] * 3)
    passing = _reflection_prompt(0.4, ["ANSWER: pass"] * 2 + ["ANSWER: fail (x)"])
    up_fail, up_pass, malformed = [], [], 0
    for i in range(2000):
        r1 = content.respond(failing, "propose", random.Random(i))
        r2 = content.respond(passing, "propose", random.Random(10_000 + i))
        for reply, out in ((r1, up_fail), (r2, up_pass)):
            q = _child_q(reply)
            if q is None:
                malformed += 1
            else:
                out.append(q - 0.4)
    assert statistics.fmean(up_fail) > statistics.fmean(up_pass) > 0
    assert any(d < 0 for d in up_fail) and any(d < 0 for d in up_pass)
    assert 0.01 <= malformed / 4000 <= 0.035
    near_one = _reflection_prompt(0.97, ["ANSWER: fail (x)"] * 3)
    gains = [_child_q(content.respond(near_one, "propose", random.Random(i))) for i in range(300)]
    assert statistics.fmean(q for q in gains if q is not None) < 0.99  # diminishing near 1


def test_truncated_outputs_fail_or_are_malformed() -> None:
    content = WorkloadContent()
    prompt = _reflection_prompt(0.4, ["ANSWER: fail (x)"])
    assert content.respond(prompt, "propose", random.Random(0), truncated=True).count("```") == 1
    msgs = [{"role": "user", "content": "[sim-example id=a difficulty=0.1]"}]
    assert "incomplete" in content.respond(msgs, "validate", random.Random(0), truncated=True)


def test_stage_heuristics_for_clients_without_the_header() -> None:
    assert infer_stage(_reflection_prompt(0.3, [])) == "propose"
    assert infer_stage([{"role": "user", "content": "What is 2+2?"}]) == "rollout"
    patch = "Stale items below: decide accept, discard or patch. Return decisions."
    assert infer_stage([{"role": "user", "content": patch}]) == "patch"


def test_patch_answers_the_documented_schema() -> None:
    prompt = (
        "Decide accept / discard / patch for each stale item. component: instruction\n"
        f"## Current best\nAnswer. {quality_marker(0.6)}\n"
        f"## Item p-1\nBetter. {quality_marker(0.7)}\n"
        f"## Item p-2\nClose. {quality_marker(0.57)}\n"
        f"## Item p-3\nWorse. {quality_marker(0.2)}\n"
    )
    answer = json.loads(respond_patch(prompt, random.Random(0)))
    decisions = {d["item"]: d["decision"] for d in answer["decisions"]}
    assert decisions == {"p-1": "accept", "p-2": "patch", "p-3": "discard"}
    assert all(d["rationale"] for d in answer["decisions"])
    patched = answer["patched"]["instruction"]
    assert float(QUALITY_RE.search(patched).group(1)) >= 0.55  # type: ignore[union-attr]
    only_discard = prompt.split("## Item p-1")[0] + f"## Item z\nBad. {quality_marker(0.1)}\n"
    assert json.loads(respond_patch(only_discard, random.Random(0)))["patched"] is None


def test_simulated_task_rolls_out_through_the_simulator() -> None:
    task = SimulatedTask(n_train=10, n_val=5, n_test=2, seed=2)
    assert [len(task.train), len(task.val), len(task.test)] == [10, 5, 2]
    assert "[[sim-quality=0.300]]" in task.seed_artifact()["instruction"]
    llm = SimulatedLLM(seed=0)

    async def main() -> list:
        comps = {"instruction": f"Great. {quality_marker(0.99)}"}
        return list(
            await asyncio.gather(
                *(task.rollout(comps, ex, llm, stage="validate", item_id="x") for ex in task.val)
            )
        )

    rollouts = run_virtual(main())
    assert all(r.score == 1.0 and r.completion_tokens > 0 and r.error is None for r in rollouts)
    assert all("Correct" in r.feedback for r in rollouts)


def test_reflection_through_the_llm_carries_the_stage() -> None:
    llm = SimulatedLLM(seed=0)
    req = ChatRequest(_reflection_prompt(0.3, ["ANSWER: fail (x)"] * 3), stage="propose")
    result = run_virtual(llm.complete(req))
    assert result.text.count("```") in (1, 2)
    assert 64 <= result.completion_tokens <= 6000
    p = llm.profile
    # alone on the server: one step with the whole prompt (first token), then one per token
    expected = p.step_time(0, result.prompt_tokens) + (result.completion_tokens - 1) * p.step_time(
        1
    )
    assert result.latency_s == pytest.approx(expected, rel=1e-9)
