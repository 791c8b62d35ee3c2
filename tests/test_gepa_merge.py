"""gepa's merge as a job of the GEPA workflow: scheduling, screening, lineage, resume.

Runs use the serving simulator on virtual time, with a two-component task (merges cross
components; a one-component pool can never merge).  Seed 3 is a run whose 150 proposals include
a merge that passes its screen, one that fails it and one that reproduces a pool candidate."""

from __future__ import annotations

import json

from test_gepa_shared_rng import two_part_task

from flashevolve import Evolver
from flashevolve.backends.sim import simulated
from flashevolve.events import frames
from flashevolve.events.schema import Kind


def merge_run(mode="sync", seed=3, budget=None, **options) -> Evolver:
    ev = Evolver(
        two_part_task(seed, n_train=30, n_val=30),
        simulated(seed=seed),
        mode=mode,
        seed=seed,
        use_merge=True,
        budget=budget or {"proposals": 150},
        load_every_s=None,
        **options,
    )
    ev.run_virtual()
    return ev


def is_merge(e) -> bool:
    return (e.data or {}).get("origin") == "merge" or bool((e.data or {}).get("merge"))


def test_a_merge_follows_an_admitted_child_and_uses_up_its_iteration():
    ev = merge_run()
    events = ev.event_list()
    merges = [e for e in events if e.kind == Kind.PROPOSAL_MADE and is_merge(e)]
    assert merges
    for m in merges:
        before = events[: events.index(m)]
        last_pick = max(i for i, e in enumerate(before) if e.kind == Kind.PARENT_SELECTED)
        admitted = [e for e in before[last_pick:] if e.kind == Kind.ADMITTED]
        assert [e.data["origin"] for e in admitted] == ["reflection"]  # the iteration before
        assert m.data["iteration"] == before[last_pick].data["iteration"] + 1
        after = [e for e in events[events.index(m) :] if e.kind == Kind.PARENT_SELECTED]
        if after:
            assert after[0].data["iteration"] == m.data["iteration"] + 1  # its slice is skipped
        assert len(m.data["subsample"]) == 5 and len(m.data["parents"]) == 2


def test_a_merge_passes_its_screen_iff_it_matches_the_better_parent_and_is_validated():
    ev = merge_run()
    events = ev.event_list()
    screens = [e for e in events if e.kind in (Kind.GATE_PASSED, Kind.GATE_FAILED) and is_merge(e)]
    assert screens
    for e in screens:
        assert (e.kind == Kind.GATE_PASSED) == (e.score >= max(e.data["parent_sums"]))
    admitted = [e for e in events if e.kind == Kind.ADMITTED and is_merge(e)]
    passed = [e for e in screens if e.kind == Kind.GATE_PASSED]
    assert {e.artifact_id for e in admitted} == {e.artifact_id for e in passed}
    for e in admitted:
        record = ev.pool.get(e.artifact_id)
        assert record.artifact.origin == "merge" and len(record.parents) == 2
        assert len(record.val_scores) == 30  # fully validated
    edges = frames.lineage_edges(ev.events)
    merged = edges.filter(edges["edge"] == "merge")
    assert merged.height == 2 * len(admitted)


def test_max_merge_invocations_caps_what_becomes_due_as_gepa_does():
    """gepa's cap stops *new* merges from becoming due once that many passed their screen;
    merges already due are still tried (gepa 0.1.4, core/engine.py) -- so with several due at
    once, more than ``max_merge_invocations`` can pass.  Replay the schedule from the log."""
    ev = merge_run(max_merge_invocations=1)
    due = accepted = 0
    late_dues = 0
    for e in ev.event_list():
        data = e.data or {}
        if e.kind == Kind.ADMITTED and data.get("origin") == "reflection":
            if accepted < 1:
                due += 1
            else:
                late_dues += 1  # an admission after the cap: no merge becomes due
        elif e.kind == Kind.PROPOSAL_MADE and is_merge(e):
            assert due > 0, "a merge was tried with none due"
            due -= 1
        elif e.kind == Kind.GATE_FAILED and is_merge(e):
            due += 1  # a merge that fails its screen gives its turn back
        elif e.kind == Kind.GATE_PASSED and is_merge(e):
            accepted += 1
    assert accepted >= 1 and late_dues > 0  # the cap was reached and then mattered
    assert ev.workflow.merges.accepted == accepted and ev.workflow.merges.due == due


def test_async_merges_keep_to_what_is_due():
    ev = merge_run(
        "async",
        budget={"proposals": 120},
        workers={"rollout": 8, "propose": 4, "evaluate": 8},
        max_in_flight=16,
    )
    events = ev.event_list()
    passed = [e for e in events if e.kind == Kind.GATE_PASSED and is_merge(e)]
    assert len(passed) <= 5 and ev.workflow.merges.due >= 0
    for e in events:
        if e.kind == Kind.ADMITTED and is_merge(e):
            assert len(e.data["parents"]) == 2


def test_a_resumed_run_with_merges_and_two_components_continues_exactly(tmp_path):
    """Stop after 25 proposals, resume to 60: the same parents, minibatches, components,
    merges and admissions as one run to 60 (pointers and the merge schedule restored)."""

    def trace(ev):
        out = []
        for e in ev.event_list():
            if e.kind == Kind.PARENT_SELECTED:
                out.append(("pick", e.artifact_id, tuple(e.data["minibatch"])))
            elif e.kind == Kind.PROPOSAL_MADE:
                out.append(("made", e.artifact_id, e.data.get("component"), is_merge(e)))
        return out, [r.id for r in ev.pool.records]

    whole = merge_run()
    first = Evolver(
        two_part_task(3, n_train=30, n_val=30),
        simulated(seed=3),
        seed=3,
        mode="sync",
        use_merge=True,
        budget={"proposals": 60},
        run_dir=tmp_path,
        load_every_s=None,
    )
    first.run_virtual()
    state = json.loads((tmp_path / "state.json").read_text())
    assert "merge" in state["workflow"] and state["workflow"]["pointers"]
    second = Evolver(
        two_part_task(3, n_train=30, n_val=30),
        simulated(seed=3),
        seed=3,
        mode="sync",
        use_merge=True,
        budget={"proposals": 150},
        run_dir=tmp_path,
        resume=True,
        load_every_s=None,
    )
    second.run_virtual()
    assert trace(second) == trace(whole)
    assert any(is_merge(e) for e in whole.event_list())
