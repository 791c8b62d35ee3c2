"""Combee reflection (arXiv 2604.04247; gepa ships it as ``ComBEEReflectionLM``).

A reflection over a large minibatch of n records, as map -> shuffle -> reduce:

- **augmented shuffle**: every record is duplicated ``duplication`` times (p, default 2) and the
  list is shuffled with the run's seeded ``"combee"`` stream (the shared RNG with
  ``rng="shared"``, as gepa binds its engine RNG);
- **map**: the list is split into k = floor(sqrt(n)) groups of near-equal size (the first
  ``len % k`` one larger) and each group gets one ordinary reflection call (stage ``propose``),
  all k at once;
- **reduce**: the usable partial proposals are aggregated into one text by further calls (stage
  ``reduce``): with ``reduce_fanin=None`` one call over all of them (gepa's scheme, the paper's
  two-level scan); with ``reduce_fanin=f`` level by level, f partials per call, until one is left.

Every level is a barrier inside the proposal: the map calls run concurrently, each reduce level
starts when the level below has landed.  A proposal with n < 4 records (k = 1; e.g. a rollout
released early on a prefix) falls back to one ordinary reflection call, as gepa does.  Map
answers that cannot be parsed are left out (gepa adopts them raw); one usable partial is used
as it is (no reduce call); none, or an unusable reduce answer, rejects the proposal.  Every call
is a normal instrumented request: counted, seeded, cancellable.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flashevolve.backends.base import ChatRequest, LLMError
from flashevolve.errors import ConfigError
from flashevolve.workflows.gepa.reflection import FENCE, build_reflection_prompt, parse_fenced

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext
    from flashevolve.runtime.items import WorkItem
    from flashevolve.workflows.gepa.workflow import GepaWorkflow

MAP_STAGE = "propose"
REDUCE_STAGE = "reduce"

REDUCE_TEMPLATE = """\
You are combining several proposed revisions of one component of the instructions that steer an
AI system into a single revision.

The component is called "{name}". Its current text is:

```
{current}
```
{task_note}
Independent reviewers each studied a different sample of the system's behaviour and proposed a
replacement for it:

{proposals}

Write one complete replacement for "{name}" that keeps the concrete improvements of every
proposal: where they complement each other, include them all; where they conflict, keep the more
specific guidance that fits the task. Do not drop facts, rules or strategies that only one
proposal mentions.

Answer with the new text of "{name}" only, inside one fenced block that opens with ``` and
closes with ```.
"""


@dataclass(frozen=True, slots=True)
class Combee:
    """Combee settings: ``examples`` is the reflection minibatch K (records per proposal)."""

    examples: int
    duplication: int = 2
    reduce_fanin: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.examples, bool) or not isinstance(self.examples, int):
            raise ConfigError(
                f"combee must be an integer number of examples, got {self.examples!r}"
            )
        if self.examples < 4:
            raise ConfigError(
                f"combee={self.examples}: Combee needs at least 4 reflection examples "
                "(k = floor(sqrt(K)) >= 2 map groups); use plain reflection (no combee=) "
                "for smaller minibatches"
            )
        if isinstance(self.duplication, bool) or not isinstance(self.duplication, int):
            raise ConfigError(f"combee_duplication must be an integer, got {self.duplication!r}")
        if self.duplication < 1:
            raise ConfigError(f"combee_duplication must be at least 1, got {self.duplication}")
        if self.reduce_fanin is not None and (
            isinstance(self.reduce_fanin, bool)
            or not isinstance(self.reduce_fanin, int)
            or self.reduce_fanin < 2
        ):
            raise ConfigError(
                f"combee_reduce_fanin must be an integer >= 2 (partials per reduce call) or None "
                f"(one reduce call over all of them), got {self.reduce_fanin!r}"
            )


def groups(records: Sequence[Any], duplication: int, rng: random.Random) -> list[list[Any]]:
    """The augmented shuffle and the split: k = floor(sqrt(n)) groups of the p*n records."""
    k = max(1, math.isqrt(len(records)))
    augmented = list(records) * duplication
    rng.shuffle(augmented)
    size, extra = divmod(len(augmented), k)
    out, start = [], 0
    for g in range(k):
        end = start + size + (1 if g < extra else 0)
        out.append(augmented[start:end])
        start = end
    return [g for g in out if g]


def reduce_plan(n: int, fanin: int | None) -> list[list[int]]:
    """Partials per call at each reduce level: ``[[3, 3], [2]]`` reduces 6 partials by 3s, then
    the two results.  A chunk of one passes through without a call (and is not listed)."""
    levels: list[list[int]] = []
    while n > 1:
        width = n if fanin is None else fanin
        chunks = [min(width, n - s) for s in range(0, n, width)]
        levels.append([c for c in chunks if c > 1])
        n = len(chunks)
    return levels


@dataclass(slots=True)
class Reflected:
    """The outcome of a proposal's reflection: the new text, or why there is none."""

    text: str | None
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


