"""The GEPA workload for the serving simulator: what GEPA's requests look like, and their answers.

One :class:`~flashevolve.backends.sim.workload.SimWorkload` named ``"gepa"`` (the simulator's
default), built from GEPA's stage names:

- **rollout / gate / validate** (and ``evaluate``/``test``): an evaluation answer
  (:func:`~flashevolve.backends.sim.workload.evaluation_answer`) padded with filler to its
  sampled length; lengths follow the FlashEvolve paper's measurement of GEPA evaluate (mean ~700
  output tokens, a tail out to 5-7k).
- **propose**: the reflection reads the parent's quality from the first fenced block of the
  prompt and the fraction f of failures from the ``ANSWER:`` lines of the records shown, and
  answers a fenced block whose quality is ``clip(q + delta)``,
  ``delta ~ N((1-q)(gain_base + gain_fail f), spread (1-q) + 0.01)``: larger when failures were
  shown, shrinking near 1, sometimes negative -- so the gate accepts some children and rejects
  others.  About 2% of reflections are malformed (no closing fence).
- **patch** (reflective staleness policy): :func:`respond_patch`, a small replaceable function
  with a documented JSON schema.

Everything GEPA-specific the simulator knows sits in this module, so that it can move next to
the GEPA workflow as one file.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flashevolve.backends.sim.lengths import LengthDist
from flashevolve.backends.sim.workload import (
    ANSWER_RE,
    DEFAULT_INSTRUCTION,
    FENCE,
    QUALITY_RE,
    UNKNOWN_QUALITY,
    SimWorkload,
    evaluation_answer,
    joined_text,
    quality_marker,
    register_workload,
)

#: GEPA's stages whose answers are evaluation outputs (padded to their length).
EVALUATION_STAGES = frozenset({"rollout", "gate", "validate", "evaluate", "test"})

EVALUATE_LENGTHS = LengthDist(mean=700.0, sigma=1.0, cap=7000)
#: Calibrated so that one reflection takes the paper's ~11 s median on the fitted vLLM profile
#: (Qwen3-8B thinks before it writes; docs/simulator.md, "Calibration").
PROPOSE_LENGTHS = LengthDist(mean=1700.0, sigma=0.5, cap=6000, floor=64)
PATCH_LENGTHS = LengthDist(mean=800.0, sigma=0.5, cap=4000, floor=64)

#: Output-length model per GEPA stage; any stage not listed uses the evaluation distribution.
STAGE_LENGTHS: dict[str, LengthDist] = {
    **dict.fromkeys(EVALUATION_STAGES, EVALUATE_LENGTHS),
    "propose": PROPOSE_LENGTHS,
    "reflect": PROPOSE_LENGTHS,
    "patch": PATCH_LENGTHS,
    "reduce": PROPOSE_LENGTHS,  # Combee's reduce calls write an instruction, like a reflection
}


def infer_stage(messages: Sequence[Mapping[str, object]]) -> str:
    """Guess the stage of a request that came without the X-Flashevolve-Stage header (a
    third-party client such as the real ``gepa`` package): from GEPA-shaped prompt text."""
    text = joined_text(messages).lower()
    if ("stale" in text or "decisions" in text) and "discard" in text and "patch" in text:
        return "patch"
    if FENCE in text and ("instruction" in text or "improve" in text):
        return "propose"
    return "rollout"


@dataclass
class WorkloadContent:
    """GEPA's content model: answers evaluation, reflection and patch requests."""

    noise: float = 0.06  # half-width of the deterministic pass/fail noise
    partial_band: float = 0.05  # this far below the difficulty still earns partial credit
    malformed_rate: float = 0.02
    max_rules: int = 8  # rules kept in an evolved instruction (keeps prompts from growing forever)
    # Reflection step: delta ~ N(headroom * (gain_base + gain_fail * fail_fraction),
    #                            headroom * spread + 0.01), headroom = 1 - q.
    gain_base: float = 0.01
    gain_fail: float = 0.08
    spread: float = 0.08
    patch_fn: PatchFn | None = field(default=None)

    def respond(
        self,
        messages: Sequence[Mapping[str, object]],
        stage: str,
        rng: random.Random,
        *,
        truncated: bool = False,
    ) -> str:
        text = joined_text(messages)
        if stage in ("propose", "reflect"):
            return self.reflect(text, rng, truncated=truncated)
        if stage == "patch":
            return (self.patch_fn or respond_patch)(text, rng)
        if stage == "reduce":
            from flashevolve.workflows.gepa.combee_sim import reduce_answer

            return reduce_answer(text, rng, truncated=truncated)
        return self.evaluate(text, truncated=truncated)

    def evaluate(self, text: str, *, truncated: bool = False) -> str:
        return evaluation_answer(
            text, noise=self.noise, partial_band=self.partial_band, truncated=truncated
        )

    def reflect(self, text: str, rng: random.Random, *, truncated: bool = False) -> str:
        current = _first_fenced(text)
        source = current if current is not None else text
        found = QUALITY_RE.search(source) or QUALITY_RE.search(text)
        q = float(found.group(1)) if found else UNKNOWN_QUALITY
        answers = [a.lower() for a in ANSWER_RE.findall(text)]
        shown = len(answers)
        failed = sum(
            1.0 if a in ("fail", "incomplete") else 0.5 if a == "partial" else 0.0 for a in answers
        )
        fail_frac = failed / shown if shown else 0.5
        headroom = 1.0 - q
        mean = headroom * (self.gain_base + self.gain_fail * fail_frac)
        spread = self.spread * headroom + 0.01
        new_q = min(0.99, max(0.01, q + rng.gauss(mean, spread)))
        body = self._child_text(current, new_q, rng)
        if truncated or rng.random() < self.malformed_rate:
            # A reflection cut off mid-block: the opening fence without the closing one.
            return f"Let me revise the instruction.\n{FENCE}\n{body}\n"
        return f"Here is the improved instruction.\n\n{FENCE}\n{body}\n{FENCE}\n"

    def _child_text(self, parent: str | None, new_q: float, rng: random.Random) -> str:
        base = parent if parent is not None else DEFAULT_INSTRUCTION
        base = QUALITY_RE.sub("", base).rstrip()
        lines = base.splitlines() or [DEFAULT_INSTRUCTION]
        head, rules = lines[0], [ln for ln in lines[1:] if ln.startswith("- ")]
        rule = _RULES[int(rng.random() * len(_RULES))].format(n=1 + int(rng.random() * 3))
        if rule not in rules:
            rules.append(rule)
        rules = rules[-self.max_rules :]
        return "\n".join([head, *rules, quality_marker(new_q)])


