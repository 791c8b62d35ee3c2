"""Review material and repairs for workflows whose stale items carry whole artifacts.

GEPA (prompts) and Meta-Harness (harness code) propose complete artifacts made of named text
components, scored in the Pareto pool.  A stale proposal of theirs is repaired the same way: a
reviewer sees the current best, what the pool admitted since the proposal's stamp and the
proposal with the feedback that motivated it, and returns complete new texts for some components;
the repair is the current best with those texts merged in.  :class:`ArtifactReview` implements
:meth:`~flashevolve.workflows.base.Repairable.review_material` and ``make_repair`` for them; a
workflow adds only ``apply_patch`` (how the repaired artifact re-enters its own pipeline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flashevolve.artifacts import Artifact
from flashevolve.policies.staleness import Repair, ReviewMaterial, StaleItem
from flashevolve.runtime.context import StageContext

#: rough size of a token in characters (English text, BPE tokenizers)
CHARS_PER_TOKEN = 4


def clip(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: max(0, limit - 16)] + " [... clipped]"


def render_components(art: Artifact, names: Sequence[str] | None = None, limit: int = 4000) -> str:
    parts = []
    for name in names or art.names:
        parts.append(f'component "{name}":\n```\n{clip(art[name], limit)}\n```')
    return "\n".join(parts)


def render_history(ctx: StageContext, since: int, budget_chars: int, limit: int) -> str:
    """What the pool admitted after version ``since``: newest first, with score changes."""
    best_before: dict[str, float] = {}
    running = float("-inf")
    for r in ctx.pool.records:
        best_before[r.id] = running
        if r.alive and r.scored:
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
            + "\n".join(f"  {c}: {clip(r.artifact[c], limit)!r}" for c in changed)
        )
        if used + len(entry) > budget_chars and lines:
            lines.append(f"- ... {len(history) - n} older admissions omitted")
            break
        lines.append(clip(entry, budget_chars))
        used += len(entry)
    return "\n".join(lines) if lines else "(nothing admitted since)"


def render_feedback(feedback: Any, limit: int) -> str:
    lines = []
    for rec in feedback or ():
        inp = rec.get("input", "")
        lines.append(
            f"- example {rec.get('example_id', '?')} (score {float(rec.get('score', 0)):.2f}): "
            f"input {clip(inp, limit)!r}; feedback: {clip(rec.get('feedback', ''), limit)}"
        )
    return "\n".join(lines) if lines else "- (no minibatch feedback recorded)"


def patched_schema(components: Sequence[str], max_text: int) -> dict[str, Any]:
    """JSON Schema of ``patched``: complete texts for some of the best's components."""
    text = {"type": "string", "minLength": 1, "maxLength": max_text}
    return {
        "type": "object",
        "properties": {name: text for name in components},
        # one component: its text is required; several: any subset of them
        "required": list(components) if len(components) == 1 else [],
        "additionalProperties": False,
    }


class ArtifactReview:
    """Mixin: review material and repairs for proposals that are whole artifacts."""

    #: what the artifacts are, in the reviewer's words (a workflow may override)
    artifact_kind = "prompts or other instructions for an AI system"

    def review_material(
        self, items: Sequence[StaleItem], ctx: StageContext, *, limits: Mapping[str, int]
    ) -> ReviewMaterial:
        artifact_chars = int(limits.get("artifact_chars", 4000))
        feedback_chars = int(limits.get("feedback_chars", 300))
        history_tokens = int(limits.get("history_tokens", 2000))
        best = ctx.pool.best()
        since = min(it.version_stamp for it in items)
        rendered: dict[str, str] = {}
        for it in items:
            art, parent = it.artifact, it.parent
            if art is None:
                continue
            changed = [c for c in art.names if parent is None or parent.components.get(c) != art[c]]
            parent_note = f"made from {parent.id}" if parent is not None else "parent unknown"
            # The proposal's text comes first in its section (the simulator's patch answers
            # read it from there: flashevolve.workflows.gepa.sim.respond_patch).
            rendered[it.item_id] = "\n".join(
                [
                    f"({parent_note}, lag {it.lag})",
                    render_components(art, changed or None, limit=artifact_chars),
                    "Feedback on the minibatch that motivated it:",
                    render_feedback(it.feedback, feedback_chars),
                ]
            )
        names = ", ".join(f'"{n}"' for n in best.artifact.names)
        return ReviewMaterial(
            what=(
                f"The artifacts are {self.artifact_kind}. Each stale proposal was written by "
                "looking at a small batch of failures of an *older* artifact; while it waited, "
                "other proposals were accepted, so the artifact it tried to improve is no longer "
                "the current best. A patch keeps a proposal's transferable idea (an output rule, "
                "a reasoning step, a way to handle a constraint, a style requirement), drops "
                "details that only fit its own examples, and merges it into the current best. "
                'All items marked "patch" are merged together into ONE repaired version.'
            ),
            current=(
                f"Current best artifact (id {best.id}, validation score {best.mean_score:.3f}):\n"
                + render_components(best.artifact, limit=artifact_chars)
            ),
            history=(
                f"Accepted since the oldest proposal was made (pool version {since} -> "
                f"{ctx.pool.pool_version}), newest first:\n"
                + render_history(ctx, since, history_tokens * CHARS_PER_TOKEN, artifact_chars // 4)
            ),
            items=rendered,
            patch_format=(
                '{"<name of the part you changed>": "<its complete new text>"}: complete '
                f"replacement texts for parts of the current best artifact ({names}), never "
                "fragments"
            ),
            patch_schema=patched_schema(
                best.artifact.names, int(limits.get("patch_chars", artifact_chars))
            ),
        )

    def make_repair(
        self, items: Sequence[StaleItem], patched: Any, ctx: StageContext
    ) -> Repair | str:
        """The current best with the reviewer's texts merged in (or why that is unusable)."""
        best = ctx.pool.best()
        if not isinstance(patched, Mapping) or not patched:
            return "the answer has no 'patched' texts"
        known = {
            str(k): str(v)
            for k, v in patched.items()
            if k in best.artifact.components and isinstance(v, str) and v.strip()
        }
        if not known:
            return (
                f"'patched' names no part of the current best "
                f"({sorted(map(str, patched))} vs {best.artifact.names})"
            )
        stale = tuple(it.artifact.id for it in items if it.artifact is not None)
        art = Artifact(
            {**dict(best.artifact.components), **known},
            parents=(best.id, *stale),
            origin="patch",
            version_stamp=ctx.pool.pool_version,
            frontier_stamp=ctx.pool.frontier_version,
            meta={"patched_from": [it.item_id for it in items]},
        )
        if art.id == best.id or all(
            v.strip() == best.artifact.components[k].strip() for k, v in known.items()
        ):
            return "the patch leaves the current best unchanged"
        if art.id in ctx.pool:
            return f"the patch duplicates pool candidate {art.id}"
        return Repair(
            id=art.id,
            value=art,
            parent_id=best.id,
            absorbed=stale,
            details={"components": sorted(known), "texts": known},
        )
