"""The serving simulator's workload model for ACE: what a simulated server answers to ACE's
generator, reflector, curator and review requests, and how long those answers are.

Not a language model: a small deterministic model of how ACE behaves, so the runtime, the
staleness policies and the views can be exercised at scale on virtual time.

- Every bullet's text may carry a hidden usefulness ``[[sim-quality=0.620]]``.  A playbook's
  latent quality is ``base + (top - base) * (1 - exp(-gain / scale)) - harm * misleading``, where
  ``gain`` sums ``2 * (u - 0.5)`` over useful bullets (u > 0.5) and ``misleading`` sums
  ``(0.4 - u) / 0.4`` over misleading ones (u < 0.4): useful bullets help with diminishing
  returns, misleading ones hurt.
- A generator request (stages ``generate`` and ``evaluate``) passes an example when quality +
  noise >= its hidden difficulty (``[sim-example id=... difficulty=...]``, as
  :class:`~flashevolve.backends.sim.SimulatedTask` writes them); the noise is a hash of the
  playbook's markers and the example, so one playbook always gets one score on one example.  It
  names the useful bullets it relied on (and sometimes a misleading one).
- A reflector request tags the named bullets (useful: helpful when the answer passed; misleading:
  harmful) and states a key insight with a new marker -- better on average after a failure; a
  quarter of the insights are one of twelve common lessons, so concurrent curators sometimes
  ADD the same idea (a stale ADD then meets a bullet that covers it).
- A curator request ADDs most insights (the better ones more often), DELETEs bullets whose
  harmful count has overtaken their helpful count, sometimes UPDATEs a middling bullet to a better
  one or MERGEs two useful ones, and now and then names an id that does not exist (so the
  rejection path runs).
- A review request (the Reflective staleness policy) discards covered ADDs and moot operations
  and rebases the rest onto the current playbook (:func:`respond_ace_review`).
- A retry (reflect-and-retry rounds) carries the reflection as a note: its marker lifts that one
  answer by ``note_boost * (u - 0.4)``.
- About 2% of generator, reflector and curator answers are malformed (cut-off JSON).

Output lengths per stage (:data:`ACE_LENGTHS`) put a synchronous step on the
``vllm-h100-qwen3-8b`` profile near the FlashEvolve paper's ACE profile (about 14 s generate,
11 s curate, 120 s evaluate); docs/ace.md has the measured figures.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flashevolve.backends.sim.lengths import LengthDist
from flashevolve.backends.sim.llm import SimulatedLLM
from flashevolve.backends.sim.workload import (
    EXAMPLE_RE,
    QUALITY_RE,
    SimulatedTask,
    SimWorkload,
    joined_text,
    quality_marker,
    unit_hash,
)
from flashevolve.workflows.ace.playbook import Bullet, Playbook

#: Output tokens per ACE stage on the simulator (lognormal, capped).
ACE_LENGTHS: dict[str, LengthDist] = {
    "generate": LengthDist(mean=560.0, sigma=0.45, cap=4000, floor=32),
    "evaluate": LengthDist(mean=500.0, sigma=0.45, cap=4000, floor=32),
    "reflect": LengthDist(mean=580.0, sigma=0.35, cap=3000, floor=64),
    "curate": LengthDist(mean=1000.0, sigma=0.35, cap=4000, floor=64),
    "patch": LengthDist(mean=800.0, sigma=0.5, cap=4000, floor=64),
}
ACE_DEFAULT_LENGTH = ACE_LENGTHS["generate"]

_PLAYBOOK_RE = re.compile(r"<playbook>\n(.*?)\n</playbook>", re.DOTALL)
_INSIGHT_RE = re.compile(r"^\s*key insight: (.*)$", re.MULTILINE)
_ANSWER_LINE_RE = re.compile(r"final answer: ANSWER: (pass|partial|fail)", re.IGNORECASE)
_USED_RE = re.compile(r"Bullets the attempt relied on:\n(.*?)\n\n", re.DOTALL)
_MAX_OPS_RE = re.compile(r"Propose at most (\d+) operations")
_NOTE_RE = re.compile(r"previous attempt at this question:\n(.*?)\n\nQuestion:", re.DOTALL)

_TOPICS = ("units", "denominators", "rounding", "signs", "time periods", "averages", "ratios",
           "percentages", "definitions", "edge cases", "totals", "growth rates")  # fmt: skip
_ACTIONS = ("check", "restate", "convert", "verify", "normalise", "compare", "recompute",
            "annualise", "separate", "label")  # fmt: skip
_OBJECTS = ("the inputs", "each figure", "the final number", "the base period", "the formula",
            "intermediate results", "the question's wording", "the reported units")  # fmt: skip


def bullet_quality(text: str) -> float | None:
    found = QUALITY_RE.search(text)
    return float(found.group(1)) if found else None


def _playbook(text: str) -> Playbook:
    found = _PLAYBOOK_RE.search(text)
    if not found:
        return Playbook({})
    try:
        return Playbook.parse(found.group(1), strict=False)
    except ValueError:
        return Playbook({})


def _insight_text(u: float, key: str) -> str:
    pick = [int(unit_hash(key, k) * 1000) for k in range(4)]
    topic = _TOPICS[pick[0] % len(_TOPICS)]
    action = _ACTIONS[pick[1] % len(_ACTIONS)]
    obj = _OBJECTS[pick[2] % len(_OBJECTS)]
    return f"For {topic}, {action} {obj} before answering (case {pick[3]:03d}). {quality_marker(u)}"


def _cut(text: str, rng: random.Random) -> str:
    return text[: max(1, int(len(text) * (0.3 + 0.4 * rng.random())))]


@dataclass
class AceContent:
    """The ACE content model (see the module docstring)."""

    base_quality: float = 0.30
    top_quality: float = 0.90
    scale: float = 3.0
    harm: float = 0.04
    noise: float = 0.06
    malformed_rate: float = 0.02
    invalid_op_rate: float = 0.03
    note_boost: float = 0.5  # how much a retry's reflection note lifts this one answer
    common_rate: float = 0.25  # share of reflections that state one of 12 common lessons
    review_fn: Callable[[str, random.Random], str] | None = field(default=None)
    _seen: dict[str, tuple[float, str, list[str], list[str]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def respond(
        self,
        messages: Sequence[Mapping[str, object]],
        stage: str,
        rng: random.Random,
        *,
        truncated: bool = False,
    ) -> str:
        text = joined_text(messages)
        if stage == "reflect":
            return self.reflect(text, rng, truncated=truncated)
        if stage == "curate":
            return self.curate(text, rng, truncated=truncated)
        if stage == "patch":
            return (self.review_fn or respond_ace_review)(text, rng)
        return self.generate(text, rng, truncated=truncated)

    # -- the latent quality ------------------------------------------------------------------------
    def quality(self, book: Playbook) -> float:
        gain = misleading = 0.0
        for _, b in book.bullets():
            u = bullet_quality(b.text)
            if u is None:
                continue
            gain += max(0.0, u - 0.5) * 2
            misleading += max(0.0, 0.4 - u) / 0.4
        q = self.base_quality + (self.top_quality - self.base_quality) * (
            1 - math.exp(-gain / self.scale)
        )
        return min(0.99, max(0.01, q - self.harm * misleading))

    # -- generator ---------------------------------------------------------------------------------
    def _read(self, prompt: str) -> tuple[float, str, list[str], list[str]]:
        """(quality, markers, useful ids best first, misleading ids) of the playbook shown;
        cached per playbook text (one validation sweep shows one playbook hundreds of times)."""
        shown = _PLAYBOOK_RE.search(prompt)
        key = shown.group(1) if shown else ""
        if key not in self._seen:
            book = _playbook(prompt)
            scored = [(bullet_quality(b.text), b.id) for _, b in book.bullets()]
            useful = [i for u, i in sorted(scored, key=lambda x: -(x[0] or 0)) if (u or 0) >= 0.5]
            misleading = [i for u, i in scored if u is not None and u < 0.4]
            markers = " ".join(sorted(QUALITY_RE.findall(key)))
            if len(self._seen) >= 64:
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = (self.quality(book), markers, useful, misleading)
        return self._seen[key]

    def generate(self, text: str, rng: random.Random, *, truncated: bool = False) -> str:
        found = EXAMPLE_RE.search(text)
        if found:
            example_id, difficulty = found.group(1), float(found.group(2))
        else:
            example_id = str(unit_hash("question", text.split("Question:")[-1]))
            difficulty = unit_hash("difficulty", example_id)
        margin, markers, useful, misleading = self._read(text)
        note = _NOTE_RE.search(text)
        lesson = bullet_quality(note.group(1)) if note else None
        if lesson is not None:  # a retry: the reflection's lesson on this very question helps
            margin += self.note_boost * max(0.0, lesson - 0.4)
            markers += f" note:{lesson:.3f}"
        margin += (2 * unit_hash(markers, example_id) - 1) * self.noise
        margin -= difficulty
        used = useful[:4]
        if misleading and rng.random() < 0.3:
            used.append(misleading[int(rng.random() * len(misleading))])
        if margin >= 0:
            verdict = "ANSWER: pass"
        else:
            verdict = f"ANSWER: fail (missed constraint {1 + int(unit_hash('c', example_id) * 3)})"
        body = json.dumps(
            {
                "reasoning": f"Worked through the question using {len(used)} playbook bullets.",
                "bullet_ids": used,
                "final_answer": verdict,
            }
        )
        if truncated or rng.random() < self.malformed_rate:
            return _cut(body, rng)
        return body

    # -- reflector ---------------------------------------------------------------------------------
    def reflect(self, text: str, rng: random.Random, *, truncated: bool = False) -> str:
        verdict = _ANSWER_LINE_RE.search(text)
        passed = bool(verdict and verdict.group(1).lower() == "pass")
        block = _USED_RE.search(text)
        tags = []
        for line in block.group(1).splitlines() if block else []:
            m = re.match(r"\[([^\]]+)\]", line)
            if not m:
                continue
            u = bullet_quality(line)
            if u is None or 0.4 <= u < 0.5:
                tag = "neutral"
            elif u >= 0.5:
                tag = "helpful" if passed else "neutral"
            else:
                tag = "harmful"
            tags.append({"id": m.group(1), "tag": tag})
        mean = 0.5 if passed else 0.62
        u = min(0.98, max(0.02, rng.gauss(mean, 0.15)))
        body = json.dumps(
            {
                "diagnosis": "The answer was right." if passed else "A step was skipped.",
                "key_insight": _insight_text(u, self._insight_key(rng)),
                "bullet_tags": tags,
            }
        )
        if truncated or rng.random() < self.malformed_rate:
            return _cut(body, rng)
        return body

    def _insight_key(self, rng: random.Random) -> str:
        """Which lesson a reflection states: now and then one of a few common ones (so that
        concurrent curators sometimes ADD the same idea), else a fresh one."""
        if rng.random() < self.common_rate:
            return f"common:{int(rng.random() * 12)}"
        return f"{rng.random():.12f}"

    # -- curator -----------------------------------------------------------------------------------
    def curate(self, text: str, rng: random.Random, *, truncated: bool = False) -> str:
        book = _playbook(text)
        sections = list(book.sections) or ["OTHERS"]
        found = _MAX_OPS_RE.search(text)
        max_ops = int(found.group(1)) if found else 6
        ops: list[dict[str, Any]] = []
        for insight in _INSIGHT_RE.findall(text):
            u = bullet_quality(insight) or 0.5
            if rng.random() < (0.9 if u >= 0.5 else 0.4):
                section = sections[int(unit_hash("section", insight) * len(sections))]
                ops.append({"type": "ADD", "section": section, "content": insight.strip()})
        ops += self._edits(book, rng)
        if rng.random() < self.invalid_op_rate:
            ops.append({"type": "UPDATE", "id": "misc-99999", "content": "No such bullet."})
        body = json.dumps({"reasoning": "Edits from the reflections.", "operations": ops[:max_ops]})
        if truncated or rng.random() < self.malformed_rate:
            return _cut(body, rng)
        return body

    def _edits(self, book: Playbook, rng: random.Random) -> list[dict[str, Any]]:
        """DELETE, UPDATE and MERGE proposals from the bullets' markers and counters."""
        ops: list[dict[str, Any]] = []
        qualities = [(b, bullet_quality(b.text)) for _, b in book.bullets()]
        rated = [(b, u) for b, u in qualities if u is not None]
        for b, _u in rated:
            if b.harmful > b.helpful and rng.random() < 0.6:
                ops.append({"type": "DELETE", "id": b.id})
        middling = [(b, u) for b, u in rated if 0.4 <= u < 0.6]
        if middling and rng.random() < 0.25:
            b, u = middling[int(rng.random() * len(middling))]
            better = min(0.98, u + abs(rng.gauss(0.1, 0.05)))
            ops.append({"type": "UPDATE", "id": b.id, "content": _rephrase(b, better)})
        useful = sorted([(b, u) for b, u in rated if u >= 0.5], key=lambda p: p[1])
        if len(rated) > 10 and len(useful) >= 2 and rng.random() < 0.3:
            (b1, u1), (b2, u2) = useful[0], useful[1]
            merged = min(0.98, max(u1, u2) + 0.03)
            ops.append({"type": "MERGE", "ids": [b1.id, b2.id], "content": _rephrase(b1, merged)})
        return ops


