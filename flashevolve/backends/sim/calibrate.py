"""Calibration of the serving simulator against the paper's synchronous GEPA step.

Run: ``python -m flashevolve.backends.sim.calibrate [--profile P] [--steps N] [--seed S]``

A stand-alone, simplified synchronous GEPA loop over :class:`SimulatedLLM` and
:class:`SimulatedTask` on virtual time (it does not use the flashevolve runtime):

    rollout  parent on 3 train examples (3 concurrent requests)
    propose  one reflection request (parent instruction in a fenced block + the 3 records)
    gate     child on the same 3 examples (3 concurrent)
    validate child on the n_val examples, at most 8 concurrent

``full`` mode runs every stage every step (the paper's per-step stage split); ``gepa`` mode
validates only children that pass the gate and reports the acceptance rate and the score path.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from collections.abc import Sequence
from typing import Any

from flashevolve.backends.base import ChatRequest
from flashevolve.backends.sim.llm import SimulatedLLM
from flashevolve.backends.sim.workload import FENCE, QUALITY_RE, SimulatedTask, _first_fenced
from flashevolve.runtime.clock import run_virtual
from flashevolve.tasks.base import Example, Rollout

EVAL_CONCURRENCY = 8


def reflection_prompt(instruction: str, rollouts: Sequence[Rollout], task: SimulatedTask) -> str:
    """A GEPA-like reflection prompt (our own wording)."""
    parts = [
        "You improve the instruction given to an assistant.",
        f"Current instruction:\n{FENCE}\n{instruction}\n{FENCE}",
        "Below are examples of inputs, the assistant's outputs and feedback.",
    ]
    by_id = {ex.id: ex for ex in task.train}
    for i, r in enumerate(rollouts, 1):
        parts.append(
            f"# Example {i}\n## Inputs\n{by_id[r.example_id].inputs['prompt']}\n"
            f"## Output\n{r.output}\n## Feedback\n{r.feedback}"
        )
    parts.append("Write an improved instruction inside a fenced block.")
    return "\n\n".join(parts)


async def _evaluate(
    task: SimulatedTask,
    llm: SimulatedLLM,
    comps: dict[str, str],
    examples: Sequence[Example],
    stage: str,
    step: int,
) -> list[Rollout]:
    sem = asyncio.Semaphore(EVAL_CONCURRENCY)

    async def one(ex: Example) -> Rollout:
        async with sem:
            return await task.rollout(comps, ex, llm, stage=stage, item_id=f"{stage}-{step}")

    return list(await asyncio.gather(*(one(ex) for ex in examples)))


async def sync_gepa(
    profile: str, steps: int, seed: int, *, full: bool, n_val: int = 50
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    task = SimulatedTask(n_val=n_val, seed=seed)
    llm = SimulatedLLM(profile, seed=seed)
    rng = random.Random(seed)
    parent = task.seed_artifact()
    base = await _evaluate(task, llm, parent, task.val, "validate", -1)
    best_score = statistics.fmean(r.score for r in base)
    times: dict[str, list[float]] = {s: [] for s in ("rollout", "propose", "gate", "validate")}
    step_times: list[float] = []
    proposals = accepted = malformed = skipped = 0
    t_start = loop.time()
    for step in range(steps):
        t_step = loop.time()
        batch = rng.sample(list(task.train), 3)
        t0 = loop.time()
        parent_runs = await _evaluate(task, llm, parent, batch, "rollout", step)
        times["rollout"].append(loop.time() - t0)
        if not full and all(r.score >= 1.0 for r in parent_runs):
            skipped += 1
            step_times.append(loop.time() - t_step)
            continue
        t0 = loop.time()
        prompt = reflection_prompt(parent["instruction"], parent_runs, task)
        reply = await llm.complete(
            ChatRequest(
                [{"role": "user", "content": prompt}], stage="propose", item_id=f"propose-{step}"
            )
        )
        times["propose"].append(loop.time() - t0)
        proposals += 1
        new_text = _first_fenced(reply.text)
        if new_text is None:
            malformed += 1
            if not full:
                step_times.append(loop.time() - t_step)
                continue
            new_text = parent["instruction"]
        child = {"instruction": new_text}
        t0 = loop.time()
        child_runs = await _evaluate(task, llm, child, batch, "gate", step)
        times["gate"].append(loop.time() - t0)
        passed = sum(r.score for r in child_runs) > sum(r.score for r in parent_runs)
        if passed or full:
            t0 = loop.time()
            val = await _evaluate(task, llm, child, task.val, "validate", step)
            times["validate"].append(loop.time() - t0)
            score = statistics.fmean(r.score for r in val)
            if passed:
                accepted += 1
                if score >= best_score:
                    best_score, parent = score, child
        step_times.append(loop.time() - t_step)
    stats = llm.stats()
    med = {k: statistics.median(v) if v else 0.0 for k, v in times.items()}
    evaluate = med["gate"] + med["validate"]
    total = med["rollout"] + med["propose"] + evaluate
    return {
        "mode": "full" if full else "gepa",
        "steps": steps,
        "median_s": {k: round(v, 1) for k, v in med.items()},
        "median_step_s": round(statistics.median(step_times), 1),
        "mean_step_s": round(statistics.fmean(step_times), 1),
        "split_of_medians": {
            "rollout": round(med["rollout"] / total, 3),
            "propose": round(med["propose"] / total, 3),
            "evaluate": round(evaluate / total, 3),
        },
        "proposals": proposals,
        "accepted": accepted,
        "acceptance_rate": round(accepted / proposals, 3) if proposals else 0.0,
        "malformed": malformed,
        "skipped_perfect": skipped,
        "seed_val_score": round(statistics.fmean(r.score for r in base), 3),
        "best_val_score": round(best_score, 3),
        "best_quality": QUALITY_RE.search(parent["instruction"]).group(1),  # type: ignore[union-attr]
        "sim_minutes": round((loop.time() - t_start) / 60, 1),
        "mean_concurrency": round(stats.get("mean_concurrency", 0.0), 2),
        "utilization": round(stats.get("utilization", 0.0), 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="vllm-h100-qwen3-8b")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import time

    for full in (True, False):
        w0 = time.perf_counter()
        result = run_virtual(sync_gepa(args.profile, args.steps, args.seed, full=full))
        result["wall_s"] = round(time.perf_counter() - w0, 2)
        print(result)


if __name__ == "__main__":
    main()
