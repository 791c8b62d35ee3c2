"""Pool counters and GEPA's Pareto parent selection, pinned on hand-computed cases."""

import random
from collections import Counter

import pytest

from flashevolve.artifacts import Artifact
from flashevolve.pool import (
    ArtifactPool,
    BestSelector,
    EpsilonGreedySelector,
    ParetoSelector,
    make_selector,
    prune_dominated,
)


def art(text: str, *parents: str) -> Artifact:
    return Artifact({"instruction": text}, parents=parents)


def pool_of(*rows: dict[str, float]) -> ArtifactPool:
    pool = ArtifactPool(["a", "b", "c"])
    for i, scores in enumerate(rows):
        pool.admit(art(f"candidate {i}"), scores, ts=float(i))
    return pool


def test_artifact_id_is_content_hash_and_immutable():
    a, b = art("same"), art("same", "p1")
    assert a.id == b.id and len(a.id) == 12
    with pytest.raises(TypeError):
        a.components["instruction"] = "changed"  # type: ignore[index]
    assert Artifact.from_dict(a.to_dict()) == a


def test_versions_move_on_admission_and_front_change_only():
    pool = ArtifactPool(["a", "b"])
    pool.admit(art("s"), {"a": 0.5, "b": 0.5}, ts=0)
    assert (pool.pool_version, pool.frontier_version) == (1, 1)
    # strictly worse everywhere: pool moves, front does not
    pool.admit(art("worse"), {"a": 0.1, "b": 0.1}, ts=1)
    assert (pool.pool_version, pool.frontier_version) == (2, 1)
    # ties on "a": joins that front -> the front changes
    pool.admit(art("tie"), {"a": 0.5, "b": 0.0}, ts=2)
    assert (pool.pool_version, pool.frontier_version) == (3, 2)
    # duplicates change nothing
    assert pool.admit(art("tie"), {"a": 1.0, "b": 1.0}, ts=3) is None
    assert pool.pool_version == 3


def test_instance_fronts_keep_ties():
    pool = pool_of({"a": 1, "b": 0, "c": 0}, {"a": 1, "b": 1, "c": 0}, {"a": 0, "b": 0, "c": 1})
    assert pool.instance_fronts() == {"a": [0, 1], "b": [1], "c": [2]}


def test_pruning_drops_candidates_covered_by_others():
    fronts = {"a": [0, 1], "b": [1], "c": [2]}
    mean = {0: 1 / 3, 1: 2 / 3, 2: 1 / 3}
    assert prune_dominated(fronts, mean) == {"a": [1], "b": [1], "c": [2]}


def test_pruning_with_identical_scores_keeps_one():
    # Both everywhere-tied: visiting by ascending mean (then index) drops the first.
    assert prune_dominated({"a": [0, 1], "b": [0, 1]}, {0: 1.0, 1: 1.0}) == {"a": [1], "b": [1]}


def test_pareto_sampling_is_proportional_to_front_membership():
    pool = pool_of({"a": 1, "b": 0, "c": 0}, {"a": 1, "b": 1, "c": 0}, {"a": 0, "b": 0, "c": 1})
    rng = random.Random(0)
    picks = Counter(ParetoSelector().select(pool, rng).index for _ in range(3000))
    assert set(picks) == {1, 2}  # candidate 0 is pruned
    assert picks[1] / picks[2] == pytest.approx(2.0, rel=0.15)


def test_best_and_epsilon_greedy():
    pool = pool_of({"a": 0.2, "b": 0.2, "c": 0.2}, {"a": 0.9, "b": 0.9, "c": 0.9})
    assert BestSelector().select(pool, random.Random(0)).index == 1
    always_random = EpsilonGreedySelector(epsilon=1.0)
    seen = {always_random.select(pool, random.Random(s)).index for s in range(20)}
    assert seen == {0, 1}
    assert make_selector("best").name == "best"
    with pytest.raises(ValueError, match="unknown parent selector"):
        make_selector("nope")


def test_tombstone_leaves_selection_and_history():
    pool = pool_of({"a": 0.2, "b": 0.2, "c": 0.2}, {"a": 0.9, "b": 0.9, "c": 0.9})
    top = pool.best().id
    pool.tombstone(top)
    assert pool.best().index == 0
    assert top in pool and pool.get(top).status == "tombstoned"
    assert [r.index for r in pool.history_since(1)] == [1]


def test_the_reported_best_is_a_confirmed_candidate():
    """A speculative candidate (prefix score so far) may be selected as a parent, but the best
    a run reports must have its full score; once confirmed it can be the best."""
    pool = pool_of({"a": 0.5, "b": 0.5, "c": 0.5})
    hopeful = art("only the prefix was scored")
    pool.admit(hopeful, {"a": 1.0}, ts=1.0, speculative=True)
    assert pool.best().id == hopeful.id
    assert pool.best(confirmed=True).index == 0
    pool.confirm(hopeful.id, {"a": 1.0, "b": 0.0, "c": 0.8})
    assert pool.best(confirmed=True).id == hopeful.id


def _prune_by_restarting(fronts, mean):
    """GEPA's pruning written the slow, literal way: restart the scan after every drop.  Equal
    means keep gepa's order of first appearance, walking each front as the set gepa holds."""
    seen = list(dict.fromkeys(i for m in fronts.values() for i in set(set(m))))
    order = sorted(seen, key=lambda i: mean[i])
    dropped = set()
    while True:
        for cand in order:
            if cand in dropped:
                continue
            others = [i for i in order if i not in dropped and i != cand]
            if all(any(o in others for o in m) for m in fronts.values() if cand in m):
                dropped.add(cand)
                break
        else:
            return {v: [i for i in m if i not in dropped] for v, m in fronts.items()}


def test_linear_pruning_equals_the_literal_restarting_scan():
    rng = random.Random(5)
    for _ in range(200):
        n, vals = rng.randint(1, 9), rng.randint(1, 6)
        scores = {i: {f"v{j}": rng.choice([0.0, 0.5, 1.0]) for j in range(vals)} for i in range(n)}
        fronts = {}
        for j in range(vals):
            top = max(scores[i][f"v{j}"] for i in range(n))
            fronts[f"v{j}"] = [i for i in range(n) if scores[i][f"v{j}"] == top]
        mean = {i: sum(s.values()) / vals for i, s in scores.items()}
        assert prune_dominated(fronts, mean) == _prune_by_restarting(fronts, mean)
