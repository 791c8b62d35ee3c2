"""What the serving simulator answers to Combee's reduce calls (a workload model, no LLM).

Combee's map calls are ordinary reflections (stage ``propose``), which the simulator's GEPA
content model already answers.  Its reduce calls (stage ``reduce``) show the current text and k
partial proposals, each in its own fenced block with its latent quality marker; the answer
this module gives is one fenced block whose

- latent quality is the mean of the partials' qualities plus a small synthesis step,
  ``N(headroom * gain, headroom * spread + 0.005)`` with ``headroom = 1 - mean`` -- an assumption:
  combining complementary partial updates helps a little on average and never collapses to the
  best one (a max would flatter Combee by construction);
- rules are the union of the partials' rules (``- ...`` lines), the newest kept up to the
  content model's cap, so the prompt does not grow without bound;
- about ``malformed_rate`` of answers (and every truncated one) lack the closing fence, like
  the simulator's reflections.

GEPA's simulator workload (:mod:`.sim`) answers ``reduce`` with :func:`reduce_answer` and draws
its lengths like a reflection's; :class:`CombeeContent` wraps any other content model (tests use
it to break map or reduce answers on purpose).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flashevolve.backends.sim.workload import QUALITY_RE, ContentModel, joined_text, quality_marker
from flashevolve.workflows.gepa.combee import REDUCE_STAGE
from flashevolve.workflows.gepa.reflection import FENCE

_BLOCK = re.compile(r"```\n(.*?)\n```", re.DOTALL)
_DEFAULT_HEAD = "Answer the request and follow every stated constraint."


@dataclass
class CombeeContent:
    """A content model that answers Combee's ``reduce`` calls and defers everything else."""

    base: ContentModel = field(default_factory=lambda: _gepa_content())
    gain: float = 0.02
    spread: float = 0.04
    malformed_rate: float = 0.02
    max_rules: int = 8

    def respond(
        self,
        messages: Sequence[Mapping[str, object]],
        stage: str,
        rng: random.Random,
        *,
        truncated: bool = False,
    ) -> str:
        if stage != REDUCE_STAGE:
            return self.base.respond(messages, stage, rng, truncated=truncated)
        return self.reduce(joined_text(messages), rng, truncated=truncated)

    def reduce(self, text: str, rng: random.Random, *, truncated: bool = False) -> str:
        return reduce_answer(
            text,
            rng,
            truncated=truncated,
            gain=self.gain,
            spread=self.spread,
            malformed_rate=self.malformed_rate,
            max_rules=self.max_rules,
        )


def reduce_answer(
    text: str,
    rng: random.Random,
    *,
    truncated: bool = False,
    gain: float = 0.02,
    spread: float = 0.04,
    malformed_rate: float = 0.02,
    max_rules: int = 8,
) -> str:
    """The simulated answer to one reduce call (see the module's docstring)."""
    blocks = _BLOCK.findall(text)
    partials = blocks[1:] if len(blocks) > 1 else blocks  # the first block is the current text
    qualities = [float(m) for b in partials for m in QUALITY_RE.findall(b)[:1]] or [0.5]
    mean = sum(qualities) / len(qualities)
    headroom = 1.0 - mean
    step = rng.gauss(headroom * gain, headroom * spread + 0.005)
    body = _merged_text(partials, min(0.99, max(0.01, mean + step)), max_rules)
    if truncated or rng.random() < malformed_rate:
        return f"Combining the proposals.\n{FENCE}\n{body}\n"
    return f"Here is the combined instruction.\n\n{FENCE}\n{body}\n{FENCE}\n"


def _merged_text(partials: Sequence[str], quality: float, max_rules: int) -> str:
    head, rules = None, []
    for block in partials:
        lines = QUALITY_RE.sub("", block).strip().splitlines()
        if lines and head is None:
            head = lines[0]
        rules += [ln for ln in lines[1:] if ln.startswith("- ") and ln not in rules]
    return "\n".join([head or _DEFAULT_HEAD, *rules[-max_rules:], quality_marker(quality)])


def _gepa_content() -> ContentModel:
    from flashevolve.workflows.gepa.sim import WorkloadContent

    return WorkloadContent()
