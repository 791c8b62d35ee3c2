"""Running an artifact on a batch of examples, concurrently and with accounting.

One piece of machinery for every workflow: :class:`Fanout` starts one rollout per example (at
most ``concurrency`` at once, in the examples' order), hands results out as they land, and can
cancel what is still running (speculative completion releases a stage on a prefix and cancels or
keeps the tail).  :func:`run_examples` is the common case: wait for all of them.

An infrastructure failure is not a task failure: a rollout whose request failed for good (the
client already retried it; ``Rollout.infrastructure_failure``) is run once more, and if it fails
again it stays marked -- callers leave such examples out of their comparisons
(:func:`scored`) instead of scoring them 0, which would change which candidate wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

from flashevolve.backends.base import LLM
from flashevolve.runtime.context import StageContext
from flashevolve.tasks.base import Example, Rollout

#: How often a rollout the infrastructure failed is run again (the client already retried).
INFRASTRUCTURE_RETRIES = 1


class RolloutRunner(Protocol):
    """What a fan-out needs of a task: its ``rollout`` (a Task, or a workflow's view of one)."""

    async def rollout(
        self,
        components: Mapping[str, str],
        example: Example,
        llm: LLM,
        *,
        stage: str,
        item_id: str,
        seed: int | None = None,
    ) -> Rollout: ...


def scored(rollouts: Sequence[Rollout]) -> list[Rollout]:
    """The rollouts that count: those the infrastructure did not fail."""
    return [r for r in rollouts if not r.infrastructure_failure]


def scores_by_id(
    examples: Sequence[Example], rollouts: Sequence[Rollout]
) -> tuple[dict[str, float], list[str]]:
    """(score per example id, ids left out because the infrastructure failed them)."""
    scores: dict[str, float] = {}
    left_out: list[str] = []
    for ex, ro in zip(examples, rollouts, strict=True):
        if ro.infrastructure_failure:
            left_out.append(ex.id)
        else:
            scores[ex.id] = ro.score
    return scores, left_out


class Fanout:
    """One artifact run on many examples with bounded concurrency; results as they land.

    Requests start in the examples' order (the semaphore is FIFO), so a prefix of the list is
    served first.  Each example is one metric call.  ``cancel_rest()`` cancels the unfinished
    rollouts; with the simulator or an HTTP backend that aborts the request server-side.
    """

    def __init__(
        self,
        ctx: StageContext,
        components: Mapping[str, str],
        examples: Sequence[Example],
        *,
        stage: str,
        item_id: str,
        concurrency: int,
        task: RolloutRunner | None = None,
    ) -> None:
        self.ctx = ctx
        runner = task if task is not None else ctx.task  # a workflow's view of the task (ACE)
        self.examples = list(examples)
        self.results: dict[int, Rollout] = {}
        self.order: list[int] = []  # indices in landing order
        self._landed = asyncio.Event()
        sem = asyncio.Semaphore(max(1, concurrency))
        # One seed per example from the stage's own stream: equal runs send equal requests.
        seed_rng = ctx.rng(f"seed:{stage}")
        seeds = [seed_rng.randrange(2**31) for _ in self.examples]

        async def one(i: int, example: Example, seed: int) -> None:
            async with sem:
                for _ in range(1 + INFRASTRUCTURE_RETRIES):
                    rollout = await runner.rollout(
                        components, example, ctx.task_llm, stage=stage, item_id=item_id, seed=seed
                    )
                    if not rollout.infrastructure_failure:
                        break
            ctx.tracker.metric_calls += 1
            self.results[i] = rollout
            self.order.append(i)
            self._landed.set()

        self.tasks = [
            asyncio.create_task(one(i, ex, s))
            for i, (ex, s) in enumerate(zip(self.examples, seeds, strict=True))
        ]

    def __len__(self) -> int:
        return len(self.examples)

    def done(self) -> bool:
        return all(t.done() for t in self.tasks)

    async def next_landing(self) -> None:
        """Wait until at least one more result lands (or every rollout ended).

        A rollout that raised re-raises here, as ``gather`` would.
        """
        before = len(self.results)
        while len(self.results) == before:
            for t in self.tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            if self.done():
                return
            self._landed.clear()
            waiter = asyncio.create_task(self._landed.wait())
            try:
                await asyncio.wait(
                    [waiter, *[t for t in self.tasks if not t.done()]],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()

    async def until(self, count: int) -> None:
        """Wait until the first ``count`` examples (in list order) have landed."""
        while not all(i in self.results for i in range(count)):
            await self.next_landing()
            if self.done() and not all(i in self.results for i in range(count)):
                raise RuntimeError(f"{self.ctx.task.name}: rollouts ended without results")

    async def all(self) -> list[Rollout]:
        """Every result, in the examples' order."""
        await self.until(len(self))
        return [self.results[i] for i in range(len(self))]

    def cancel_rest(self) -> int:
        """Cancel every rollout not finished yet; returns how many were cancelled."""
        n = 0
        for t in self.tasks:
            if not t.done():
                t.cancel()
                n += 1
        return n

    async def close(self) -> int:
        """Cancel what is still running and wait until it has unwound (its requests report
        their cancellation now, not after the caller has moved on); returns how many."""
        running = [t for t in self.tasks if not t.done()]
        n = self.cancel_rest()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        return n

    def scores(self, indices: Sequence[int] | None = None) -> dict[str, float]:
        """Scores by example id, leaving out rollouts the infrastructure failed."""
        idx = sorted(self.results) if indices is None else indices
        return {
            self.examples[i].id: self.results[i].score
            for i in idx
            if not self.results[i].infrastructure_failure
        }

    def left_out(self) -> list[str]:
        """Ids of examples whose rollout the infrastructure failed (twice)."""
        return [
            self.examples[i].id for i, r in sorted(self.results.items()) if r.infrastructure_failure
        ]


async def run_examples(
    ctx: StageContext,
    components: Mapping[str, str],
    examples: Sequence[Example],
    *,
    stage: str,
    item_id: str,
    concurrency: int,
    task: RolloutRunner | None = None,
) -> list[Rollout]:
    """Roll the artifact out on every example (at most ``concurrency`` at once); results come
    back in the examples' order.  If the caller is cancelled or a rollout raises, the rest are
    cancelled too: nothing keeps running for a caller that has gone.  ``task`` rolls out
    through another object than ``ctx.task`` (a workflow's own view of the task)."""
    fan = Fanout(
        ctx, components, examples, stage=stage, item_id=item_id, concurrency=concurrency, task=task
    )
    try:
        return await fan.all()
    finally:
        await fan.close()
