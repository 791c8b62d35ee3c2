"""The proposer's prompt (flashevolve's own wording): the task, the interface, the harness to
improve with its failures and traces, every harness tried so far, and other strong harnesses'
code -- added in that order of priority until the context budget is spent."""

from __future__ import annotations

from dataclasses import dataclass

from flashevolve.pool import ArtifactPool, CandidateRecord
from flashevolve.workflows.meta_harness.harness import HarnessTask
from flashevolve.workflows.meta_harness.history import REJECTED, Attempt, History

INTRO = """\
You improve a *harness*: the Python program around a fixed language model that decides what the
model is shown, what is remembered from the training data, and how the model's answers become a
prediction. The model itself cannot change; only the harness can."""

CLOSING = """\
## What to write
Study the failures and traces above: what did the model see, what did it answer, and which
mechanism of the harness made it wrong? Then write ONE new, complete harness that changes a
mechanism -- what is retrieved from the memory and how, how the prompt is organised, how the
answer is parsed, whether several calls vote, what is prepared in setup() -- rather than only
tuning numbers. It must implement the interface exactly, use only the standard library and
`fe_llm`, and stay within the call and time budgets.

Answer in this form:
HYPOTHESIS: <one sentence: what you change and why it should raise the score>
```python
<the complete file {main_file}>
```"""


@dataclass(frozen=True, slots=True)
class PromptParts:
    """What a prompt showed (for the proposal's event)."""

    text: str
    attempts_listed: int
    code_shown: int  # harnesses whose code is in the prompt (the parent included)
    clipped: bool


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _code_block(code: str, limit: int) -> str:
    if len(code) > limit:
        code = code[: max(0, limit - 40)] + "\n# [... the rest of the file is clipped]"
    return f"```python\n{code.rstrip()}\n```"


def _failures(attempt: Attempt | None) -> str:
    if attempt is None or not attempt.failures:
        return "(no failures recorded)"
    parts = []
    for f in attempt.failures:
        parts.append(
            f"### example {f.example_id}\ninput: {f.input}\noutput: {f.output}\n"
            f"feedback: {f.feedback}\n{f.trace}".rstrip()
        )
    return "\n\n".join(parts)


def _attempt_line(a: Attempt) -> str:
    hyp = a.hypothesis or "(no hypothesis given)"
    if a.status == REJECTED:
        return f"- {a.artifact_id}: {a.status}: {a.reason[:200]} | tried: {hyp}"
    extra = f" (stopped early: {a.reason[:120]})" if a.reason else ""
    return (
        f"- {a.artifact_id}: {_score(a.score)} ({a.correct}/{a.total} correct), {a.status}"
        f"{extra} | {hyp}"
    )


def build_proposer_prompt(
    task: HarnessTask,
    parent: CandidateRecord,
    history: History,
    pool: ArtifactPool,
    *,
    budget_chars: int,
) -> PromptParts:
    main_file = task.harness.main_file
    parent_code = parent.artifact.components.get(main_file, "")
    parent_attempt = history.get(parent.id)
    hypothesis = parent_attempt.hypothesis if parent_attempt else ""
    head = "\n\n".join(
        [
            INTRO,
            f"## The task\n{task.describe()}",
            f"## The interface\n{task.harness.interface.rstrip()}",
        ]
    )
    closing = CLOSING.format(main_file=main_file)
    room = budget_chars - len(head) - len(closing)
    parent_part = (
        f"## The harness to improve: {parent.id} (validation score {_score(parent.mean_score)})"
        + (f"\nIt tested: {hypothesis}" if hypothesis else "")
        + "\n"
        + _code_block(parent_code, max(2000, room // 2))
    )
    sections = [head, parent_part]
    room -= len(parent_part)
    clipped = len(parent_code) > max(2000, budget_chars // 2)

    failures = f"## Where it went wrong (validation examples, with its traces)\n{_failures(parent_attempt)}"
    if len(failures) > room:
        failures = failures[: max(0, room - 30)] + "\n[... more clipped]"
        clipped = True
    sections.append(failures)
    room -= len(failures)

    ranked = sorted(
        history.attempts,
        key=lambda a: (a.status == REJECTED, -(a.score or 0.0), -a.ts),
    )
    lines, listed = [], 0
    for attempt in ranked:
        line = _attempt_line(attempt)
        if len(line) + 1 > room - 200:
            clipped = True
            lines.append(f"- ... {len(ranked) - listed} more not shown")
            break
        lines.append(line)
        listed += 1
        room -= len(line) + 1
    if lines:
        sections.append("## Every harness tried so far (best first)\n" + "\n".join(lines))

    shown = 1
    others = sorted(
        (r for r in pool.alive() if r.scored and r.id != parent.id),
        key=lambda r: (-r.mean_score, r.index),
    )
    extra: list[str] = []
    for record in others:
        code = record.artifact.components.get(main_file, "")
        block = f"### {record.id} (validation score {_score(record.mean_score)})\n" + _code_block(
            code, len(code)
        )
        if len(block) > room:
            clipped = clipped or bool(extra) or len(others) > 0
            break
        extra.append(block)
        shown += 1
        room -= len(block)
    if extra:
        sections.append("## Other strong harnesses\n" + "\n\n".join(extra))
    sections.append(closing)
    return PromptParts("\n\n".join(sections), listed, shown, clipped)
