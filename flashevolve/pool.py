"""The artifact pool: one record per candidate, per-instance validation scores, two version
counters, and parent selection.

``pool_version`` moves on every admission (and tombstone); ``frontier_version`` moves only when the
Pareto front -- the set of candidates that are best on at least one validation instance --
changes.  Work items are stamped with both, and staleness can be measured against either.

Determinism note: nothing here iterates over a ``set`` of strings in a way that affects results
(string hashing is salted per process), so equal seeds give equal runs across processes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flashevolve.artifacts import Artifact

ACTIVE, SPECULATIVE, TOMBSTONED = "active", "speculative", "tombstoned"


@dataclass(slots=True)
class CandidateRecord:
    artifact: Artifact
    index: int
    val_scores: dict[str, float]
    admitted_at: float
    pool_version: int  # pool_version right after this admission
    status: str = ACTIVE
    patched_from: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.artifact.id

    @property
    def parents(self) -> tuple[str, ...]:
        return self.artifact.parents

    @property
    def mean_score(self) -> float:
        if not self.val_scores:
            return 0.0
        return sum(self.val_scores.values()) / len(self.val_scores)

    @property
    def scored(self) -> bool:
        """False for a candidate admitted before any validation (ACE admits every playbook
        update and validates some of them later)."""
        return bool(self.val_scores)

    @property
    def alive(self) -> bool:
        return self.status != TOMBSTONED


class ArtifactPool:
    """Candidates in admission order, with their validation scores and the Pareto front."""

    def __init__(self, val_ids: Sequence[str]) -> None:
        if not val_ids:
            raise ValueError("the pool needs at least one validation instance id")
        self.val_ids: list[str] = list(val_ids)
        self.records: list[CandidateRecord] = []
        self._by_id: dict[str, CandidateRecord] = {}
        self.pool_version = 0
        self.frontier_version = 0
        # Per validation instance: the top score and the indices of live candidates holding it.
        # Maintained incrementally on admission (the hot path); rebuilt on rare rollbacks.
        self._front_best: dict[str, float] = {}
        self._fronts: dict[str, list[int]] = {vid: [] for vid in self.val_ids}
        self._revision = 0  # bumps on any change that can alter selection
        self._tickets_cache: tuple[int, list[int]] | None = None

    # -- membership ----------------------------------------------------------------------------
    def __contains__(self, artifact_id: str) -> bool:
        return artifact_id in self._by_id

    def __len__(self) -> int:
        return len(self.records)

    def get(self, artifact_id: str) -> CandidateRecord:
        return self._by_id[artifact_id]

    def alive(self) -> list[CandidateRecord]:
        return [r for r in self.records if r.alive]

    def admit(
        self,
        artifact: Artifact,
        val_scores: Mapping[str, float],
        *,
        ts: float,
        speculative: bool = False,
        patched_from: Sequence[str] = (),
    ) -> CandidateRecord | None:
        """Add a candidate; returns ``None`` (and changes nothing) for a duplicate text.

        ``val_scores`` may be empty: the candidate is in the pool (it counts as an update and
        moves ``pool_version``) but on no front and never the best until :meth:`set_scores`.
        """
        if artifact.id in self._by_id:
            return None
        unknown = set(val_scores) - set(self.val_ids)
        if unknown:
            raise ValueError(f"scores for unknown validation ids: {sorted(unknown)[:5]}")
        self.pool_version += 1
        record = CandidateRecord(
            artifact=artifact,
            index=len(self.records),
            val_scores=dict(val_scores),
            admitted_at=ts,
            pool_version=self.pool_version,
            status=SPECULATIVE if speculative else ACTIVE,
            patched_from=tuple(patched_from),
        )
        self.records.append(record)
        self._by_id[artifact.id] = record
        self._revision += 1
        changed = False
        for vid, score in record.val_scores.items():
            best = self._front_best.get(vid)
            if best is None or score > best:
                self._front_best[vid] = score
                self._fronts[vid] = [record.index]
                changed = True
            elif score == best:
                self._fronts[vid].append(record.index)
                changed = True
        if changed:
            self.frontier_version += 1
        return record

    def confirm(self, artifact_id: str, val_scores: Mapping[str, float]) -> CandidateRecord:
        """A speculative candidate's full scores landed and it stays."""
        record = self.set_scores(artifact_id, val_scores)
        record.status = ACTIVE
        return record

    def set_scores(self, artifact_id: str, val_scores: Mapping[str, float]) -> CandidateRecord:
        """Give a candidate (new) validation scores; the fronts follow."""
        unknown = set(val_scores) - set(self.val_ids)
        if unknown:
            raise ValueError(f"scores for unknown validation ids: {sorted(unknown)[:5]}")
        record = self._by_id[artifact_id]
        record.val_scores = dict(val_scores)
        self._rebuild_fronts()
        return record

    def tombstone(self, artifact_id: str) -> CandidateRecord:
        """Roll back a candidate: it stays in the record (lineage) but leaves selection."""
        record = self._by_id[artifact_id]
        record.status = TOMBSTONED
        self.pool_version += 1
        self._rebuild_fronts()
        return record

    # -- views ---------------------------------------------------------------------------------
    def best(self, confirmed: bool = False) -> CandidateRecord:
        """Highest mean validation score among live candidates; ties go to the earliest.

        ``confirmed=True`` leaves out speculative candidates, whose score so far comes from a
        prefix of the validation set: what a run *reports* as its best must have a full score
        (selection and the staleness/speculation policies may use speculative ones).
        """
        live = [r for r in self.alive() if r.scored and (not confirmed or r.status == ACTIVE)]
        if not live:
            raise LookupError("the pool has no scored candidate: evaluate and admit the seed first")
        return max(live, key=lambda r: (r.mean_score, -r.index))

    def history_since(self, version: int) -> list[CandidateRecord]:
        """Candidates admitted after pool version ``version`` (what a stale item missed)."""
        return [r for r in self.records if r.pool_version > version]

    def instance_fronts(self) -> dict[str, list[int]]:
        """For every validation instance, the indices of live candidates with the top score.

        Ties are kept.  Instances nobody has been scored on yet have an empty front.
        """
        return {vid: list(members) for vid, members in self._fronts.items()}

    def pareto_tickets(self) -> list[int]:
        """GEPA's sampling list for Pareto selection (cached per pool state): every pruned-front
        survivor once per front it is on, in the order gepa lists them."""
        if self._tickets_cache is None or self._tickets_cache[0] != self._revision:
            self._tickets_cache = (self._revision, pareto_tickets(self._fronts, self._means()))
        return self._tickets_cache[1]

    def pareto_weights(self) -> dict[int, int]:
        """Candidate index -> number of pruned fronts it is on."""
        weights: dict[int, int] = {}
        for idx in self.pareto_tickets():
            weights[idx] = weights.get(idx, 0) + 1
        return weights

    def dominators(self) -> list[int]:
        """Indices of the pruned-front survivors in gepa's order (its merge draws from them)."""
        return dominator_order(self._fronts, self._means())

    def _means(self) -> dict[int, float]:
        return {r.index: r.mean_score for r in self.records if r.alive}

    def _rebuild_fronts(self) -> None:
        """Recompute the fronts from every live record (after a confirm or a rollback)."""
        self._revision += 1
        best: dict[str, float] = {}
        fronts: dict[str, list[int]] = {vid: [] for vid in self.val_ids}
        for r in self.records:
            if not r.alive:
                continue
            for vid, score in r.val_scores.items():
                top = best.get(vid)
                if top is None or score > top:
                    best[vid], fronts[vid] = score, [r.index]
                elif score == top:
                    fronts[vid].append(r.index)
        if fronts != self._fronts:
            self.frontier_version += 1
        self._front_best, self._fronts = best, fronts


