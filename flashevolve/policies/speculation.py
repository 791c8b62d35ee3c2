"""Speculative stage completion: release a stage's output once a fraction ``alpha`` of its
requests finished, and keep the long tail running (or cancel it) in the background.

- **rollout** (``rollout_alpha``): the propose stage gets the parent's minibatch results as soon as
  ``ceil(alpha * n)`` of them landed; the reflection and the gate then use exactly those examples.
  Late results are still awaited in the background and recorded (``rollout_finished`` with
  ``data.late = true``) -- counted, not lost.
- **evaluate** (``evaluate_alpha``, the validate stage): the validation set is scored prefix
  first.  *The bar* a child must clear to stay in the pool is, by default, its parent's mean
  validation score (``bar="parent"``; also ``"best"`` = the pool's best mean, a number, or
  ``None`` = no bar, i.e. GEPA's admit-everything rule).  Three outcomes:

  * exact early reject -- checked after every landed result: if even perfect scores on every
    example still running cannot lift the mean to the bar, the remaining requests are cancelled
    (the backend frees them) and ``early_rejected`` is logged;
  * speculative admission -- when the prefix's mean clears the bar, the child enters the pool
    marked speculative (``speculative_admitted``), the validate worker is released, and the tail
    finishes in the background; then ``speculation_confirmed`` + ``admitted`` (metrics count the
    admission once, at confirmation) or ``speculation_rolled_back`` (the candidate is tombstoned,
    the pool version moves, and work derived from it is dropped or seen as stale);
  * otherwise the worker scores the rest itself and admits the child iff its full mean clears
    the bar.

  With no ``Speculation`` object the GEPA workflow keeps GEPA's rule (every gate-passed child is
  admitted).  ``Speculation(evaluate_alpha=1.0)`` keeps the bar and the exact early reject only.
- **reordering** (``reorder=True``): discriminative validation examples go first -- those on which
  the live candidates' scores disagree most (population standard deviation), harder ones first
  on ties; an example the evaluated children passed ``window`` times in a row (default 3)
  rotates to the back until it is failed again.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flashevolve.pool import TOMBSTONED, ArtifactPool
from flashevolve.tasks.base import Example

if TYPE_CHECKING:
    from flashevolve.runtime.context import StageContext


def prefix_size(n: int, alpha: float) -> int:
    """``ceil(alpha * n)``, at least 1 and at most ``n`` (a tiny epsilon absorbs float noise)."""
    return max(1, min(n, math.ceil(alpha * n - 1e-9)))


@dataclass
class Speculation:
    """Settings and state of speculative stage completion (pass as ``Evolver(speculation=...)``).

    ``rollout_alpha``/``evaluate_alpha`` in (0, 1]: the fraction of a stage's requests that
    releases its output.  ``max_tails`` bounds validation tails running in the background (when
    reached, a worker finishes its own tail), so speculation cannot flood the backend.
    """

    rollout_alpha: float = 1.0
    evaluate_alpha: float = 1.0
    admit_speculatively: bool = True
    early_reject: bool = True
    reorder: bool = True
    window: int = 3
    bar: str | float | None = "parent"
    max_tails: int = 16
    perfect_score: float = 1.0
    streak: dict[str, int] = field(default_factory=dict, repr=False)
    tails: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)
    counters: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("rollout_alpha", "evaluate_alpha"):
            a = getattr(self, name)
            if not 0.0 < a <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {a}")
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if not (
            self.bar is None or self.bar in ("parent", "best") or isinstance(self.bar, int | float)
        ):
            raise ValueError(f"bar must be 'parent', 'best', a number or None, not {self.bar!r}")

    def snapshot(self) -> dict[str, Any]:
        """The reordering's pass streaks (what a resumed run needs to order alike)."""
        return {"streak": dict(self.streak)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.streak = {str(k): int(v) for k, v in dict(state.get("streak", {})).items()}

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    # -- the bar ------------------------------------------------------------------------------
    def bar_for(self, pool: ArtifactPool, parent_id: str | None) -> float | None:
        if self.bar is None:
            return None
        if isinstance(self.bar, int | float):
            return float(self.bar)
        if self.bar == "best":
            return pool.best().mean_score
        if parent_id is not None and parent_id in pool:
            return pool.get(parent_id).mean_score
        return None

    def prefix_bar(
        self,
        pool: ArtifactPool,
        parent_id: str | None,
        bar: float | None,
        prefix_ids: Sequence[str],
    ) -> float | None:
        """What the *prefix* mean must reach for a speculative admission.

        The prefix is deliberately the most discriminative (often the hardest) slice, so its mean
        is compared with the reference candidate's mean on the same examples, not with its mean
        over the whole set.  A numeric bar, or a reference not scored on every prefix example,
        falls back to the bar itself.
        """
        if bar is None or isinstance(self.bar, int | float):
            return bar
        ref_id = pool.best().id if self.bar == "best" else parent_id
        if ref_id is None or ref_id not in pool:
            return bar
        scores = pool.get(ref_id).val_scores
        if not prefix_ids or any(i not in scores for i in prefix_ids):
            return bar
        return sum(scores[i] for i in prefix_ids) / len(prefix_ids)

    def hopeless(self, landed_sum: float, pending: int, n: int, bar: float | None) -> bool:
        """Exact: even perfect scores on the ``pending`` examples leave the mean below the bar."""
        if bar is None or not self.early_reject:
            return False
        return (landed_sum + self.perfect_score * pending) / n < bar - 1e-12

    # -- reordering ---------------------------------------------------------------------------
    def rotated_out(self, example_id: str) -> bool:
        return self.streak.get(example_id, 0) >= self.window

    def order(self, examples: Sequence[Example], pool: ArtifactPool) -> list[Example]:
        """Discriminative examples first; examples passed ``window`` rounds in a row last."""
        if not self.reorder:
            return list(examples)
        live = pool.alive()
        keys = {}
        for pos, ex in enumerate(examples):
            scores = [r.val_scores[ex.id] for r in live if ex.id in r.val_scores]
            spread = statistics.pstdev(scores) if len(scores) >= 2 else 0.0
            mean = sum(scores) / len(scores) if scores else 0.0
            keys[ex.id] = (self.rotated_out(ex.id), -spread, mean, pos)
        return sorted(examples, key=lambda ex: keys[ex.id])

    def record_results(self, scores: Mapping[str, float]) -> None:
        """Update the pass streaks with the examples scored in one validation round."""
        for vid, s in scores.items():
            self.streak[vid] = self.streak.get(vid, 0) + 1 if s >= self.perfect_score else 0

    # -- background work ----------------------------------------------------------------------
    def spawn(
        self, ctx: StageContext, coro: Coroutine[Any, Any, Any], name: str
    ) -> asyncio.Task[Any]:
        """Background work owned by the run: the runtime cancels it at shutdown."""
        task = ctx.spawn(coro, name=name)
        self.tails.add(task)
        task.add_done_callback(self.tails.discard)
        return task

    def tails_full(self) -> bool:
        return len(self.tails) >= self.max_tails


def parent_rolled_back(ctx: StageContext, parent_id: str | None) -> bool:
    return (
        parent_id is not None
        and parent_id in ctx.pool
        and ctx.pool.get(parent_id).status == TOMBSTONED
    )
