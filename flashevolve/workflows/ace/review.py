"""Staleness for delta operations: how a stale operation looks, and how a reviewer repairs it.

An operation is stale when the playbook moved on after the version it was written against (its
``stamp``).  :func:`classify` compares the playbook at the stamp with the current one:

- an operation invalid already at its stamp (an id the curator invented) is not a staleness
  matter: the normal rules reject it;
- UPDATE / MERGE / DELETE whose target bullets vanished or were rewritten since the stamp, and an
  ADD whose text a bullet added or rewritten since the stamp now covers, have a **conflict**: the
  policy decides (Guarded discards, Full accepts -- the operation then applies or fails by the
  normal rules --, Reflective reviews);
- everything else is **clean**: it applies as is (the runtime logs it as accepted by the
  workflow, without asking the policy).

:class:`AceReview` is the workflow's :class:`~flashevolve.workflows.base.Repairable` side: the
reviewer sees the current playbook, the operations applied since the oldest stamp and each stale
operation with the reflections that motivated it, and answers rebased operations
(``{"operations": [...]}``) that are validated against the current playbook.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flashevolve.policies.staleness import Repair, ReviewMaterial, StaleDecision, StaleItem
from flashevolve.runtime.context import StageContext
from flashevolve.runtime.items import WorkItem
from flashevolve.workflows.ace.items import CuratedBatch, Reflection
from flashevolve.workflows.ace.operations import (
    MAX_BULLET_CHARS,
    AddOp,
    StampedOp,
    apply_operations,
    op_dict,
    operation_schema,
    ops_digest,
    validate_operation,
)
from flashevolve.workflows.ace.playbook import Playbook
from flashevolve.workflows.ace.prompts import clip, playbook_block, render_reflection

if TYPE_CHECKING:
    from flashevolve.artifacts import Artifact
    from flashevolve.pool import CandidateRecord

CLEAN, CONFLICT, INVALID = "clean", "conflict", "invalid"


def classify(
    sop: StampedOp, then: Playbook, now: Playbook, dedup_threshold: float | None
) -> tuple[str, str | None]:
    """(``clean`` | ``conflict`` | ``invalid``, reason) of a stale operation (module docstring)."""
    op, stamp = sop.op, sop.stamp
    unknown = [t for t in op.targets() if then.get(t) is None]
    if unknown:
        return INVALID, f"no bullet {', '.join(unknown)} even at version {stamp}"
    gone = [t for t in op.targets() if now.get(t) is None]
    if gone:
        return CONFLICT, (
            f"target {', '.join(gone)} is no longer in the playbook (deleted or merged since "
            f"version {stamp})"
        )
    rewritten = [t for t in op.targets() if now.get(t).text != then.get(t).text]  # type: ignore[union-attr]
    if rewritten:
        return CONFLICT, f"target {', '.join(rewritten)} was rewritten since version {stamp}"
    if isinstance(op, AddOp) and dedup_threshold is not None:
        near = now.most_similar(op.content)
        if near is not None and near[1] >= dedup_threshold:
            old = then.get(near[0].id)
            if old is None or old.text != near[0].text:
                return CONFLICT, (
                    f"covered by bullet {near[0].id} (similarity {near[1]:.2f}), added or "
                    f"rewritten since version {stamp}"
                )
    return CLEAN, None


@dataclass(slots=True)
class StaleOp:
    """The payload of a stale operation's view: the operation and what motivated it."""

    sop: StampedOp
    reflections: list[Reflection] = field(default_factory=list)
    then: Playbook | None = None  # the playbook at its stamp