def _rephrase(bullet: Bullet, u: float) -> str:
    core = QUALITY_RE.sub("", bullet.text).replace(" Double-check it.", "").strip()
    return f"{core} Double-check it. {quality_marker(u)}"


# -- review requests -------------------------------------------------------------------------------

_ITEM_HEADER_RE = re.compile(r"^## Stale item (\S+)\n(.*?)(?=^## |\Z)", re.MULTILINE | re.DOTALL)
_OP_LINE_RE = re.compile(r"^operation: (\{.*\})$", re.MULTILINE)


def respond_ace_review(prompt: str, rng: random.Random) -> str:
    """Answer a Reflective review of stale ACE operations (decisions + rebased operations)."""
    now = _playbook(prompt)
    decisions: list[dict[str, str]] = []
    rebased: list[dict[str, Any]] = []
    for item_id, body in _ITEM_HEADER_RE.findall(prompt):
        found = _OP_LINE_RE.search(body)
        if not found:
            decisions.append({"item": item_id, "decision": "discard", "rationale": "unreadable"})
            continue
        op = json.loads(found.group(1))
        decision, why, new = _review_one(op, body, now)
        decisions.append({"item": item_id, "decision": decision, "rationale": why})
        rebased += new
    return json.dumps(
        {"decisions": decisions, "patched": {"operations": rebased} if rebased else None}
    )


