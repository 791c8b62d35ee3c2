"""ACE's three prompts (generator, reflector, curator) in flashevolve's own words, and their
strict JSON parsers.

Every answer is one JSON object (a ```json fence and prose around it are tolerated).  An answer
that was cut off at ``max_tokens``, holds no JSON object, or lacks a required field is
*malformed*: the parser returns the reason and the caller records it -- it never guesses.

The playbook sits between ``<playbook>`` and ``</playbook>`` lines in every prompt (its own
section headers are ``## NAME``, so the prompts use other markers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flashevolve.workflows.ace.items import Reflection
from flashevolve.workflows.ace.operations import operation_schema, validate_operation
from flashevolve.workflows.ace.playbook import Bullet, clean_text

_FENCE = re.compile(r"^[ \t]*```[^\n`]*$", re.MULTILINE)
#: a text that is only a ``<...>`` placeholder of an answer format
_PLACEHOLDER = re.compile(r"^\[?<[^<>]*>\]?$")


def clip(text: object, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: max(0, limit - 14)] + " [... clipped]"


def playbook_block(text: str) -> str:
    return f"<playbook>\n{text}\n</playbook>"


def extract_json(
    text: str, finish_reason: str | None = "stop"
) -> tuple[dict[str, Any] | None, str]:
    """The answer's JSON object, or (None, why not)."""
    if finish_reason == "length":
        return None, "truncated: the answer hit max_tokens"
    body = text or ""
    fences = list(_FENCE.finditer(body))
    if len(fences) == 1:
        return None, "a ``` fence was opened but never closed"
    if len(fences) >= 2:
        body = body[fences[0].end() : fences[1].start()]
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        return None, "no JSON object in the answer"
    try:
        raw = json.loads(body[start : end + 1])
    except json.JSONDecodeError as err:
        return None, f"invalid JSON: {err.msg} at char {err.pos}"
    if not isinstance(raw, dict):
        return None, "the JSON is not an object"
    return raw, ""


