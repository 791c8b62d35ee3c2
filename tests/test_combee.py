"""Combee reflection: the augmented shuffle, map and reduce levels as barriers, concurrency in
sync and async runs, unusable answers, cancellation, and the shared RNG's order of draws.

Runs use the serving simulator on virtual time, with the Combee-aware content model
(:mod:`flashevolve.workflows.gepa.combee_sim`)."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from types import SimpleNamespace

import pytest
from gepa.core.data_loader import ensure_loader
from gepa.core.state import GEPAState, ValsetEvaluation
from gepa.strategies.batch_sampler import EpochShuffledBatchSampler
from gepa.strategies.candidate_selector import ParetoCandidateSelector

from flashevolve import Evolver
from flashevolve.backends.sim import SimulatedLLM, SimulatedTask
from flashevolve.errors import ConfigError
from flashevolve.events.schema import Kind
from flashevolve.workflows.gepa import GepaWorkflow
from flashevolve.workflows.gepa.combee import groups, reduce_plan
from flashevolve.workflows.gepa.combee_sim import CombeeContent
from flashevolve.workflows.gepa.sim import WorkloadContent


def sim(content=None, seed: int = 0) -> SimulatedLLM:
    return SimulatedLLM(seed=seed, content=content or CombeeContent())


def run(mode: str = "sync", *, content=None, budget=None, task=None, **options) -> Evolver:
    ev = Evolver(
        task or SimulatedTask(n_train=60, n_val=20),
        sim(content),
        mode=mode,
        budget=budget or {"proposals": 4},
        load_every_s=None,
        **options,
    )
    ev.run_virtual()
    return ev


def requests(ev: Evolver) -> dict[str, dict]:
    """request id -> stage, item, start and end (and how it ended)."""
    out: dict[str, dict] = {}
    for e in ev.event_list():
        if e.kind == Kind.REQUEST_STARTED:
            out[e.request_id] = {"stage": e.stage, "item": e.item_id, "start": e.ts}
        elif e.kind in (Kind.REQUEST_FINISHED, Kind.REQUEST_FAILED, Kind.REQUEST_CANCELLED):
            out[e.request_id].update(end=e.ts, how=e.kind)
    return out


def reflection_calls(ev: Evolver) -> dict[str, list[dict]]:
    """Per propose item: its map and reduce requests, by start time."""
    per_item: dict[str, list[dict]] = defaultdict(list)
    for r in requests(ev).values():
        if r["stage"] in ("propose", "reduce"):
            per_item[r["item"]].append(r)
    return {item: sorted(calls, key=lambda r: r["start"]) for item, calls in per_item.items()}


# -- the pieces ----------------------------------------------------------------------------------


def test_every_record_lands_p_times_in_floor_sqrt_n_near_equal_groups():
    for n in range(1, 70):
        for p in (1, 2, 3):
            parts = groups(list(range(n)), p, random.Random(n * 10 + p))
            assert len(parts) == max(1, math.isqrt(n))
            sizes = [len(g) for g in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
            assert Counter(r for g in parts for r in g) == dict.fromkeys(range(n), p)
    a, b = (groups(list(range(40)), 2, random.Random(s)) for s in (7, 7))
    assert a == b != groups(list(range(40)), 2, random.Random(8))


def test_reduce_plan_by_levels():
    assert reduce_plan(1, None) == [] and reduce_plan(6, None) == [[6]]
    assert reduce_plan(6, 2) == [[2, 2, 2], [2], [2]]
    assert reduce_plan(7, 3) == [[3, 3], [3]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"combee": 3}, "at least 4 reflection examples"),
        ({"combee": "10"}, "integer number of examples"),
        ({"combee": 10, "minibatch_size": 3}, "drop minibatch_size=3"),
        ({"combee": 10, "combee_duplication": 0}, "combee_duplication must be at least 1"),
        ({"combee": 10, "combee_reduce_fanin": 1}, "combee_reduce_fanin must be an integer >= 2"),
    ],
)
def test_bad_combee_settings_name_the_field(options, message):
    with pytest.raises(ConfigError, match=message):
        GepaWorkflow(**options)
    with pytest.raises(ConfigError, match="workflow 'gepa'"):
        Evolver(SimulatedTask(n_train=10, n_val=5), sim(), **options)


def test_combee_sets_the_reflection_minibatch():
    assert GepaWorkflow(combee=40).minibatch_size == 40
    assert GepaWorkflow(combee=10, minibatch_size=10).combee.examples == 10


# -- runs ----------------------------------------------------------------------------------------


def test_sync_combee_maps_concurrently_then_reduces_behind_a_barrier():
    ev = run("sync", combee=10)
    made = [e for e in ev.event_list() if e.kind == Kind.PROPOSAL_MADE]
    assert len(made) == 4
    for e in made:
        assert e.data["combee"]["k"] == 3 and e.data["combee"]["n"] == 10
        assert [level["kind"] for level in e.data["combee"]["levels"]] == ["map", "reduce"]
    picks = [e for e in ev.event_list() if e.kind == Kind.PARENT_SELECTED]
    assert all(len(e.data["minibatch"]) == 10 for e in picks)
    calls = reflection_calls(ev)
    assert calls
    for item_calls in calls.values():
        maps = [r for r in item_calls if r["stage"] == "propose"]
        reduces = [r for r in item_calls if r["stage"] == "reduce"]
        assert len(maps) == 3 and len(reduces) == 1
        assert len({r["start"] for r in maps}) == 1  # all k map calls at once
        assert reduces[0]["start"] >= max(r["end"] for r in maps)  # the barrier
    # sync: one proposal's reflection at a time
    spans = sorted((min(r["start"] for r in c), max(r["end"] for r in c)) for c in calls.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_hierarchical_reduce_runs_level_by_level():
    ev = run("sync", combee=40, combee_reduce_fanin=2, budget={"proposals": 2})
    made = {e.item_id: e.data["combee"] for e in ev.event_list() if e.kind == Kind.PROPOSAL_MADE}
    shapes = []
    for item, item_calls in reflection_calls(ev).items():
        maps = [r for r in item_calls if r["stage"] == "propose"]
        reduces = [r for r in item_calls if r["stage"] == "reduce"]
        assert len(maps) == 6
        levels: dict[float, list[dict]] = defaultdict(list)
        for r in reduces:
            levels[r["start"]].append(r)
        ordered = [levels[t] for t in sorted(levels)]
        recorded = [lv for lv in made[item]["levels"] if lv["kind"] == "reduce"]
        # the calls seen at the server are the levels the proposal recorded, fan-in 2 each
        assert [len(level) for level in ordered] == [lv["calls"] for lv in recorded]
        assert all(max(lv["chunks"]) <= 2 for lv in recorded)
        shapes.append([len(level) for level in ordered])
        finished = max(r["end"] for r in maps)
        for level in ordered:  # every level waits for the one before (a barrier)
            assert min(r["start"] for r in level) >= finished
            finished = max(r["end"] for r in level)
    assert [3, 1, 1] in shapes  # 6 usable partials -> 3 -> 2 -> 1


def test_async_combee_overlaps_proposals():
    ev = run(
        "async",
        combee=10,
        budget={"proposals": 12},
        workers={"rollout": 4, "propose": 4, "evaluate": 4},
    )
    spans = [
        (min(r["start"] for r in c), max(r.get("end", r["start"]) for r in c))
        for c in reflection_calls(ev).values()
    ]
    overlapping = sum(
        1 for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] < b[1] and b[0] < a[1]
    )
    assert overlapping > 0


class BrokenMaps(WorkloadContent):
    """Every map answer is cut off (never closed)."""

    def reflect(self, text, rng, *, truncated=False):
        return "Revised:\n```\nAlways answer carefully and"


class SomeBrokenMaps(WorkloadContent):
    """About half the map answers are cut off."""

    def reflect(self, text, rng, *, truncated=False):
        answer = super().reflect(text, rng, truncated=truncated)
        return answer.rsplit("```", 1)[0] if rng.random() < 0.5 else answer


def test_unusable_answers_are_left_out_or_reject_the_proposal():
    ev = run("sync", content=CombeeContent(base=BrokenMaps()), combee=10, budget=600)
    rejected = [e for e in ev.event_list() if e.kind == Kind.PROPOSAL_REJECTED]
    assert rejected and all(e.reason.startswith("no usable map answer") for e in rejected)
    assert not [e for e in ev.event_list() if e.kind == Kind.PROPOSAL_MADE]
    assert not [r for r in requests(ev).values() if r["stage"] == "reduce"]

    ev = run("sync", content=CombeeContent(malformed_rate=1.0), combee=10, budget=600)
    rejected = [e for e in ev.event_list() if e.kind == Kind.PROPOSAL_REJECTED]
    assert rejected and all(e.reason.startswith("reduce level 1:") for e in rejected)

    ev = run("sync", content=CombeeContent(base=SomeBrokenMaps()), combee=16, budget=1200)
    levels = [
        e.data["combee"]["levels"][0] for e in ev.event_list() if e.kind == Kind.PROPOSAL_MADE
    ]
    assert any(0 < level["usable"] < level["calls"] for level in levels)


def test_a_deadline_cancels_combee_calls_in_flight():
    ev = run("async", combee=40, budget=240, workers={"rollout": 2, "propose": 2, "evaluate": 2})
    calls = requests(ev)
    assert all("how" in r for r in calls.values())  # nothing left hanging
    cancelled = Counter(r["stage"] for r in calls.values() if r["how"] == Kind.REQUEST_CANCELLED)
    assert cancelled["propose"] + cancelled["reduce"] > 0


def test_shared_rng_shuffles_after_the_selection_and_the_minibatch():
    """With ``rng="shared"`` the augmented shuffle is one ``shuffle`` of the p*n records on the
    run's RNG, after the parent and minibatch draws of its iteration (gepa binds ComBEE to its
    engine RNG): replaying the run with gepa's selector and sampler plus that one shuffle per
    reflection reproduces every parent and minibatch."""
    task = SimulatedTask(n_train=30, n_val=12, seed=4)
    ev = run("sync", task=task, combee=9, budget={"proposals": 12}, rng="shared", seed=4)
    rng = random.Random(4)
    selector = ParetoCandidateSelector(rng=rng)
    sampler = EpochShuffledBatchSampler(9, rng=rng)
    loader = ensure_loader(list(range(len(task.train))))
    val_pos = {ex.id: k for k, ex in enumerate(task.val)}
    state, index, picks = None, {}, 0
    for e in ev.event_list():
        if e.kind == Kind.ADMITTED:
            scores = {val_pos[v]: s for v, s in e.data["val_scores"].items()}
            comps = dict(ev.pool.get(e.artifact_id).artifact.components)
            evaluation = ValsetEvaluation(dict.fromkeys(scores), scores)
            if state is None:
                state = GEPAState(comps, evaluation)
            else:
                parents = [index[p] for p in e.data["parents"]]
                state.update_state_with_new_program(parents, comps, evaluation, None, 0)
            index[e.artifact_id] = len(index)
        elif e.kind == Kind.PARENT_SELECTED:
            assert index[e.artifact_id] == selector.select_candidate_idx(state)
            ids = sampler.next_minibatch_ids(loader, SimpleNamespace(i=e.data["iteration"]))
            assert e.data["minibatch"] == [task.train[k].id for k in ids]
            picks += 1
        elif e.kind in (Kind.PROPOSAL_MADE, Kind.PROPOSAL_REJECTED) and e.stage == "propose":
            rng.shuffle(list(range(2 * 9)))  # the augmented shuffle of this reflection
    assert picks >= 12
