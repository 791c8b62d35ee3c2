"""Output lengths and token counts for the *simulator* (no real tokenizer, no real model).

Output lengths are drawn per stage from capped lognormal distributions.  The evaluation stages
(rollout/gate/validate) follow the FlashEvolve paper's measurement for GEPA evaluate: mean ~700
output tokens, long tail out to 5-7k.  Reflection (propose) and patch outputs are longer on
average but less spread.

Prompt tokens are estimated as ``ceil(chars / 4)`` per message plus 4 tokens of chat-template
overhead per message -- the usual rule of thumb for English text with BPE tokenizers.  It is
deterministic and cheap; it is not exact for any real tokenizer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: Chat-template overhead per message, in tokens (role markers, separators).
MESSAGE_OVERHEAD_TOKENS = 4
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A lognormal with the given mean (before capping), spread ``sigma``, clipped to [floor, cap]."""

    mean: float
    sigma: float
    cap: int
    floor: int = 8

    def sample(self, rng: random.Random) -> int:
        mu = math.log(self.mean) - self.sigma**2 / 2  # so that E[X] = mean before the cap
        value = rng.lognormvariate(mu, self.sigma)
        return int(min(self.cap, max(self.floor, round(value))))


EVALUATE_LENGTHS = LengthDist(mean=700.0, sigma=1.0, cap=7000)
PROPOSE_LENGTHS = LengthDist(mean=1000.0, sigma=0.5, cap=4000, floor=64)
PATCH_LENGTHS = LengthDist(mean=800.0, sigma=0.5, cap=4000, floor=64)

#: Per-stage output-length model; any stage not listed uses the evaluation distribution.
STAGE_LENGTHS: dict[str, LengthDist] = {
    "rollout": EVALUATE_LENGTHS,
    "gate": EVALUATE_LENGTHS,
    "validate": EVALUATE_LENGTHS,
    "evaluate": EVALUATE_LENGTHS,
    "test": EVALUATE_LENGTHS,
    "propose": PROPOSE_LENGTHS,
    "reflect": PROPOSE_LENGTHS,
    "patch": PATCH_LENGTHS,
}


def output_length(
    stage: str, rng: random.Random, table: Mapping[str, LengthDist] | None = None
) -> int:
    table = STAGE_LENGTHS if table is None else table
    return table.get(stage, EVALUATE_LENGTHS).sample(rng)


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def count_prompt_tokens(messages: Iterable[Mapping[str, object]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content", "")
        if not isinstance(content, str):  # multi-part content: count the text parts
            content = (
                " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
                if isinstance(content, list)
                else str(content)
            )
        total += count_tokens(content) + MESSAGE_OVERHEAD_TOKENS
    return total