class AceReview:
    """Mixin: :class:`~flashevolve.workflows.base.Repairable` for delta operations.

    The workflow provides ``_head(ctx)``, ``_book(artifact)``, ``_next_id``, ``dedup_threshold``
    and ``_history`` (the operations applied per version, bounded).
    """

    # what the workflow provides (annotations only: the mixin defines none of them)
    _head: Callable[[StageContext], CandidateRecord]
    _book: Callable[[Artifact], Playbook]
    _next_id: int
    _history: list[dict[str, Any]]
    dedup_threshold: float | None

    def review_material(
        self, items: Sequence[StaleItem], ctx: StageContext, *, limits: Mapping[str, int]
    ) -> ReviewMaterial:
        artifact_chars = int(limits.get("artifact_chars", 4000))
        feedback_chars = int(limits.get("feedback_chars", 300))
        history_chars = int(limits.get("history_tokens", 2000)) * 4
        head = self._head(ctx)
        now: Playbook = self._book(head.artifact)
        since = min(it.version_stamp for it in items)
        rendered = {it.item_id: self._render_item(it, now, feedback_chars) for it in items}
        return ReviewMaterial(
            what=(
                "The artifact is a playbook: sections of advice bullets '[id] helpful=H "
                "harmful=X :: text' that a model reads before answering. A curator edits it with "
                "delta operations (ADD a bullet to a section, UPDATE a bullet's text, MERGE "
                "bullets into one, DELETE a bullet), each written against the playbook version "
                "it saw. Each stale operation below was written against an older version, and "
                "the playbook has changed since (see the operations applied meanwhile). Accept "
                "an operation that still makes sense exactly as written; discard one whose idea "
                "the playbook already holds or that no longer applies; patch one whose idea is "
                "still missing by rewriting it as operations on the current playbook (bullet ids "
                'as they are now). All items marked "patch" go into ONE list of operations.'
            ),
            current=(
                f"Current playbook (version {head.pool_version}, {len(now)} bullets):\n"
                + playbook_block(clip(head.artifact["playbook"], max(artifact_chars, 1000)))
            ),
            history=self._render_history(since, history_chars),
            items=rendered,
            patch_format=(
                '{"operations": [<operation>, ...]} where an operation is {"type": "ADD", '
                '"section": "<section name>", "content": "<text>"}, {"type": "UPDATE", "id": '
                '"<bullet id>", "content": "<new text>"}, {"type": "MERGE", "ids": ["<id>", '
                '"<id>"], "content": "<merged text>"} or {"type": "DELETE", "id": "<bullet id>"}, '
                "all against the current playbook"
            ),
            patch_schema={
                "type": "object",
                "properties": {
                    "operations": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 8,
                        "items": operation_schema(
                            min(MAX_BULLET_CHARS, int(limits.get("patch_chars", 600)))
                        ),
                    }
                },
                "required": ["operations"],
                "additionalProperties": False,
            },
        )

    def _render_item(self, it: StaleItem, now: Playbook, limit: int) -> str:
        payload = it.payload
        if not isinstance(payload, StaleOp):
            return "(not an operation)"
        sop, then = payload.sop, payload.then
        lines = [
            f"operation: {json.dumps(op_dict(sop.op), ensure_ascii=False)}",
            f"written against playbook version {sop.stamp} (lag {it.lag})"
            + (f"; conflict: {it.conflict}" if it.conflict else ""),
        ]
        for target in sop.op.targets():
            old = then.get(target) if then is not None else None
            new = now.get(target)
            lines.append(
                f"bullet {target} then: {clip(old.text, limit) if old else '(absent)'!r}; "
                f"now: {clip(new.text, limit) if new else '(gone)'!r}"
            )
        lines.append("Reflections that motivated it:")
        lines += [render_reflection(r, limit) for r in payload.reflections] or ["- (none kept)"]
        return "\n".join(lines)

    def _render_history(self, since: int, budget: int) -> str:
        entries = [h for h in self._history if h["version"] > since]
        lines: list[str] = []
        used = 0
        for n, entry in enumerate(reversed(entries)):
            line = f"- version {entry['version']}: " + "; ".join(
                entry["ops"] or ["(counters only)"]
            )
            if used + len(line) > budget and lines:
                lines.append(f"- ... {len(entries) - n} older versions omitted")
                break
            lines.append(clip(line, budget))
            used += len(line)
        head = f"Operations applied since version {since}, newest first:\n"
        return head + ("\n".join(lines) if lines else "(none recorded)")

    def make_repair(
        self, items: Sequence[StaleItem], patched: Any, ctx: StageContext
    ) -> Repair | str:
        """The reviewer's rebased operations, validated against the current playbook."""
        raw = patched.get("operations") if isinstance(patched, Mapping) else patched
        if not isinstance(raw, list) or not raw:
            return "'patched' holds no 'operations' list"
        head = self._head(ctx)
        now: Playbook = self._book(head.artifact)
        sops: list[StampedOp] = []
        invalid: list[str] = []
        for k, entry in enumerate(raw):
            try:
                op = validate_operation(entry)
            except ValueError as err:
                invalid.append(f"operation {k}: {err}")
                continue
            sops.append(
                StampedOp(
                    f"{items[0].item_id}.r{k}",
                    op,
                    head.pool_version,
                    ctx.pool.frontier_version,
                    ctx.now(),
                    source="patch",
                )
            )
        trial = apply_operations(
            now,
            sops,
            self._next_id,
            dedup_threshold=self.dedup_threshold,
        )
        ok = {o.op_id for o in trial.applied}
        invalid += [f"{o.op_id}: {o.reason}" for o in trial.rejected]
        rebased = [s for s in sops if s.op_id in ok]
        if not rebased:
            return (
                "no rebased operation applies to the current playbook (" + "; ".join(invalid) + ")"
            )
        return Repair(
            id=f"ops-{ops_digest(rebased)}",
            value=rebased,
            parent_id=head.id,
            details={
                "operations": [{"op_id": s.op_id, **op_dict(s.op)} for s in rebased],
                "rejected": invalid,
                "stale_operations": [it.item_id for it in items],
            },
        )

    def apply_patch(self, item: WorkItem, decision: StaleDecision, ctx: StageContext) -> Any:
        """A curated batch whose patched operations are replaced by the rebased ones.

        (The apply stage judges operations one by one and splices repairs in itself; this is the
        same rule for a whole batch, for the runtime's per-item path.)"""
        batch: CuratedBatch = item.payload
        repair = decision.repair
        if repair is None or not isinstance(repair.value, list):
            raise ValueError("an ACE patch decision must carry rebased operations")
        patched = set(decision.patched_from) or {s.op_id for s in batch.ops}
        kept = [s for s in batch.ops if s.op_id not in patched]
        stamp = ctx.pool.pool_version
        return CuratedBatch(
            list(repair.value) + kept,
            batch.reflections,
            self._head(ctx).id,
            stamp,
            batch.rejected,
        )