_RULES = (
    "- Re-read constraint {n} before writing the final answer.",
    "- State the final answer on its own line, in the requested format.",
    "- When constraint {n} conflicts with brevity, satisfy the constraint.",
    "- Check word and sentence counts against constraint {n}.",
    "- Keep the requested language and casing throughout.",
    "- List each constraint and verify it after drafting.",
    "- Do not add content the request did not ask for.",
)


def _first_fenced(text: str) -> str | None:
    """The text inside the first complete fenced block (language tag dropped), if any."""
    start = text.find(FENCE)
    if start < 0:
        return None
    end = text.find(FENCE, start + 3)
    if end < 0:
        return None
    block = text[start + 3 : end]
    first_nl = block.find("\n")
    if first_nl >= 0 and block[:first_nl].strip().isidentifier():
        block = block[first_nl + 1 :]  # a language tag such as ```text
    return block.strip("\n")


# -- patch requests (reflective staleness policy) -----------------------------------------------


class PatchFn(Protocol):
    def __call__(self, prompt: str, rng: random.Random) -> str: ...


_HEADER_RE = re.compile(r"^#{1,6}\s*(.*)$", re.MULTILINE)
_ITEM_RE = re.compile(r"\bitem\b[\s:=#]*([A-Za-z0-9_.:\-]+)", re.IGNORECASE)
_COMPONENT_RE = re.compile(r"\bcomponent\b[\s:=]*[\"'`]?([A-Za-z_][\w\-]*)", re.IGNORECASE)


def respond_patch(prompt: str, rng: random.Random) -> str:
    """Answer a reflective-staleness request with the first schema (see docs/simulator.md).

    Prompt convention: markdown headers split the prompt into sections; a header naming
    ``item <id>`` starts a stale item (its artifact text follows, with quality markers); a header
    containing "current" starts the current best artifact.  Decision per item, from qualities:
    accept if it beats the current best, patch if it is close, discard if it is far worse.
    """
    sections: list[tuple[str, str]] = []
    headers = list(_HEADER_RE.finditer(prompt))
    for i, h in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(prompt)
        sections.append((h.group(1), prompt[h.end() : end]))
    items: list[tuple[str, float]] = []
    current: list[float] = []
    for title, body in sections:
        qs = [float(q) for q in QUALITY_RE.findall(body)]
        item = _ITEM_RE.search(title)
        if item and qs:
            items.append((item.group(1), qs[0]))
        elif "current" in title.lower():
            current.extend(qs)
    all_q = [float(q) for q in QUALITY_RE.findall(prompt)]
    best = max(current) if current else (max(all_q) if all_q else UNKNOWN_QUALITY)
    comp = _COMPONENT_RE.search(prompt)
    component = comp.group(1) if comp else "instruction"
    decisions = []
    patch_qs = []
    for item_id, q in items:
        if q >= best + 0.01:
            decision, why = "accept", f"quality {q:.3f} beats the current best {best:.3f}"
        elif q >= best - 0.08:
            decision, why = "patch", f"quality {q:.3f} is close to {best:.3f}; merge its rules"
            patch_qs.append(q)
        else:
            decision, why = "discard", f"quality {q:.3f} is far below {best:.3f}"
        decisions.append({"item": item_id, "decision": decision, "rationale": why})
    patched = None
    if patch_qs:
        base = max(best, *patch_qs)
        new_q = min(0.99, max(0.01, base + (1 - base) * rng.gauss(0.03, 0.03)))
        text = (
            f"{DEFAULT_INSTRUCTION}\n- Merged rules from stale proposals.\n{quality_marker(new_q)}"
        )
        patched = {component: text}
    return json.dumps({"decisions": decisions, "patched": patched}, indent=1)


GEPA_WORKLOAD = register_workload(
    SimWorkload(
        name="gepa",
        content=WorkloadContent(),
        lengths=STAGE_LENGTHS,
        default_length=EVALUATE_LENGTHS,
        guess_stage=infer_stage,
        padded_stages=EVALUATION_STAGES,
    )
)
