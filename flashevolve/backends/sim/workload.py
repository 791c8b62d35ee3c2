"""The simulator's *workload model*: a stand-in task and the text a simulated server answers with.

This is not a language model and it does not solve anything.  It is a small deterministic model
of how GEPA-style evolution behaves, so the runtime, the policies and the views can be exercised
at scale without a GPU:

- Every example carries a hidden difficulty in its prompt (``[sim-example id=val-17
  difficulty=0.430]``) and every artifact component a latent quality
  (``[[sim-quality=0.300]]``).
- An evaluation request (rollout/gate/validate) passes when quality + noise >= difficulty.  The
  noise is a deterministic hash of (quality marker, example id), so the same artifact always gets
  the same score on the same example, but a tiny edit can flip borderline examples.
- A reflection request (propose) reads the parent's quality from the prompt and answers a fenced
  block whose new quality is ``clip(q + delta)``: delta is drawn from a seed derived from the
  request, is larger when the minibatch shown had failures, shrinks near 1 and is sometimes
  negative -- so the gate accepts some children and rejects others.  About 2% of reflections are
  malformed (no closing fence), so the rejection path runs too.
- A patch request (reflective staleness policy) is answered by :func:`respond_patch`, a small
  replaceable function with a documented JSON schema.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flashevolve.tasks.base import Example, MetricResult, PromptTask

QUALITY_RE = re.compile(r"\[\[sim-quality=([0-9]*\.?[0-9]+)\]\]")
EXAMPLE_RE = re.compile(r"\[sim-example id=(\S+?) difficulty=([0-9]*\.?[0-9]+)\]")
ANSWER_RE = re.compile(r"ANSWER:\s*(pass|partial|fail|incomplete)", re.IGNORECASE)
FENCE = "```"

#: Used when a prompt carries no quality marker (e.g. a third-party client's own prompt).
UNKNOWN_QUALITY = 0.5


def quality_marker(q: float) -> str:
    return f"[[sim-quality={q:.3f}]]"


def unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (stable across processes, unlike hash())."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def joined_text(messages: Sequence[Mapping[str, object]]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages)


def infer_stage(messages: Sequence[Mapping[str, object]]) -> str:
    """Guess the stage of a request that came without the X-Flashevolve-Stage header."""
    text = joined_text(messages).lower()
    if ("stale" in text or "decisions" in text) and "discard" in text and "patch" in text:
        return "patch"
    if FENCE in text and ("instruction" in text or "improve" in text):
        return "propose"
    return "rollout"


class ContentModel(Protocol):
    """Decides the text of a simulated answer (the latency model decides *when*)."""

    def respond(
        self,
        messages: Sequence[Mapping[str, object]],
        stage: str,
        rng: random.Random,
        *,
        truncated: bool = False,
    ) -> str: ...


@dataclass
class WorkloadContent:
    """The default content model: answers evaluation, reflection and patch requests."""

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
        return self.evaluate(text, truncated=truncated)

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(self, text: str, *, truncated: bool = False) -> str:
        if truncated:
            return "ANSWER: incomplete (output truncated at max_tokens)"
        qualities = [float(q) for q in QUALITY_RE.findall(text)]
        quality = sum(qualities) / len(qualities) if qualities else UNKNOWN_QUALITY
        marker = " ".join(QUALITY_RE.findall(text)) or "none"
        found = EXAMPLE_RE.search(text)
        if found:
            example_id, difficulty = found.group(1), float(found.group(2))
        else:  # an unknown prompt: derive a stable difficulty from its text
            example_id = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
            difficulty = unit_hash("difficulty", example_id)
        noise = (2 * unit_hash(marker, example_id) - 1) * self.noise
        margin = quality + noise - difficulty
        constraint = 1 + int(unit_hash("constraint", example_id) * 3)
        if margin >= 0:
            return "ANSWER: pass"
        if margin >= -self.partial_band:
            return f"ANSWER: partial (constraint {constraint} only partly met)"
        return f"ANSWER: fail (missed constraint {constraint})"

    # -- reflection -----------------------------------------------------------------------------

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
        base = parent if parent is not None else _DEFAULT_INSTRUCTION
        base = QUALITY_RE.sub("", base).rstrip()
        lines = base.splitlines() or [_DEFAULT_INSTRUCTION]
        head, rules = lines[0], [ln for ln in lines[1:] if ln.startswith("- ")]
        rule = _RULES[int(rng.random() * len(_RULES))].format(n=1 + int(rng.random() * 3))
        if rule not in rules:
            rules.append(rule)
        rules = rules[-self.max_rules :]
        return "\n".join([head, *rules, quality_marker(new_q)])


_DEFAULT_INSTRUCTION = "Answer the request and follow every stated constraint."
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
            f"{_DEFAULT_INSTRUCTION}\n- Merged rules from stale proposals.\n{quality_marker(new_q)}"
        )
        patched = {component: text}
    return json.dumps({"decisions": decisions, "patched": patched}, indent=1)


# -- the simulated task -------------------------------------------------------------------------


def _metric(example: Example, output: str) -> MetricResult:
    found = ANSWER_RE.search(output)
    verdict = found.group(1).lower() if found else ""
    detail = output[found.end() :].strip(" ()\n") if found else ""
    if verdict == "pass":
        return MetricResult(1.0, "Correct: the answer met every constraint.")
    if verdict == "partial":
        return MetricResult(
            0.5, f"Partly correct: {detail}. The instruction should say how to handle this case."
        )
    if verdict in ("fail", "incomplete"):
        return MetricResult(0.0, f"Wrong: {detail}. The instruction did not prevent this.")
    return MetricResult(0.0, "No 'ANSWER:' line found in the output.")


class SimulatedTask(PromptTask):
    """A stand-in task for the simulator (a workload model, not a benchmark).

    Difficulties are uniform in [0.05, 0.95], drawn from ``seed``; the seed artifact's latent
    quality is ``seed_quality``.  Scores: pass 1, partial 0.5, fail 0.
    """

    def __init__(
        self,
        n_train: int = 100,
        n_val: int = 50,
        n_test: int = 0,
        seed: int = 0,
        *,
        seed_quality: float = 0.30,
        max_tokens: int | None = 8192,
    ) -> None:
        rng = random.Random(f"sim-task:{seed}")

        def split(prefix: str, n: int) -> list[Example]:
            out = []
            for i in range(n):
                d = 0.05 + 0.9 * rng.random()
                ex_id = f"{prefix}-{i}"
                prompt = (
                    f"[sim-example id={ex_id} difficulty={d:.3f}]\n"
                    f"Request {ex_id}: write the reply this user asked for and satisfy "
                    f"constraints 1-3 stated in the request."
                )
                out.append(Example(ex_id, {"prompt": prompt}, meta={"difficulty": d}))
            return out

        seed_text = f"{_DEFAULT_INSTRUCTION}\n{quality_marker(seed_quality)}"
        super().__init__(
            "simulated",
            train=split("train", n_train),
            val=split("val", n_val),
            test=split("test", n_test),
            seed={"instruction": seed_text},
            metric=_metric,
            description=(
                "A simulated workload for the serving simulator: answers pass or fail "
                "depending on a hidden quality of the instruction and a hidden difficulty "
                "of each request. Improve the instruction so more requests pass."
            ),
            max_tokens=max_tokens,
            temperature=0.0,
        )
