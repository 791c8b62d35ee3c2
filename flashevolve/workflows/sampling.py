"""Minibatch sampling for reflective workflows (GEPA's epoch-shuffled minibatches)."""

from __future__ import annotations

import random


class EpochSampler:
    """GEPA 0.1.4's epoch-shuffled minibatches.

    At each epoch boundary all train indices are shuffled with the RNG and, when the split is not
    a multiple of the batch size, padded with the least-used indices of *that* epoch's list --
    every index is used once, so the padding repeats the last shuffled ones, last first (gepa
    counts uses afresh each epoch and, among equally used ids, takes the one it saw last).
    Iteration ``i`` takes the slice ``[i*b, i*b + b)`` of that list (modulo its length), so an
    iteration that produced nothing still moves the window.
    """

    def __init__(self, n: int, batch_size: int, rng: random.Random) -> None:
        if n < 1:
            raise ValueError("the train split is empty")
        self.n, self.b, self.rng = n, max(1, batch_size), rng
        self.order: list[int] = []
        self.epoch = -1

    def batch(self, iteration: int) -> list[int]:
        start = iteration * self.b
        # gepa's first call is epoch 0 whatever the iteration (a resumed run included)
        epoch = start // len(self.order) if self.order and self.epoch >= 0 else 0
        if not self.order or epoch > self.epoch:
            self.epoch = epoch
            self._reshuffle()
        start %= len(self.order)
        return self.order[start : start + self.b]

    def to_state(self) -> dict[str, object]:
        """Where the sampler is (the RNG's own state is saved with the run's other streams)."""
        return {"order": list(self.order), "epoch": self.epoch}

    def load_state(self, state: dict[str, object]) -> None:
        saved_order, saved_epoch = state.get("order", []), state.get("epoch", -1)
        if not isinstance(saved_order, list) or not isinstance(saved_epoch, int):
            raise ValueError("the saved minibatch state needs a list 'order' and an int 'epoch'")
        order = [int(i) for i in saved_order]
        if any(not 0 <= i < self.n for i in order):
            raise ValueError("the saved minibatch order does not fit this train split")
        self.order = order
        self.epoch = saved_epoch

    def _reshuffle(self) -> None:
        order = list(range(self.n))
        self.rng.shuffle(order)
        uses = dict.fromkeys(order, 1)
        position = {i: p for p, i in enumerate(order)}
        for _ in range((self.b - self.n % self.b) % self.b):
            least = min(uses, key=lambda i: (uses[i], -position[i]))
            order.append(least)
            uses[least] += 1
        self.order = order
