"""The reviewer's side of the Reflective policy: its prompt, its answer schema and the parser.

Kept apart from the policy object (flashevolve.policies.reflective) so each stays small.  The
prompt is flashevolve's own wording; the answer is JSON validated with pydantic.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from flashevolve.policies.staleness import ACCEPT, DISCARD, PATCH, ReviewMaterial, StaleItem

#: Lenient spellings a small model uses for the three decisions.
_SYNONYMS = {
    "reject": DISCARD,
    "drop": DISCARD,
    "keep": ACCEPT,
    "merge": PATCH,
    "repair": PATCH,
    "patched": PATCH,
    "accepted": ACCEPT,
    "discarded": DISCARD,
}


# -- the answer schema ---------------------------------------------------------------------------


class ItemDecision(BaseModel):
    model_config = ConfigDict(extra="ignore")

    item: str
    decision: str
    rationale: str = ""

    @field_validator("item", mode="before")
    @classmethod
    def _item_text(cls, v: Any) -> object:
        if isinstance(v, int | float):
            return str(v)
        return v  # anything else goes on to pydantic's own str check

    @field_validator("decision", mode="before")
    @classmethod
    def _decision(cls, v: Any) -> str:
        word = str(v).strip().lower()
        word = _SYNONYMS.get(word, word)
        if word not in (ACCEPT, DISCARD, PATCH):
            raise ValueError(f"decision must be accept, discard or patch, not {v!r}")
        return word


class PatchAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    decisions: list[ItemDecision]
    #: the repair, in the shape the workflow asked for (its make_repair validates it)
    patched: Any = None


def review_json_schema(
    max_items: int = 16,
    item_ids: list[str] | None = None,
    max_text: int = 4000,
    patched: dict[str, Any] | None = None,
    max_rationale: int = 300,
) -> dict[str, Any]:
    """The answer schema as JSON Schema, for servers with constrained decoding.

    Give the *reviewer's* client (llama-server, vLLM) ``extra_body={"response_format": {"type":
    "json_schema", "json_schema": {"name": "review", "schema": review_json_schema(k)}}}``; with
    ``max_items = k`` a small model cannot ramble on with invented items.  ``Reflective(
    review_schema=True)`` does this per request, with the batch's own ``item_ids`` (exactly one
    decision per item, ids from the batch) and the workflow's schema of a repair as ``patched``
    (GEPA: complete texts for the best's components).  Every text is capped, so a constrained
    answer has a bounded length.  The parser stays the judge either way; the schema only makes
    valid answers likelier.
    """
    item: dict[str, Any] = {"type": "string", "maxLength": 32}
    n_min = 1
    if item_ids:
        item = {"type": "string", "enum": list(item_ids)}
        n_min = max_items = len(item_ids)
    patched_obj: dict[str, Any] = patched or {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": max_text},
    }
    return {
        "type": "object",
        "properties": {
            "decisions": {
                "type": "array",
                "minItems": n_min,
                "maxItems": max_items,
                "items": {
                    "type": "object",
                    "properties": {
                        "item": item,
                        "decision": {"type": "string", "enum": [ACCEPT, DISCARD, PATCH]},
                        "rationale": {"type": "string", "maxLength": max_rationale},
                    },
                    "required": ["item", "decision", "rationale"],
                    "additionalProperties": False,
                },
            },
            "patched": {"anyOf": [patched_obj, {"type": "null"}]},
        },
        "required": ["decisions", "patched"],
        "additionalProperties": False,
    }


@dataclass(slots=True)
class Parsed:
    answer: PatchAnswer | None
    reason: str | None  # why the answer was unusable


_FENCE_LINE = re.compile(r"^[ \t]*```[^\n`]*$", re.MULTILINE)


def parse_answer(text: str, finish_reason: str | None = "stop") -> Parsed:
    """Validate a reviewer answer: JSON (optionally inside a ```json fence) of the schema above.

    Lenient where it is safe (a fence, prose around the object, decision synonyms, a single
    top-level ``decision``), strict where it matters: a truncated or invalid answer is unusable.
    """
    if finish_reason == "length":
        return Parsed(None, "truncated: the answer hit max_tokens")
    body = text or ""
    fences = list(_FENCE_LINE.finditer(body))
    if len(fences) == 1:
        return Parsed(None, "truncated: a ``` fence was opened but never closed")
    if len(fences) >= 2:
        body = body[fences[0].end() : fences[1].start()]
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        return Parsed(None, "no JSON object in the answer")
    try:
        raw = json.loads(body[start : end + 1])
    except json.JSONDecodeError as err:
        return Parsed(None, f"invalid JSON: {err.msg} at char {err.pos}")
    if isinstance(raw, dict) and "decisions" not in raw and "decision" in raw:
        raw = {
            "decisions": [
                {
                    "item": raw.get("item", "*"),
                    "decision": raw["decision"],
                    "rationale": raw.get("rationale", ""),
                }
            ],
            "patched": raw.get("patched"),
        }
    try:
        answer = PatchAnswer.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return Parsed(None, f"schema: {where}: {first['msg']}")
    if not answer.decisions:
        return Parsed(None, "schema: decisions is empty")
    return Parsed(answer, None)


# -- the prompt ----------------------------------------------------------------------------------

PROMPT_INTRO = """\
You review stale proposals in an evolutionary search over text artifacts. Each proposal was made
against an older state of the search; while it waited, other proposals were accepted.

For every stale item decide one of:
- "accept": the proposal still adds something the current state lacks; use it as it is.
- "discard": its ideas are already covered by the current state or by what was accepted
  meanwhile, or it only fits the few examples it was written for.
- "patch": it holds a transferable idea the current state lacks; repair it against the current
  state (the repair's shape is given under "Answer format").
"""

PROMPT_ANSWER = """\
## Answer format
Reply with one JSON object and nothing else:
{{"decisions": [{{"item": "<stale item id>", "decision": "accept" | "discard" | "patch",
"rationale": "<one sentence>"}}, ...],
 "patched": <the repair> or null}}
Give one decision per stale item ({ids}). "patched" is required when any decision is "patch" and
must be null otherwise. The repair: {patch_format}.
"""


def build_patch_prompt(items: list[StaleItem], material: ReviewMaterial) -> str:
    """The reviewer's prompt: the generic decision rules, then the workflow's material.

    Section headers matter to the simulator's patch answers (``respond_patch``): the current
    state sits under a header naming "current", each stale item under one naming "item <id>".
    """
    parts = [
        PROMPT_INTRO,
        material.what,
        "",
        "## Current state",
        material.current,
        "",
        "## Changes since the oldest proposal was made",
        material.history,
        "",
    ]
    for it in items:
        parts += [f"## Stale item {it.item_id}", material.items.get(it.item_id, "(not shown)"), ""]
    ids = ", ".join(f'"{it.item_id}"' for it in items)
    parts.append(PROMPT_ANSWER.format(ids=ids, patch_format=material.patch_format))
    return "\n".join(parts)
