"""GEPA's merge (crossover) as gepa 0.1.4 does it, on flashevolve's pool.

What it does (``use_merge``; off by default, as in ``gepa.optimize``):

- **When**: an iteration right after one that admitted a reflective child may try a merge, if a
  merge is due; every admitted reflective child schedules one more (while fewer than
  ``max_merge_invocations`` merges have been accepted).  A tried merge uses up the iteration;
  a try that finds no pair falls through to reflection in the same iteration.
- **Pair and ancestor**: two pruned-front survivors, drawn at random, neither an ancestor of the
  other, with a common ancestor that scores no higher than either, that was not used with this
  pair before, and on which one of them kept a component the other changed; the ancestor is
  drawn with weight = its mean score (up to 10 x 10 draws).
- **Child**: per component, the text of the descendant that changed it where only one did; the
  better-scoring descendant's where both did (a coin toss on equal scores); the first's where
  neither did.  A child with the same per-component sources as an earlier merge of the pair is
  not tried again.
- **Screen**: 5 validation ids stratified by which parent wins on them (2 where the first wins,
  2 where the second does, 1 tie, then any); the child passes when its score sum there is at
  least the better parent's sum; then it is validated in full and admitted.

The draws follow gepa's order on one RNG (``ctx.rng("merge")``; the shared RNG with
``rng="shared"``), including the walk order of the Python sets of candidate indices gepa
iterates.  Deliberate differences (docs/gepa.md): components are visited in the artifact's order
(gepa walks a set of names, whose order changes from process to process); an ancestor draw whose
weights are all zero is uniform (gepa raises); a merge that reproduces a pool candidate is not
evaluated (the pool holds each text once).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flashevolve.pool import ArtifactPool

#: gepa's defaults: attempts per search, validation ids per screen, shared ids required
ATTEMPTS = 10
SUBSAMPLE = 5
OVERLAP_FLOOR = 5


@dataclass(slots=True)
class MergeLog:
    """What gepa remembers about merges: (first, second, ancestor) triplets tried, and
    (first, second, per-component sources) of children already made."""

    triplets: list[tuple[int, int, int]] = field(default_factory=list)
    descriptions: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MergePlan:
    first: int  # pool indices, first < second
    second: int
    ancestor: int
    components: dict[str, str]
    sources: dict[str, int]  # component -> pool index of the candidate its text comes from


class PoolView:
    """The pool as gepa's merge sees it: per pool index the components, parents and score."""

    def __init__(self, pool: ArtifactPool) -> None:
        records = pool.records
        index_of = {r.id: r.index for r in records}
        self.components = [dict(r.artifact.components) for r in records]
        self.parents = [[index_of[p] for p in r.parents if p in index_of] for r in records]
        self.scores = [r.mean_score if r.scored else float("-inf") for r in records]


def ancestors(node: int, parents: Sequence[Sequence[int]]) -> set[int]:
    """Every ancestor of ``node``, added to the set in gepa's depth-first order."""
    found: set[int] = set()
    stack = [iter(parents[node])]
    while stack:
        for parent in stack[-1]:
            if parent not in found:
                found.add(parent)
                stack.append(iter(parents[parent]))
                break
        else:
            stack.pop()
    return found


def _crossable(view: PoolView, ancestor: int, i: int, j: int) -> bool:
    """Does one descendant keep the ancestor's text of some component that the other changed?"""
    anc, a, b = view.components[ancestor], view.components[i], view.components[j]
    if set(anc) != set(a) or set(anc) != set(b):
        return False
    return any((anc[n] == a[n] or anc[n] == b[n]) and a[n] != b[n] for n in anc)


def _weighted_pick(rng: random.Random, population: list[int], weights: list[float]) -> int:
    total = sum(weights)
    if total > 0 and math.isfinite(total):
        return rng.choices(population, weights=weights, k=1)[0]
    return rng.choices(population, k=1)[0]  # gepa raises on all-zero weights


def pick_triplet(
    rng: random.Random,
    view: PoolView,
    candidates: Sequence[int],
    log: MergeLog,
    attempts: int = ATTEMPTS,
) -> tuple[int, int, int] | None:
    """gepa's search for (first, second, ancestor): ``attempts`` random pairs at most."""
    scores = view.scores
    for _ in range(attempts):
        if len(candidates) < 2:
            return None
        i, j = rng.sample(list(candidates), 2)
        if i == j:
            continue
        if j < i:
            i, j = j, i
        # gepa hands the ancestor sets around as lists and rebuilds sets from them: the walk
        # order of the sets below (and so of the draw) depends on exactly these steps
        of_i, of_j = list(ancestors(i, view.parents)), list(ancestors(j, view.parents))
        if j in of_i or i in of_j:
            continue
        usable = [
            a
            for a in set(of_i) & set(of_j)
            if (i, j, a) not in log.triplets
            and not (scores[a] > scores[i] or scores[a] > scores[j])
            and _crossable(view, a, i, j)
        ]
        if usable:
            return i, j, _weighted_pick(rng, usable, [scores[a] for a in usable])
    return None


