"""Delta operations on a playbook: validated at the boundary, applied deterministically by code.

Four operations (the ACE paper's; the official code applies only ADD):

- ``ADD``    ``{"type": "ADD", "section": ..., "content": ...}``: a new bullet (new id, counters
  0) at the end of the section; a section the playbook lacks means ``OTHERS`` (as the official
  code does);
- ``UPDATE`` ``{"type": "UPDATE", "id": ..., "content": ...}``: new text, same id and counters;
- ``MERGE``  ``{"type": "MERGE", "ids": [...], "content": ...}``: the bullets (two or more) are
  replaced by one new bullet, in the first one's section at its place, with their counters summed;
- ``DELETE`` ``{"type": "DELETE", "id": ...}``.

Each operation of a batch is validated on its own (pydantic, then against the playbook); an
invalid one is rejected with its reason and the rest of the batch still applies.

**The batch rule** (conflicting operations in one batch): operations apply in the order given,
each against the playbook the earlier ones left, and *the first operation that names a bullet
claims it* -- a later UPDATE, MERGE or DELETE naming a bullet an earlier operation of the same
batch already updated, merged or deleted is rejected ("already claimed by ..."), so every bullet is
touched at most once per batch and the outcome never depends on two edits of one bullet.  An ADD
(or the text of an UPDATE or MERGE) that is near-identical to a bullet already in the playbook is
rejected as a duplicate when de-duplication is on (grow-and-refine; token-set similarity >=
``dedup_threshold``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from flashevolve.workflows.ace.playbook import (
    FALLBACK_SECTION,
    Bullet,
    Playbook,
    clean_text,
    jaccard,
    section_slug,
    token_set,
)

#: Longest bullet text an operation may write (characters); longer ones are rejected.
MAX_BULLET_CHARS = 600


class _Op(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @field_validator("content", mode="before", check_fields=False)
    @classmethod
    def _content(cls, v: Any) -> Any:
        if not isinstance(v, str):
            raise ValueError("content must be a string")
        text = clean_text(v)
        if not text:
            raise ValueError("content is empty")
        if len(text) > MAX_BULLET_CHARS:
            raise ValueError(f"content is {len(text)} characters; at most {MAX_BULLET_CHARS}")
        return text

    def targets(self) -> list[str]:
        return []


class AddOp(_Op):
    type: Literal["ADD"]
    section: str = Field(min_length=1, max_length=120)
    content: str
    reason: str = ""


class UpdateOp(_Op):
    type: Literal["UPDATE"]
    id: str = Field(min_length=1, validation_alias=AliasChoices("id", "bullet_id"))
    content: str
    reason: str = ""

    def targets(self) -> list[str]:
        return [self.id]


class MergeOp(_Op):
    type: Literal["MERGE"]
    ids: list[str] = Field(
        min_length=2, validation_alias=AliasChoices("ids", "bullet_ids", "source_ids")
    )
    content: str
    reason: str = ""

    @field_validator("ids")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("ids repeat a bullet; name each bullet once")
        return v

    def targets(self) -> list[str]:
        return list(self.ids)


class DeleteOp(_Op):
    type: Literal["DELETE"]
    id: str = Field(min_length=1, validation_alias=AliasChoices("id", "bullet_id"))
    reason: str = ""

    def targets(self) -> list[str]:
        return [self.id]


Operation = Annotated[AddOp | UpdateOp | MergeOp | DeleteOp, Field(discriminator="type")]
_OPERATION = TypeAdapter(Operation)
OP_TYPES = ("ADD", "UPDATE", "MERGE", "DELETE")


def validate_operation(raw: Any) -> AddOp | UpdateOp | MergeOp | DeleteOp:
    """One operation from JSON; raises ``ValueError`` with a one-line reason."""
    if isinstance(raw, Mapping) and isinstance(raw.get("type"), str):
        raw = {**raw, "type": raw["type"].strip().upper()}
        if "text" in raw and "content" not in raw:
            raw["content"] = raw["text"]
    try:
        return _OPERATION.validate_python(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p not in OP_TYPES)
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "union_tag_invalid" or first["type"] == "union_tag_not_found":
            msg = f"type must be one of {', '.join(OP_TYPES)}"
            where = "type"
        raise ValueError(f"{where or 'operation'}: {msg}") from None


def operation_schema(
    max_text: int = MAX_BULLET_CHARS,
    *,
    ids: Sequence[str] | None = None,
    sections: Sequence[str] | None = None,
) -> dict[str, Any]:
    """JSON Schema of one operation (for servers with constrained decoding): one variant per
    type with its required fields.  Given the playbook's ``ids`` and ``sections``, names are
    limited to them (an empty playbook then allows only ADD)."""
    text = {"type": "string", "minLength": 1, "maxLength": max_text}
    ident: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 40}
    if ids is not None and ids:
        ident = {"type": "string", "enum": list(ids)}
    section: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 120}
    if sections:
        section = {"type": "string", "enum": list(sections)}

    def variant(kind: str, **fields: Any) -> dict[str, Any]:
        props = {"type": {"type": "string", "enum": [kind]}, **fields}
        return {
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }

    variants = [variant("ADD", section=section, content=text)]
    if ids is None or len(ids) >= 1:
        variants += [variant("UPDATE", id=ident, content=text), variant("DELETE", id=ident)]
    if ids is None or len(ids) >= 2:
        merge_ids = {"type": "array", "items": ident, "minItems": 2, "maxItems": 8}
        variants.append(variant("MERGE", ids=merge_ids, content=text))
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def op_dict(op: AddOp | UpdateOp | MergeOp | DeleteOp) -> dict[str, Any]:
    """The operation as plain JSON (for events, snapshots and prompts)."""
    out = op.model_dump()
    if not out.get("reason"):
        out.pop("reason", None)
    return out


def op_summary(op: AddOp | UpdateOp | MergeOp | DeleteOp, limit: int = 120) -> str:
    """One line for histories: ``UPDATE [calc-00003] -> 'text'``."""
    text = getattr(op, "content", "")
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    if isinstance(op, AddOp):
        return f"ADD to {op.section}: {text!r}"
    if isinstance(op, UpdateOp):
        return f"UPDATE [{op.id}] -> {text!r}"
    if isinstance(op, MergeOp):
        return f"MERGE {', '.join(f'[{i}]' for i in op.ids)} -> {text!r}"
    return f"DELETE [{op.id}]"


@dataclass(slots=True)
class StampedOp:
    """An operation with the playbook version it was written against."""

    op_id: str
    op: AddOp | UpdateOp | MergeOp | DeleteOp
    stamp: int  # pool_version of the playbook the curator (or reviewer) saw
    frontier_stamp: int = 0
    written_at: float = 0.0  # run clock
    source: str = "curator"  # "curator" or "patch" (a reviewer's rebased operation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "op": op_dict(self.op),
            "stamp": self.stamp,
            "frontier_stamp": self.frontier_stamp,
            "written_at": self.written_at,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> StampedOp:
        return cls(
            str(raw["op_id"]),
            validate_operation(raw["op"]),
            int(raw["stamp"]),
            int(raw.get("frontier_stamp", 0)),
            float(raw.get("written_at", 0.0)),
            str(raw.get("source", "curator")),
        )


def ops_digest(ops: Sequence[StampedOp]) -> str:
    """A short content hash of operations (a repair's id)."""
    canonical = json.dumps([op_dict(s.op) for s in ops], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(slots=True)
class Outcome:
    """What became of one operation."""

    op_id: str
    type: str
    status: str  # "applied" | "rejected"
    reason: str = ""
    bullet_id: str | None = None  # the bullet it created or changed
    op: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"op_id": self.op_id, "type": self.type, "status": self.status, "op": self.op}
        if self.reason:
            out["reason"] = self.reason
        if self.bullet_id:
            out["bullet_id"] = self.bullet_id
        return out


@dataclass(slots=True)
class Applied:
    playbook: Playbook
    next_id: int
    outcomes: list[Outcome]

    @property
    def applied(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "applied"]

    @property
    def rejected(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "rejected"]


def apply_operations(
    playbook: Playbook,
    ops: Sequence[StampedOp],
    next_id: int,
    *,
    dedup_threshold: float | None = 0.8,
) -> Applied:
    """Apply ``ops`` to a copy of ``playbook`` by the batch rule (module docstring)."""
    book = playbook.copy()
    claimed: dict[str, str] = {}  # bullet id -> op id that claimed it
    outcomes: list[Outcome] = []
    for s in ops:
        op = s.op
        outcome = Outcome(s.op_id, op.type, "rejected", op=op_dict(op))
        reason = _claim_conflict(op, claimed) or _target_problem(op, book)
        if reason is None and dedup_threshold is not None and not isinstance(op, DeleteOp):
            reason = _duplicate(op, book, dedup_threshold)
        if reason is not None:
            outcome.reason = reason
            outcomes.append(outcome)
            continue
        next_id, bullet_id, note = _apply_one(op, book, next_id)
        for target in op.targets():
            claimed[target] = s.op_id
        if bullet_id is not None:
            claimed[bullet_id] = s.op_id
        outcome.status, outcome.bullet_id, outcome.reason = "applied", bullet_id, note
        outcomes.append(outcome)
    return Applied(book, next_id, outcomes)


def _claim_conflict(op: Any, claimed: Mapping[str, str]) -> str | None:
    for target in op.targets():
        if target in claimed:
            return f"bullet {target} already claimed by operation {claimed[target]} of this batch"
    return None


def _target_problem(op: Any, book: Playbook) -> str | None:
    missing = [t for t in op.targets() if book.get(t) is None]
    if missing:
        return f"no bullet {', '.join(missing)} in the playbook"
    return None


def _duplicate(op: Any, book: Playbook, threshold: float) -> str | None:
    near = book.most_similar(op.content, exclude=op.targets())
    if near is not None and near[1] >= threshold:
        return f"near-duplicate of bullet {near[0].id} (similarity {near[1]:.2f})"
    return None


def _apply_one(op: Any, book: Playbook, next_id: int) -> tuple[int, str | None, str]:
    """Change ``book`` in place; returns (next id, bullet made or changed, a note)."""
    if isinstance(op, AddOp):
        section = book.resolve_section(op.section)
        note = ""
        if section is None:
            section = book.resolve_section(FALLBACK_SECTION) or next(iter(book.sections))
            note = f"section {op.section!r} not in the playbook; added to {section}"
        new = Bullet(f"{section_slug(section)}-{next_id:05d}", op.content)
        book.sections[section].append(new)
        return next_id + 1, new.id, note
    if isinstance(op, UpdateOp):
        old = book.get(op.id)
        assert old is not None
        book.replace(op.id, Bullet(old.id, op.content, old.helpful, old.harmful))
        return next_id, op.id, ""
    if isinstance(op, MergeOp):
        first = op.ids[0]
        section = book.section_of(first)
        assert section is not None
        sources = [book.get(i) for i in op.ids]
        helpful = sum(b.helpful for b in sources if b is not None)
        harmful = sum(b.harmful for b in sources if b is not None)
        new = Bullet(f"{section_slug(section)}-{next_id:05d}", op.content, helpful, harmful)
        book.replace(first, new)
        for other in op.ids[1:]:
            book.remove(other)
        return next_id + 1, new.id, ""
    book.remove(op.id)
    return next_id, op.id, ""


# -- counters ------------------------------------------------------------------------------------

TAGS = ("helpful", "harmful", "neutral")


def apply_tags(book: Playbook, tags: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Add the reflections' helpful/harmful tags to the counters (in place); tags naming a bullet
    that is gone are skipped.  Returns counts of what happened."""
    counts = {"helpful": 0, "harmful": 0, "neutral": 0, "gone": 0}
    for bullet_id, tag in tags:
        bullet = book.get(bullet_id)
        if bullet is None:
            counts["gone"] += 1
            continue
        if tag == "helpful":
            book.replace(
                bullet_id, Bullet(bullet.id, bullet.text, bullet.helpful + 1, bullet.harmful)
            )
        elif tag == "harmful":
            book.replace(
                bullet_id, Bullet(bullet.id, bullet.text, bullet.helpful, bullet.harmful + 1)
            )
        counts[tag if tag in counts else "neutral"] += 1
    return counts


def refine(
    book: Playbook, threshold: float, only: Collection[str] | None = None
) -> list[tuple[str, str]]:
    """Grow-and-refine: fold near-identical bullets into the earlier one (in place).

    Pairs with token-set similarity >= ``threshold`` are merged: the later bullet's counters are
    added to the earlier one and the later one is removed.  ``only``: compare just the pairs with
    at least one of these bullets (those a batch created or rewrote; the rest was refined
    before).  Returns (kept id, removed id) pairs, in order.
    """
    order = [b for _, b in book.bullets()]
    tokens = [token_set(b.text) for b in order]
    fresh = [only is None or b.id in only for b in order]
    removed: set[int] = set()
    absorbed: dict[int, list[int]] = {}
    for i in range(len(order)):
        if i in removed:
            continue
        for j in range(i + 1, len(order)):
            if j in removed or not (fresh[i] or fresh[j]):
                continue
            if jaccard(tokens[i], tokens[j]) >= threshold:
                removed.add(j)
                absorbed.setdefault(i, []).append(j)
    merged: list[tuple[str, str]] = []
    for i, js in absorbed.items():
        keep = order[i]
        helpful = keep.helpful + sum(order[j].helpful for j in js)
        harmful = keep.harmful + sum(order[j].harmful for j in js)
        book.replace(keep.id, Bullet(keep.id, keep.text, helpful, harmful))
        for j in js:
            book.remove(order[j].id)
            merged.append((keep.id, order[j].id))
    return merged