def _review_one(
    op: Mapping[str, Any], body: str, now: Playbook
) -> tuple[str, str, list[dict[str, Any]]]:
    kind = str(op.get("type", ""))
    u = bullet_quality(str(op.get("content", ""))) or 0.5
    targets = [str(op["id"])] if "id" in op else [str(i) for i in op.get("ids", [])]
    present = [t for t in targets if now.get(t) is not None]
    if kind == "ADD":
        return "discard", "the playbook already covers it", []
    if kind == "DELETE":
        current = now.get(targets[0]) if present else None
        if current is not None and (bullet_quality(current.text) or 0.5) < 0.4:
            return "accept", "the bullet still misleads", []
        return "discard", "the bullet is gone or was improved", []
    if kind == "UPDATE":
        if not present:
            if u >= 0.5:
                section = next(iter(now.sections), "OTHERS")
                add = {"type": "ADD", "section": section, "content": op["content"]}
                return "patch", "keep the idea as a new bullet", [add]
            return "discard", "its target is gone", []
        current_u = bullet_quality(now.get(present[0]).text) or 0.5  # type: ignore[union-attr]
        if u > current_u:
            return "patch", "rewrite the current bullet", [{**op, "id": present[0]}]
        return "discard", "the current bullet is already better", []
    if kind == "MERGE":
        if len(present) >= 2:
            return "patch", "merge what is left", [{**op, "ids": present}]
        if len(present) == 1:
            return (
                "patch",
                "update the one bullet left",
                [{"type": "UPDATE", "id": present[0], "content": op["content"]}],
            )
        return "discard", "nothing left to merge", []
    return "discard", "unknown operation", []