# -- parent selection ----------------------------------------------------------------------------


def gepa_front_sets(fronts: Mapping[str, Sequence[int]]) -> dict[str, set[int]]:
    """The fronts as gepa 0.1.4 hands them to its selectors: Python sets of candidate indices.

    gepa builds each front by adding candidates in admission order and passes copies around;
    where it meets ties it walks those sets, and the walk order of a set of small ints is fixed
    by CPython's table layout (ints are not hash-salted), not by admission order.  Building the
    same sets the same way reproduces gepa's order exactly, in every process.  Empty fronts
    (nobody scored on that instance yet) are left out, as gepa never has them.
    """
    return {vid: set(set(members)) for vid, members in fronts.items() if members}


def dominated_candidates(
    fronts: Mapping[str, Sequence[int]], mean: Mapping[int, float]
) -> set[int]:
    """GEPA's pruning of the instance fronts: the candidates it drops.

    Candidates on some front are visited by ascending mean score; equal means keep gepa's order
    of first appearance across its fronts (:func:`gepa_front_sets`).  GEPA repeatedly drops the
    first one whose every front also holds another surviving candidate, restarting the scan after
    each drop.  Dropping only ever removes survivors, so a candidate that could not be dropped can
    never become droppable later: one ordered pass, keeping a count of survivors per front, gives
    exactly the same result in linear time.
    """
    sets = gepa_front_sets(fronts)
    alive_per_front = {vid: len(members) for vid, members in sets.items()}
    fronts_of: dict[int, list[str]] = {}  # insertion order = gepa's first appearance
    for vid, members in sets.items():
        for idx in members:
            fronts_of.setdefault(idx, []).append(vid)
    dropped: set[int] = set()
    for cand in sorted(fronts_of, key=lambda i: mean[i]):  # stable: ties keep first appearance
        if all(alive_per_front[vid] >= 2 for vid in fronts_of[cand]):
            dropped.add(cand)
            for vid in fronts_of[cand]:
                alive_per_front[vid] -= 1
    return dropped


