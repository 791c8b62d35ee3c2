"""Output lengths and token counts for the *simulator* (no real tokenizer, no real model).

Output lengths are drawn from capped lognormal distributions (:class:`LengthDist`); which one a
request uses depends on its stage and is decided by the workload (:class:`SimWorkload`, e.g.
the GEPA table in :mod:`flashevolve.workflows.gepa.sim`).

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
