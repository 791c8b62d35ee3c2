"""Running an artifact on a batch of examples, concurrently and with accounting."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from flashevolve.runtime.context import StageContext
from flashevolve.tasks.base import Example, Rollout


async def run_examples(
    ctx: StageContext,
    components: Mapping[str, str],
    examples: Sequence[Example],
    *,
    stage: str,
    item_id: str,
    concurrency: int,
) -> list[Rollout]:
    """Roll the artifact out on every example, at most ``concurrency`` requests at once.

    Results come back in the examples' order.  Each example is one metric call.
    """
    sem = asyncio.Semaphore(max(1, concurrency))
    seed_rng = ctx.rng(f"seed:{stage}")
    seeds = [seed_rng.randrange(2**31) for _ in examples]

    async def one(example: Example, seed: int) -> Rollout:
        async with sem:
            rollout = await ctx.task.rollout(
                components, example, ctx.task_llm, stage=stage, item_id=item_id, seed=seed
            )
        ctx.tracker.metric_calls += 1
        return rollout

    return list(await asyncio.gather(*(one(ex, s) for ex, s in zip(examples, seeds, strict=True))))