async def ask(
    wf: GepaWorkflow,
    ctx: StageContext,
    item: WorkItem,
    prompt: str,
    *,
    stage: str,
    metadata: dict[str, Any],
) -> tuple[str | None, str | None, str | None]:
    """One reflection-model call: (text, rejection reason, finish_reason)."""
    request = ChatRequest(
        messages=[{"role": "user", "content": prompt}],
        max_tokens=wf.reflection_max_tokens,
        temperature=wf.reflection_temperature,
        seed=ctx.rng(f"seed:{stage}").randrange(2**31),
        stage=stage,
        item_id=item.item_id,
        metadata=metadata,
        extra_body=wf.reflection_extra_body,
    )
    try:
        answer = await ctx.reflection_llm.complete(request)
    except LLMError as err:
        return None, f"reflection call failed: {err}", None
    parsed = parse_fenced(answer.text)
    return parsed.text, parsed.reason, answer.finish_reason


def build_reduce_prompt(
    name: str, current: str, partials: Sequence[str], task_description: str = ""
) -> str:
    note = f"\nAbout the task: {task_description}\n" if task_description else ""
    proposals = "\n\n".join(
        f"## Proposal {n}\n{FENCE}\n{text}\n{FENCE}" for n, text in enumerate(partials, 1)
    )
    return REDUCE_TEMPLATE.format(name=name, current=current, task_note=note, proposals=proposals)


async def combee_reflect(
    wf: GepaWorkflow,
    ctx: StageContext,
    item: WorkItem,
    component: str,
    current: str,
    records: Sequence[dict[str, Any]],
) -> Reflected:
    """Map -> shuffle -> reduce over ``records``; ``data`` says what each level did."""
    settings = wf.combee
    assert settings is not None
    task_note = ctx.task.describe()
    parts = groups(records, settings.duplication, ctx.rng("combee"))
    levels: list[dict[str, Any]] = []
    t0 = ctx.now()
    answers = await asyncio.gather(
        *(
            ask(
                wf,
                ctx,
                item,
                build_reflection_prompt(component, current, part, task_note),
                stage=MAP_STAGE,
                metadata={"component": component, "combee": "map", "group": g},
            )
            for g, part in enumerate(parts)
        )
    )
    partials = [text for text, _, _ in answers if text is not None]
    levels.append(_level("map", t0, ctx, answers, records=[len(p) for p in parts]))
    data = {"combee": {"k": len(parts), "n": len(records), "levels": levels}}
    if not partials:
        reasons = sorted({r for _, r, _ in answers if r})
        return Reflected(None, f"no usable map answer ({'; '.join(reasons)})", data)
    for level, chunks in enumerate(reduce_plan(len(partials), settings.reduce_fanin), 1):
        t0 = ctx.now()
        width = len(partials) if settings.reduce_fanin is None else settings.reduce_fanin
        batches = [partials[s : s + width] for s in range(0, len(partials), width)]
        reduced = await asyncio.gather(
            *(
                _reduce_one(wf, ctx, item, component, current, task_note, batch, level, c)
                for c, batch in enumerate(batches)
            )
        )
        calls = [r for batch, r in zip(batches, reduced, strict=True) if len(batch) > 1]
        levels.append(_level("reduce", t0, ctx, calls, chunks=chunks))
        failed = [r for _, r, _ in calls if r]
        if failed:
            return Reflected(None, f"reduce level {level}: {failed[0]}", data)
        partials = [text for text, _, _ in reduced if text is not None]
    return Reflected(partials[0], None, data)


async def _reduce_one(
    wf: GepaWorkflow,
    ctx: StageContext,
    item: WorkItem,
    component: str,
    current: str,
    task_note: str,
    batch: list[str],
    level: int,
    chunk: int,
) -> tuple[str | None, str | None, str | None]:
    if len(batch) == 1:  # nothing to combine at this level
        return batch[0], None, None
    prompt = build_reduce_prompt(component, current, batch, task_note)
    meta = {"component": component, "combee": "reduce", "level": level, "chunk": chunk}
    return await ask(wf, ctx, item, prompt, stage=REDUCE_STAGE, metadata=meta)


def _level(
    kind: str,
    t0: float,
    ctx: StageContext,
    answers: Sequence[tuple[str | None, str | None, str | None]],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "calls": len(answers),
        "usable": sum(1 for text, _, _ in answers if text is not None),
        "seconds": ctx.now() - t0,
        **extra,
    }
