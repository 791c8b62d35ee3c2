"""The reflection prompt (worded for flashevolve) and the strict parser of its answer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flashevolve.tasks.base import Example, Rollout

FENCE = "```"
#: a language tag after the opening fence: a run of non-blank characters ending the line
_LANGUAGE_TAG = re.compile(r"\S*\n")

REFLECTION_TEMPLATE = """\
You are revising one component of the instructions that steer an AI system.

The component is called "{name}". Its current text is:

```
{current}
```
{task_note}
Here is how the system behaved with that text. For each example you see what it was given, what it
answered, and what an evaluator said about the answer.

{records}

Read the examples closely. Infer what the task is and what its inputs look like, which behaviours
earned good feedback and which failed, and which facts, rules or strategies a reader of the
instruction would need to get the failing cases right. Then write a complete replacement for
"{name}": self-contained, concrete, and general enough to help on new inputs of the same kind,
not only on these examples.

Answer with the new text of "{name}" only, inside one fenced block that opens with ``` and
closes with ```.
"""


def reflective_records(
    examples: Sequence[Example], rollouts: Sequence[Rollout]
) -> list[dict[str, Any]]:
    """One record per minibatch example: the input, the output and the evaluator's feedback."""
    records = []
    for ex, ro in zip(examples, rollouts, strict=True):
        inputs = ex.inputs.get("prompt") if set(ex.inputs) == {"prompt"} else dict(ex.inputs)
        records.append(
            {
                "example_id": ex.id,
                "input": inputs,
                "output": ro.output,
                "score": ro.score,
                "feedback": ro.feedback,
            }
        )
    return records


def render_records(records: Sequence[dict[str, Any]], limit_chars: int = 2500) -> str:
    parts = []
    for n, rec in enumerate(records, 1):
        inp = rec["input"]
        if isinstance(inp, dict):
            inp = "\n".join(f"{k}: {v}" for k, v in inp.items())
        parts.append(
            f"# Example {n}\n## Input\n{_clip(str(inp), limit_chars)}\n"
            f"## Output\n{_clip(rec['output'], limit_chars)}\n"
            f"## Feedback (score {rec['score']:.2f})\n{_clip(rec['feedback'], limit_chars)}\n"
        )
    return "\n".join(parts)


def build_reflection_prompt(
    name: str, current: str, records: Sequence[dict[str, Any]], task_description: str = ""
) -> str:
    note = f"\nAbout the task: {task_description}\n" if task_description else ""
    return REFLECTION_TEMPLATE.format(
        name=name, current=current, task_note=note, records=render_records(records)
    )


def fenced_block_grammar(max_chars: int = 600) -> str:
    """A llama.cpp GBNF grammar that makes a model answer with one short, closed fenced block.

    Tiny local models (SmolLM2-135M) rarely follow the "answer in a fenced block" instruction;
    constraining the decoder keeps :func:`parse_fenced` strict while giving them a fair chance.
    The body excludes backticks and is capped so the closing fence fits in the token budget.
    """
    return f'root ::= "```\\n" body "\\n```"\nbody ::= [^`]{{20,{int(max_chars)}}}\n'


@dataclass(slots=True)
class ParsedReflection:
    text: str | None
    reason: str | None  # why it was rejected, when text is None


def parse_fenced(answer: str) -> ParsedReflection:
    """The new text in a reflection answer, read the way gepa 0.1.4 reads it -- or a rejection.

    The answer is stripped; the text between the first and the last fence (three backticks)
    anywhere in it is taken -- so a single-line block and a closing fence glued to the last line
    both work -- and a leading language tag (one word running to the end of the opening line) is
    dropped, while other text on the opening line is kept.

    Unlike gepa, an answer with fewer than two fences (no block, or one that was opened and never
    closed -- typically a truncated generation) and an empty block are *rejected* with a reason:
    gepa adopts the raw answer, or the text after a lone opening fence, as the new instruction
    (its issue #390).
    """
    text = (answer or "").strip()
    start = text.find(FENCE)
    end = text.rfind(FENCE)
    if start < 0:
        return ParsedReflection(None, "no fenced block in the reflection answer")
    if start + len(FENCE) >= end:  # a lone fence (gepa's test for an incomplete block)
        if text[start + len(FENCE) :].strip():
            return ParsedReflection(None, "the fenced block was never closed (truncated answer?)")
        return ParsedReflection(None, "a closing fence without an opening one")
    body = text[start + len(FENCE) : end]
    tag = _LANGUAGE_TAG.match(body)
    if tag:
        body = body[tag.end() :]
    body = body.strip()
    if not body:
        return ParsedReflection(None, "the fenced block is empty")
    return ParsedReflection(body, None)


def _clip(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 20] + "\n[... truncated ...]"
