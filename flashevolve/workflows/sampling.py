"""Minibatch sampling for reflective workflows (GEPA's epoch-shuffled minibatches)."""

from __future__ import annotations

import random
from collections import Counter


class EpochSampler:
    """GEPA's epoch-shuffled minibatches.

    At each epoch boundary all train indices are shuffled and padded up to a multiple of the batch
    size with the least-used indices; iteration ``i`` takes the slice ``[i*b, i*b + b)`` of that
    list (modulo its length), so an iteration that produced nothing still moves the window.
    """

    def __init__(self, n: int, batch_size: int, rng: random.Random) -> None:
        if n < 1:
            raise ValueError("the train split is empty")
        self.n, self.b, self.rng = n, max(1, batch_size), rng
        self.order: list[int] = []
        self.epoch = -1
        self.uses: Counter[int] = Counter()

    def batch(self, iteration: int) -> list[int]:
        start = iteration * self.b
        epoch = start // len(self.order) if self.order else 0
        if not self.order or epoch > self.epoch:
            self.epoch = epoch
            self._reshuffle()
        start %= len(self.order)
        return self.order[start : start + self.b]

    def to_state(self) -> dict[str, object]:
        """Where the sampler is (the RNG's own state is saved with the run's other streams)."""
        return {
            "order": list(self.order),
            "epoch": self.epoch,
            "uses": [[i, n] for i, n in sorted(self.uses.items())],
        }

    def load_state(self, state: dict[str, object]) -> None:
        order = [int(i) for i in state.get("order", [])]  # type: ignore[union-attr]
        if any(not 0 <= i < self.n for i in order):
            raise ValueError("the saved minibatch order does not fit this train split")
        self.order = order
        self.epoch = int(state.get("epoch", -1))  # type: ignore[arg-type]
        self.uses = Counter({int(i): int(n) for i, n in state.get("uses", [])})  # type: ignore[union-attr]

    def _reshuffle(self) -> None:
        order = list(range(self.n))
        self.rng.shuffle(order)
        for i in order:
            self.uses[i] += 1
        pad = (self.b - self.n % self.b) % self.b
        for _ in range(pad):
            least = min(order[: self.n], key=lambda i: (self.uses[i], i))
            order.append(least)
            self.uses[least] += 1
        self.order = order