def _text_field(raw: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = raw.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    return None


# -- generator -----------------------------------------------------------------------------------

GENERATOR_INTRO = """\
You answer a question with the help of a playbook: advice collected from earlier attempts at
similar questions. Each playbook line is a bullet "[id] helpful=H harmful=X :: advice"; H and X
count how often the bullet helped or misled before. Use the bullets that apply, ignore the rest."""

GENERATOR_ANSWER = """\
Reply with one JSON object and nothing else:
{"reasoning": "<your work, step by step>", "bullet_ids": ["<id of each bullet you relied on>"],
 "final_answer": "<the answer alone, in the form the question asks for>"}"""


def question_of(inputs: Mapping[str, Any]) -> tuple[str, str]:
    """(question, context) from an example's inputs: ``question`` or ``prompt`` (else every
    field), and ``context`` when there is one."""
    context = str(inputs.get("context") or "")
    for key in ("question", "prompt", "input", "problem"):
        if inputs.get(key):
            return str(inputs[key]), context
    rest = {k: v for k, v in inputs.items() if k != "context"}
    return "\n".join(f"{k}: {v}" for k, v in rest.items()), context


def build_generator_prompt(
    playbook: str, question: str, context: str = "", reflection: str | None = None
) -> str:
    parts = [GENERATOR_INTRO, "", "Playbook:", playbook_block(playbook), ""]
    if reflection:
        parts += ["Notes from a review of your previous attempt at this question:", reflection, ""]
    parts += ["Question:", question, ""]
    if context:
        parts += ["Context:", context, ""]
    parts.append(GENERATOR_ANSWER)
    return "\n".join(parts)


@dataclass(slots=True)
class GeneratorAnswer:
    reasoning: str
    bullet_ids: list[str]
    answer: str


def parse_generator(text: str, finish_reason: str | None = "stop") -> GeneratorAnswer | str:
    """The generator's answer, or the reason it is malformed."""
    raw, why = extract_json(text, finish_reason)
    if raw is None:
        return why
    answer = _text_field(raw, "final_answer", "answer")
    if answer is None:
        return "the JSON has no 'final_answer'"
    ids = raw.get("bullet_ids", [])
    if not isinstance(ids, list):
        return "'bullet_ids' is not a list"
    reasoning = _text_field(raw, "reasoning") or ""
    return GeneratorAnswer(reasoning, [str(i).strip("[] ") for i in ids if str(i).strip()], answer)


# -- reflector -----------------------------------------------------------------------------------

REFLECTOR_INTRO = """\
You review one attempt at a question. The attempt was written with a playbook of advice bullets.
Work out what went right or wrong and why, state the one lesson worth keeping for similar
questions, and judge each bullet the attempt relied on: "helpful" (it led toward the right
answer), "harmful" (it misled) or "neutral"."""

REFLECTOR_ANSWER = """\
Reply with one JSON object and nothing else:
{"diagnosis": "<what went right or wrong, and the root cause>",
 "key_insight": "<one reusable lesson for similar questions>",
 "bullet_tags": [{"id": "<bullet id>", "tag": "helpful" | "harmful" | "neutral"}]}"""


def build_reflector_prompt(
    *,
    question: str,
    reasoning: str,
    answer: str,
    feedback: str,
    reference: str | None,
    used: Sequence[Bullet],
    limit: int = 3000,
) -> str:
    bullets = "\n".join(b.render() for b in used) or "(the attempt named no playbook bullets)"
    parts = [
        REFLECTOR_INTRO,
        "",
        "Question:",
        clip(question, limit),
        "",
        "The attempt's reasoning:",
        clip(reasoning or "(none given)", limit),
        "",
        f"The attempt's final answer: {clip(answer, 500)}",
        f"Feedback on it: {clip(feedback, 1000)}",
    ]
    if reference is not None:
        parts.append(f"Reference answer: {clip(reference, 500)}")
    parts += ["", "Bullets the attempt relied on:", bullets, "", REFLECTOR_ANSWER]
    return "\n".join(parts)


@dataclass(slots=True)
class ReflectorAnswer:
    diagnosis: str
    insight: str
    tags: list[tuple[str, str]] = field(default_factory=list)
    ignored_tags: int = 0  # tags naming a bullet that was not used, or an unknown tag


def parse_reflector(
    text: str, used_ids: Sequence[str], finish_reason: str | None = "stop"
) -> ReflectorAnswer | str:
    raw, why = extract_json(text, finish_reason)
    if raw is None:
        return why
    insight = _text_field(raw, "key_insight", "insight")
    if insight is None or not insight.strip():
        return "the JSON has no 'key_insight'"
    diagnosis = _text_field(raw, "diagnosis", "error_identification") or ""
    tags_raw = raw.get("bullet_tags", [])
    if not isinstance(tags_raw, list):
        return "'bullet_tags' is not a list"
    used = set(used_ids)
    tags: list[tuple[str, str]] = []
    ignored = 0
    for entry in tags_raw:
        if not isinstance(entry, Mapping):
            ignored += 1
            continue
        bid = str(entry.get("id", entry.get("bullet", ""))).strip("[] ")
        tag = str(entry.get("tag", "")).strip().lower()
        if bid in used and tag in ("helpful", "harmful", "neutral"):
            tags.append((bid, tag))
        else:
            ignored += 1
    return ReflectorAnswer(clean_text(diagnosis), clean_text(insight), tags, ignored)


# -- curator -------------------------------------------------------------------------------------

CURATOR_INTRO = """\
You maintain a playbook: advice bullets that a model reads before answering questions of one
kind. Below are the current playbook and reflections on recent attempts. Turn the reflections into
a few precise edits ("delta operations") that make the playbook more useful:
- ADD a bullet for a lesson the playbook lacks (put it in the section that fits best);
- UPDATE a bullet whose advice is incomplete or wrong (give its full new text);
- MERGE bullets that say nearly the same thing into one;
- DELETE a bullet that misleads (look at its harmful count).
Do not repeat advice the playbook already has. Keep each bullet one specific, reusable sentence
or two. Use bullet ids and section names exactly as they appear. Propose no operation at all if
nothing is worth changing."""

CURATOR_ANSWER = """\
Reply with one JSON object and nothing else:
{"reasoning": "<why these edits>",
 "operations": [
  {"type": "ADD", "section": "<section name>", "content": "<bullet text>"},
  {"type": "UPDATE", "id": "<bullet id>", "content": "<full new text>"},
  {"type": "MERGE", "ids": ["<bullet id>", "<bullet id>"], "content": "<merged text>"},
  {"type": "DELETE", "id": "<bullet id>"}]}"""


def render_reflection(r: Reflection, limit: int = 600) -> str:
    verdict = "correct" if r.score >= 1.0 else "partly correct" if r.score > 0 else "wrong"
    return "\n".join(
        [
            f"- step {r.step}, example {r.example_id} ({verdict}, score {r.score:.2f})",
            f"  question: {clip(' '.join(r.question.split()), limit)}",
            f"  answer given: {clip(r.answer, 200)}; feedback: {clip(r.feedback, 300)}",
            f"  diagnosis: {clip(r.diagnosis, limit)}",
            f"  key insight: {clip(r.insight, limit)}",
        ]
    )


def build_curator_prompt(
    playbook: str,
    stats: Mapping[str, Any],
    reflections: Sequence[Reflection],
    *,
    step: int,
    total_steps: int,
    max_ops: int,
) -> str:
    return "\n".join(
        [
            CURATOR_INTRO,
            "",
            f"Training progress: step {step} of {total_steps} per epoch. Propose at most "
            f"{max_ops} operations.",
            f"Playbook statistics: {json.dumps(dict(stats), sort_keys=True)}",
            "",
            "Current playbook:",
            playbook_block(playbook),
            "",
            f"Reflections ({len(reflections)}):",
            "\n".join(render_reflection(r) for r in reflections),
            "",
            CURATOR_ANSWER,
        ]
    )


@dataclass(slots=True)
class CuratorAnswer:
    reasoning: str
    ops: list[Any]  # validated operations, in order
    invalid: list[dict[str, Any]]  # {"index", "op", "reason"}: rejected by the schema


def parse_curator(text: str, finish_reason: str | None = "stop") -> CuratorAnswer | str:
    raw, why = extract_json(text, finish_reason)
    if raw is None:
        return why
    ops_raw = raw.get("operations")
    if not isinstance(ops_raw, list):
        return "the JSON has no 'operations' list"
    ops: list[Any] = []
    invalid: list[dict[str, Any]] = []
    for index, entry in enumerate(ops_raw):
        try:
            op = validate_operation(entry)
        except ValueError as err:
            invalid.append({"index": index, "op": entry, "reason": str(err)})
            continue
        if _PLACEHOLDER.match(getattr(op, "content", "")):  # small models copy the format
            invalid.append({"index": index, "op": entry, "reason": "content is a placeholder"})
            continue
        ops.append(op)
    reasoning = _text_field(raw, "reasoning") or ""
    return CuratorAnswer(reasoning, ops, invalid)


# -- constrained decoding ------------------------------------------------------------------------


def _obj(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def answer_schemas(
    max_ops: int,
    text_chars: int = 400,
    *,
    ids: Sequence[str] | None = None,
    sections: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """JSON Schemas of the three answers (``json_mode="schema"``): every text capped, and with
    the playbook's bullet ``ids`` and ``sections`` given, names limited to them."""
    text = {"type": "string", "maxLength": text_chars}
    ident: dict[str, Any] = {"type": "string", "maxLength": 40}
    if ids is not None:
        ident = {"type": "string", "enum": list(ids)} if ids else ident
    used = {"type": "array", "items": ident, "maxItems": 8 if ids is None or ids else 0}
    tag = _obj({"id": ident, "tag": {"type": "string", "enum": ["helpful", "harmful", "neutral"]}})
    operation = operation_schema(text_chars, ids=ids, sections=sections)
    return {
        "generate": _obj(
            {
                "reasoning": text,
                "bullet_ids": used,
                "final_answer": {"type": "string", "maxLength": 80},
            }
        ),
        "reflect": _obj(
            {
                "diagnosis": text,
                "key_insight": text,
                "bullet_tags": {"type": "array", "items": tag, "maxItems": used["maxItems"]},
            }
        ),
        "curate": _obj(
            {
                "reasoning": text,
                "operations": {"type": "array", "items": operation, "maxItems": max_ops},
            }
        ),
    }


def response_format(
    json_mode: str | None,
    role: str,
    max_ops: int,
    *,
    ids: Sequence[str] | None = None,
    sections: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """The request's ``extra_body`` for ``json_mode``: None (plain), ``"object"`` (any JSON
    object, as the official code's json_mode) or ``"schema"`` (the role's schema, names limited
    to the playbook's ``ids`` and ``sections`` when given)."""
    if json_mode is None:
        return None
    if json_mode == "object":
        return {"response_format": {"type": "json_object"}}
    schema = answer_schemas(max_ops, ids=ids, sections=sections)[role]
    return {
        "response_format": {"type": "json_schema", "json_schema": {"name": role, "schema": schema}}
    }
