"""The reviewer's side of the Reflective policy: its prompt, its answer schema and the parser.

Kept apart from the policy object (flashevolve.policies.reflective) so each stays small.  The
prompt is flashevolve's own wording; the answer is JSON validated with pydantic.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from flashevolve.artifacts import Artifact
from flashevolve.policies.staleness import ACCEPT, DISCARD, PATCH, StaleItem

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext

CHARS_PER_TOKEN = 4
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
    def _item_text(cls, v: Any) -> str:
        if isinstance(v, int | float):
            return str(v)
        return v

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
    patched: dict[str, str] | None = None


def review_json_schema(
    max_items: int = 16,
    item_ids: list[str] | None = None,
    max_text: int = 4000,
    components: list[str] | None = None,
    max_rationale: int = 300,
) -> dict[str, Any]:
    """The answer schema as JSON Schema, for servers with constrained decoding.

    Give the *reviewer's* client (llama-server, vLLM) ``extra_body={"response_format": {"type":
    "json_schema", "json_schema": {"name": "review", "schema": review_json_schema(k)}}}``; with
    ``max_items = k`` a small model cannot ramble on with invented items.  ``Reflective(
    review_schema=True)`` does this per request, with the batch's own ``item_ids`` (exactly one
    decision per item, ids from the batch) and the best artifact's ``components`` (the only keys
    ``patched`` may use).  Every text is capped, so a constrained answer has a bounded length.
    The parser stays the judge either way; the schema only makes valid answers likelier.
    """
    item: dict[str, Any] = {"type": "string", "maxLength": 32}
    n_min = 1
    if item_ids:
        item = {"type": "string", "enum": list(item_ids)}
        n_min = max_items = len(item_ids)
    text: dict[str, Any] = {"type": "string", "maxLength": max_text}
    patched_obj: dict[str, Any] = {"type": "object", "additionalProperties": text}
    if components:
        text = {"type": "string", "minLength": 1, "maxLength": max_text}
        patched_obj = {
            "type": "object",
            "properties": {name: text for name in components},
            # one component: its text is required; several: any subset of them
            "required": list(components) if len(components) == 1 else [],
            "additionalProperties": False,
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
You review stale proposals in an evolutionary search over text artifacts (prompts or other
instructions for an AI system). Each proposal below was written by looking at a small batch of
failures of an *older* artifact. While it waited, other proposals were accepted, so the artifact
it tried to improve is no longer the current best.

For every stale item decide one of:
- "accept": the proposal still adds something the current best lacks; test it as it is.
- "discard": its ideas are already covered by the current best or by what was accepted
  meanwhile, or it only fits the few examples it was written for.
- "patch": it holds a transferable idea (an output rule, a reasoning step, a way to handle a
  constraint, a style requirement) that the current best lacks. Keep that idea, drop details that
  only fit its own examples, and merge it into the current best.

All items you mark "patch" are merged together into ONE repaired version of the current best.
"""

PROMPT_ANSWER = """\
## Answer format
Reply with one JSON object and nothing else:
{{"decisions": [{{"item": "<stale item id>", "decision": "accept" | "discard" | "patch",
"rationale": "<one sentence>"}}, ...],
 "patched": {{"<name of the part you changed>": "<its complete new text>"}} or null}}
Give one decision per stale item ({ids}). "patched" is required when any decision is "patch" and
must be null otherwise; it holds complete replacement texts for parts of the current best
artifact ({names}), never fragments.
"""


def _clip(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: max(0, limit - 16)] + " [... clipped]"


def render_components(art: Artifact, names: list[str] | None = None, limit: int = 4000) -> str:
    parts = []
    for name in names or art.names:
        parts.append(f'component "{name}":\n```\n{_clip(art[name], limit)}\n```')
    return "\n".join(parts)


def render_history(ctx: StageContext, since: int, budget_chars: int, limit: int) -> str:
    """What the pool admitted after version ``since``: newest first, with score changes."""
    records = ctx.pool.records
    best_before: dict[str, float] = {}
    running = float("-inf")
    for r in records:
        best_before[r.id] = running
        if r.alive:
            running = max(running, r.mean_score)
    lines: list[str] = []
    used = 0
    history = sorted(ctx.pool.history_since(since), key=lambda r: -r.index)
    for n, r in enumerate(history):
        before = best_before[r.id]
        change = (
            f"best {before:.3f} -> {max(before, r.mean_score):.3f}"
            if before > float("-inf")
            else "first candidate"
        )
        changed = [
            c
            for c in r.artifact.names
            if not r.parents
            or r.parents[0] not in ctx.pool
            or ctx.pool.get(r.parents[0]).artifact.components.get(c) != r.artifact[c]
        ]
        entry = (
            f"- {r.id} ({r.artifact.origin}, status {r.status}): validation score "
            f"{r.mean_score:.3f} ({change}); changed: {', '.join(changed) or 'nothing'}\n"
            + "\n".join(f"  {c}: {_clip(r.artifact[c], limit)!r}" for c in changed)
        )
        if used + len(entry) > budget_chars and lines:
            lines.append(f"- ... {len(history) - n} older admissions omitted")
            break
        lines.append(_clip(entry, budget_chars))
        used += len(entry)
    return "\n".join(lines) if lines else "(nothing admitted since)"


def render_feedback(feedback: Any, limit: int) -> str:
    lines = []
    for rec in feedback or ():
        inp = rec.get("input", "")
        lines.append(
            f"- example {rec.get('example_id', '?')} (score {float(rec.get('score', 0)):.2f}): "
            f"input {_clip(inp, limit)!r}; feedback: {_clip(rec.get('feedback', ''), limit)}"
        )
    return "\n".join(lines) if lines else "- (no minibatch feedback recorded)"


def build_patch_prompt(
    items: list[StaleItem],
    ctx: StageContext,
    *,
    history_tokens: int,
    artifact_chars: int = 4000,
    feedback_chars: int = 300,
) -> str:
    best = ctx.pool.best()
    since = min(it.version_stamp for it in items)
    parts = [
        PROMPT_INTRO,
        f"## Current best artifact (id {best.id}, validation score {best.mean_score:.3f})",
        render_components(best.artifact, limit=artifact_chars),
        "",
        f"## Accepted since the oldest proposal was made (pool version {since} -> "
        f"{ctx.pool.pool_version}), newest first",
        render_history(ctx, since, history_tokens * CHARS_PER_TOKEN, artifact_chars // 4),
        "",
    ]
    for it in items:
        assert it.artifact is not None
        parent = it.parent
        changed = [
            c
            for c in it.artifact.names
            if parent is None or parent.components.get(c) != it.artifact[c]
        ]
        parent_note = f"made from {parent.id}" if parent is not None else "parent unknown"
        # The proposal's text comes first in its section (simulator convention, see
        # flashevolve.backends.sim.workload.respond_patch).
        parts += [
            f"## Stale item {it.item_id} ({parent_note}, lag {it.lag})",
            render_components(it.artifact, changed or None, limit=artifact_chars),
            "Feedback on the minibatch that motivated it:",
            render_feedback(it.feedback, feedback_chars),
            "",
        ]
    ids = ", ".join(f'"{it.item_id}"' for it in items)
    names = ", ".join(f'"{n}"' for n in best.artifact.names)
    parts.append(PROMPT_ANSWER.format(ids=ids, names=names))
    return "\n".join(parts)