def prune_dominated(
    fronts: Mapping[str, Sequence[int]], mean: Mapping[int, float]
) -> dict[str, list[int]]:
    """The fronts without GEPA's dominated candidates (:func:`dominated_candidates`)."""
    dropped = dominated_candidates(fronts, mean)
    return {vid: [i for i in members if i not in dropped] for vid, members in fronts.items()}


def _pruned_sets(fronts: Mapping[str, Sequence[int]], mean: Mapping[int, float]) -> list[set[int]]:
    """The pruned fronts as gepa rebuilds them (a new set per front, filled in walk order)."""
    dropped = dominated_candidates(fronts, mean)
    return [
        {i for i in members if i not in dropped} for members in gepa_front_sets(fronts).values()
    ]


def pareto_tickets(fronts: Mapping[str, Sequence[int]], mean: Mapping[int, float]) -> list[int]:
    """GEPA's sampling list: each survivor once per pruned front it is on, grouped by candidate
    in order of first appearance; ``rng.choice`` on it is gepa's Pareto parent draw."""
    counts: dict[int, int] = {}
    for members in _pruned_sets(fronts, mean):
        for idx in members:
            counts[idx] = counts.get(idx, 0) + 1
    return [idx for idx, n in counts.items() for _ in range(n)]


def dominator_order(fronts: Mapping[str, Sequence[int]], mean: Mapping[int, float]) -> list[int]:
    """The survivors of pruning in the order gepa's merge samples its pair from (the walk order
    of a set of all of them)."""
    survivors: list[int] = []
    for members in _pruned_sets(fronts, mean):
        survivors.extend(members)
    return list(set(survivors))


class ParentSelector(Protocol):
    name: str

    def select(self, pool: ArtifactPool, rng: random.Random) -> CandidateRecord: ...


class ParetoSelector:
    """GEPA's default: sample a pruned-front survivor with weight = number of fronts it is on."""

    name = "pareto"

    def select(self, pool: ArtifactPool, rng: random.Random) -> CandidateRecord:
        tickets = pool.pareto_tickets()
        if not tickets:
            return pool.best()
        return pool.records[rng.choice(tickets)]


class BestSelector:
    """Always the current best (ties to the earliest admitted)."""

    name = "best"

    def select(self, pool: ArtifactPool, rng: random.Random) -> CandidateRecord:
        return pool.best()


class EpsilonGreedySelector:
    """The best with probability 1 - epsilon, otherwise a uniformly random live candidate
    (one ``rng.random()`` and, when exploring, one index draw: gepa's sequence)."""

    name = "epsilon_greedy"

    def __init__(self, epsilon: float = 0.1) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        self.epsilon = epsilon

    def select(self, pool: ArtifactPool, rng: random.Random) -> CandidateRecord:
        if rng.random() < self.epsilon:
            alive = pool.alive()
            return alive[rng.randint(0, len(alive) - 1)]
        return pool.best()


SELECTORS: dict[str, Callable[[], ParentSelector]] = {
    "pareto": ParetoSelector,
    "best": BestSelector,
    "epsilon_greedy": EpsilonGreedySelector,
}


def make_selector(spec: str | ParentSelector) -> ParentSelector:
    if not isinstance(spec, str):
        return spec
    try:
        return SELECTORS[spec]()
    except KeyError:
        raise ValueError(
            f"unknown parent selector {spec!r}; choose one of {sorted(SELECTORS)}"
        ) from None