# -- wiring ----------------------------------------------------------------------------------------


def ace_content(**options: Any) -> AceContent:
    """The ACE content model (for ``simulated(content=...)`` or a SimWorkload)."""
    return AceContent(**options)


def ace_length(stage: str, rng: random.Random) -> int:
    return ACE_LENGTHS.get(stage, ACE_DEFAULT_LENGTH).sample(rng)


def ace_workload(**content_options: Any) -> SimWorkload:
    """ACE's workload for the serving simulator (``AceWorkflow.sim_workload()``)."""
    return SimWorkload(
        name="ace",
        content=ace_content(**content_options),
        lengths=dict(ACE_LENGTHS),
        default_length=ACE_DEFAULT_LENGTH,
    )


def ace_simulated(
    profile: Any = "vllm-h100-qwen3-8b",
    *,
    seed: int = 0,
    speed: float = 1.0,
    **content_options: Any,
) -> SimulatedLLM:
    """A simulated endpoint that answers ACE's requests (``backend="sim"`` in an ACE run is the
    same with the default content options)."""
    return SimulatedLLM(profile, seed=seed, speed=speed, workload=ace_workload(**content_options))


def ace_sim_task(n_train: int = 200, n_val: int = 300, seed: int = 0) -> SimulatedTask:
    """The simulated task ACE runs on in benchmarks: hidden difficulties, pass/fail answers.

    300 validation examples at ``eval_concurrency=20`` make a sweep of about two minutes on the
    vLLM profile, as in the paper's ACE step."""
    return SimulatedTask(n_train=n_train, n_val=n_val, seed=seed)
