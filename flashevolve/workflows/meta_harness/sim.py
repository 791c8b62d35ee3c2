"""The Meta-Harness workload for the serving simulator: what its requests look like.

One :class:`~flashevolve.backends.sim.workload.SimWorkload` named ``"meta-harness"``:

- **propose** (the proposer writing a harness): long outputs -- thinking plus a whole program.
  Lengths are calibrated so that one proposal takes about the paper's 47 s on the fitted vLLM
  profile (docs/meta-harness.md, "Calibration").  The answer is real code: the parent harness
  (the first fenced block of the prompt) with its latent markers rewritten --
  ``SIM_MARKERS = "[[sim-quality=q]] [[sim-calls=k]]"`` plus a one-line note of the change -- so it still
  implements the task's interface and would run in the real sandbox.  The new quality follows
  GEPA's reflection step (``q + delta``, ``delta ~ N((1-q)(base + gain_fail f), spread (1-q) +
  0.01)``, f the fraction of failed examples shown); ``k`` is the model calls per example of the
  mechanism named in the note.  About 3% of answers are truncated (no closing fence) and 7%
  are broken code (a syntax error the import check rejects).
- **evaluate** (the harness's model calls, made by the simulated runner): the generic evaluation
  answer (pass when quality + noise >= the example's difficulty).
- **patch** (Reflective staleness): GEPA's decisions (:func:`~flashevolve.workflows.gepa.sim.
  respond_patch`), with the repaired harness written as code.

Everything the simulator knows about Meta-Harness sits here and in :mod:`.sim_runner`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flashevolve.backends.sim.lengths import LengthDist
from flashevolve.backends.sim.workload import (
    ANSWER_RE,
    FENCE,
    QUALITY_RE,
    SimWorkload,
    evaluation_answer,
    joined_text,
    quality_marker,
    register_workload,
)

#: Latent quality of a harness without a marker (the seed): the simulated runner and the
#: simulated proposer agree on it.
SEED_QUALITY = 0.30
CALLS_RE = re.compile(r"\[\[sim-calls=(\d+)\]\]")
#: the line that carries the markers: an assignment, not a comment -- a line starting with "#"
#: would read as a markdown header to the reviewer's simulated answer (respond_patch)
MARKER_LINE = re.compile(r"^SIM_MARKERS = .*$\n?", re.M)

#: The proposer's output: calibrated to ~47 s per proposal on vllm-h100-qwen3-8b (one request,
#: a ~10k-token history prompt); Qwen3-8B thinks at length before it writes the program.
PROPOSE_LENGTHS = LengthDist(mean=6000.0, sigma=0.35, cap=16000, floor=400)
#: One model call of a harness on one example (a classification with a short reasoning).
EVALUATE_LENGTHS = LengthDist(mean=190.0, sigma=0.7, cap=4000, floor=4)
PATCH_LENGTHS = LengthDist(mean=3000.0, sigma=0.4, cap=12000, floor=200)

STAGE_LENGTHS: dict[str, LengthDist] = {
    "propose": PROPOSE_LENGTHS,
    "evaluate": EVALUATE_LENGTHS,
    "patch": PATCH_LENGTHS,
}

#: (note on the change, model calls per example, hypothesis) of the mechanisms the simulated
#: proposer "tries"; the calls shape the evaluation's load.
MECHANISMS: tuple[tuple[str, int, str], ...] = (
    (
        "show the 8 most similar training examples as demonstrations",
        1,
        "similar labelled examples disambiguate confusable intents",
    ),
    (
        "write one description per intent from the memory in setup",
        1,
        "explicit intent descriptions teach the house conventions",
    ),
    (
        "ask three times with different demonstrations and vote",
        3,
        "voting over varied demonstrations removes unstable answers",
    ),
    (
        "pick the intent family first, then the intent within it",
        2,
        "a two-step choice separates confusable pairs",
    ),
    (
        "contrast the two closest intents with their examples",
        2,
        "showing the runner-up intent's examples fixes near misses",
    ),
    (
        "answer from the nearest neighbour when it is unambiguous",
        1,
        "word overlap alone settles easy requests, the model the rest",
    ),
)


@dataclass
class HarnessContent:
    """The Meta-Harness content model (see the module docstring)."""

    noise: float = 0.06
    partial_band: float = 0.0  # accuracy: no partial credit
    malformed_rate: float = 0.03
    broken_rate: float = 0.07
    gain_base: float = 0.0
    gain_fail: float = 0.05
    spread: float = 0.06

    def respond(
        self,
        messages: Sequence[Mapping[str, object]],
        stage: str,
        rng: random.Random,
        *,
        truncated: bool = False,
    ) -> str:
        text = joined_text(messages)
        if stage == "propose":
            return self.propose(text, rng, truncated=truncated)
        if stage == "patch":
            return self.patch(text, rng)
        return evaluation_answer(
            text, noise=self.noise, partial_band=self.partial_band, truncated=truncated
        )

    def propose(self, text: str, rng: random.Random, *, truncated: bool = False) -> str:
        parent = first_code_block(text) or ""
        q = harness_quality(parent)
        answers = [a.lower() for a in ANSWER_RE.findall(text)]
        fail = sum(a != "pass" for a in answers) / len(answers) if answers else 0.5
        headroom = 1.0 - q
        delta = rng.gauss(
            headroom * (self.gain_base + self.gain_fail * fail), self.spread * headroom + 0.01
        )
        note, calls, hypothesis = MECHANISMS[int(rng.random() * len(MECHANISMS))]
        code = rewrite_markers(parent, min(0.99, max(0.01, q + delta)), calls, note)
        if rng.random() < self.broken_rate:
            code += "\ndef _unfinished(:\n    pass\n"  # a syntax error: the import check fails
        head = f"HYPOTHESIS: {hypothesis}.\n\n"
        if truncated or rng.random() < self.malformed_rate:
            return f"{head}{FENCE}python\n{code}"  # cut off before the closing fence
        return f"{head}{FENCE}python\n{code}{FENCE}\n"

    def patch(self, text: str, rng: random.Random) -> str:
        from flashevolve.workflows.gepa.sim import respond_patch

        answer = json.loads(respond_patch(text, rng))
        patched = answer.get("patched")
        if patched:
            name, body = next(iter(patched.items()))
            found = QUALITY_RE.search(body)
            q = float(found.group(1)) if found else SEED_QUALITY
            base = first_code_block(text) or ""
            note = "merge the stale proposals' mechanisms into the current best"
            answer["patched"] = {_file_name(name): rewrite_markers(base, q, 2, note)}
        return json.dumps(answer, indent=1)


def _file_name(component: str) -> str:
    return component if component.endswith(".py") else "harness.py"


def harness_quality(code: str) -> float:
    found = QUALITY_RE.search(code or "")
    return float(found.group(1)) if found else SEED_QUALITY


def harness_calls(code: str) -> int:
    found = CALLS_RE.search(code or "")
    return max(1, min(8, int(found.group(1)))) if found else 1


def rewrite_markers(code: str, quality: float, calls: int, note: str) -> str:
    """``code`` with its simulator markers replaced (the rest of the program unchanged)."""
    body = MARKER_LINE.sub("", code or "").lstrip("\n")
    header = f'SIM_MARKERS = "{quality_marker(quality)} [[sim-calls={calls}]]"  # change: {note}\n'
    return header + body + ("" if body.endswith("\n") else "\n")


def first_code_block(text: str) -> str | None:
    """The text of the first closed fenced block (language tag dropped), if any."""
    start = text.find(FENCE)
    if start < 0:
        return None
    end = text.find(FENCE, start + 3)
    if end < 0:
        return None
    block = text[start + 3 : end]
    first_nl = block.find("\n")
    if first_nl >= 0 and (not block[:first_nl].strip() or block[:first_nl].strip().isidentifier()):
        block = block[first_nl + 1 :]
    return block


def infer_stage(messages: Sequence[Mapping[str, object]]) -> str:
    """The stage of a request that names none (a third-party client), from its text."""
    text = joined_text(messages).lower()
    if "stale" in text and "discard" in text and "patch" in text:
        return "patch"
    if "hypothesis" in text and "harness" in text:
        return "propose"
    return "evaluate"


META_HARNESS_WORKLOAD = register_workload(
    SimWorkload(
        name="meta-harness",
        content=HarnessContent(),
        lengths=STAGE_LENGTHS,
        default_length=EVALUATE_LENGTHS,
        guess_stage=infer_stage,
        padded_stages=frozenset(),
    )
)