def cross(
    rng: random.Random, view: PoolView, ancestor: int, i: int, j: int
) -> tuple[dict[str, str], dict[str, int]]:
    """The merged components and, per component, the index it was taken from."""
    anc, a, b = view.components[ancestor], view.components[i], view.components[j]
    scores = view.scores
    components: dict[str, str] = {}
    sources: dict[str, int] = {}
    for name in anc:
        if (anc[name] == a[name] or anc[name] == b[name]) and a[name] != b[name]:
            source = j if anc[name] == a[name] else i  # the one that changed it
        elif anc[name] != a[name] and anc[name] != b[name]:  # both changed it
            if scores[i] != scores[j]:
                source = i if scores[i] > scores[j] else j
            else:
                source = rng.choice([i, j])
        else:  # neither changed it
            source = i
        components[name] = view.components[source][name]
        sources[name] = source
    return components, sources


def plan_merge(
    rng: random.Random,
    view: PoolView,
    candidates: Sequence[int],
    log: MergeLog,
    overlap_ok: Callable[[int, int], bool],
    attempts: int = ATTEMPTS,
) -> MergePlan | None:
    """gepa's ``sample_and_attempt_merge_programs_by_common_predictors``: a new merge, or None.

    Records the child's description in ``log`` (the caller records the triplet)."""
    if len(candidates) < 2 or len(view.components) < 3:
        return None
    for _ in range(attempts):
        found = pick_triplet(rng, view, candidates, log, attempts)
        if found is None:
            continue
        i, j, ancestor = found
        if (i, j, ancestor) in log.triplets:
            continue
        components, sources = cross(rng, view, ancestor, i, j)
        description = (i, j, tuple(sources.values()))
        if description in log.descriptions or not overlap_ok(i, j):
            continue
        log.descriptions.append(description)
        return MergePlan(i, j, ancestor, components, sources)
    return None


def merge_subsample(
    rng: random.Random,
    scores1: Mapping[str, float],
    scores2: Mapping[str, float],
    position: Mapping[str, int],
    size: int = SUBSAMPLE,
) -> list[str]:
    """gepa's stratified screen: ids where the first parent wins, then the second, then ties
    (up to ceil(size/3) each), topped up from the rest; may repeat ids only when fewer than
    ``size`` are shared.  gepa's validation ids are the positions in the validation list
    (``position``); its order of walking them comes from a set of those ints."""
    ids = {position[v]: v for v in (*scores1, *scores2)}
    common = list({position[v] for v in scores1} & {position[v] for v in scores2})
    first = {position[v]: s for v, s in scores1.items()}
    second = {position[v]: s for v, s in scores2.items()}
    wins1 = [p for p in common if first[p] > second[p]]
    wins2 = [p for p in common if second[p] > first[p]]
    ties = [p for p in common if p not in wins1 and p not in wins2]
    per_bucket = max(1, math.ceil(size / 3))
    chosen: list[int] = []
    for bucket in (wins1, wins2, ties):
        if len(chosen) >= size:
            break
        free = [p for p in bucket if p not in chosen]
        take = min(len(free), per_bucket, size - len(chosen))
        if take > 0:
            chosen += rng.sample(free, k=take)
    missing = size - len(chosen)
    if missing > 0:
        unused = [p for p in common if p not in chosen]
        if len(unused) >= missing:
            chosen += rng.sample(unused, k=missing)
        elif common:
            chosen += rng.choices(common, k=missing)
    return [ids[p] for p in chosen[:size]]


@dataclass(slots=True)
class MergeSchedule:
    """gepa's merge bookkeeping, carried over to a pipeline with many jobs in flight.

    ``due`` is reserved when a merge job starts and given back if the child fails its screen
    (gepa: a rejected merge does not use up a due merge); with one job at a time that is
    exactly gepa's counting, and concurrent merges can never exceed what is due.
    """

    max_invocations: int = 5
    overlap_floor: int = OVERLAP_FLOOR
    due: int = 0
    accepted: int = 0  # gepa's total_merges_tested: merges that passed their screen
    found_new: bool = False  # gepa's last_iter_found_new_program
    log: MergeLog = field(default_factory=MergeLog)

    def reflective_admitted(self) -> None:
        self.found_new = True
        if self.accepted < self.max_invocations:
            self.due += 1

    def take_turn(self) -> bool:
        """At the start of an iteration: is a merge to be tried?  (Clears the flag either way.)"""
        ready = self.due > 0 and self.found_new
        self.found_new = False
        return ready

    def screened(self, passed: bool) -> None:
        if passed:
            self.accepted += 1
        else:
            self.due += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "due": self.due,
            "accepted": self.accepted,
            "found_new": self.found_new,
            "triplets": [list(t) for t in self.log.triplets],
            "descriptions": [[i, j, list(d)] for i, j, d in self.log.descriptions],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.due = int(state.get("due", 0))
        self.accepted = int(state.get("accepted", 0))
        self.found_new = bool(state.get("found_new", False))
        self.log = MergeLog(
            [(int(a), int(b), int(c)) for a, b, c in state.get("triplets", [])],
            [
                (int(a), int(b), tuple(int(x) for x in d))
                for a, b, d in state.get("descriptions", [])
            ],
        )
