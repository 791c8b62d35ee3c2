"""``rng="shared"``: whole synchronous runs replayed by gepa 0.1.4's own selector, sampler and
merge proposer on one ``random.Random(seed)`` -- every parent, minibatch and merge the same.

The task has two components so that merges (which cross components) happen."""

from __future__ import annotations

import random

import pytest
from gepa.core.data_loader import ensure_loader
from gepa.core.state import GEPAState, ValsetEvaluation
from gepa.strategies.batch_sampler import EpochShuffledBatchSampler
from gepa.strategies.candidate_selector import ParetoCandidateSelector
from test_parity_gepa import _merge_proposer

from flashevolve import Evolver
from flashevolve.artifacts import Artifact
from flashevolve.backends.sim import SimulatedTask, simulated
from flashevolve.events.schema import Kind
from flashevolve.tasks.base import PromptTask


def two_part_task(seed: int, n_train: int = 14, n_val: int = 10) -> PromptTask:
    """The simulator's task with a second component (so that merges can cross components)."""
    sim = SimulatedTask(n_train=n_train, n_val=n_val, seed=seed)
    parts = {
        **sim.seed_artifact(),
        "format": "Put the answer on its own line.\n[[sim-quality=0.300]]",
    }
    return PromptTask(
        "two-part",
        train=sim.train,
        val=sim.val,
        seed=parts,
        metric=sim.metric,
        description=sim.describe(),
        max_tokens=sim.max_tokens,
    )


@pytest.mark.parametrize("seed", [3, 6])  # merges accepted, rejected, repeating a candidate
def test_a_shared_rng_run_draws_exactly_what_gepa_draws(seed):
    """``rng="shared"``: replaying our sync run's admissions into gepa's state, gepa's Pareto
    selector, epoch sampler and merge proposer -- all on one ``random.Random(seed)``, called in
    its engine's order and by its engine's merge schedule -- pick the same parents, minibatches
    and merges as the run did."""
    task = two_part_task(seed, n_train=30, n_val=30)
    ev = Evolver(
        task,
        simulated(seed=seed),
        mode="sync",
        seed=seed,
        rng="shared",
        use_merge=True,
        budget={"proposals": 150},
        load_every_s=None,
    )
    ev.run_virtual()
    rng = random.Random(seed)
    selector = ParetoCandidateSelector(rng=rng)
    sampler = EpochShuffledBatchSampler(3, rng=rng)
    loader = ensure_loader(list(range(len(task.train))))
    val_pos = {ex.id: k for k, ex in enumerate(task.val)}
    proposer = _merge_proposer(rng, list(range(len(task.val))), lambda c, k: 0.0)
    index: dict[str, int] = {}
    state = None
    due = accepted = 0
    found_new = False
    merges = selections = 0
    for e in ev.event_list():
        data = e.data or {}
        if e.kind == Kind.PROPOSAL_REJECTED and data.get("origin") == "merge":
            break  # documented: a merge reproducing a pool candidate; gepa would add a copy
        if e.kind == Kind.ADMITTED:
            scores = {val_pos[v]: s for v, s in data["val_scores"].items()}
            art = ev.pool.get(e.artifact_id).artifact
            evaluation = ValsetEvaluation(dict.fromkeys(scores), scores)
            if state is None:
                state = GEPAState(dict(art.components), evaluation)
                state.total_num_evals, state.full_program_trace = 0, []
            else:
                parents = [index[p] for p in art.parents]
                state.update_state_with_new_program(
                    parents, dict(art.components), evaluation, None, 0
                )
            index[e.artifact_id] = len(index)
            if data["origin"] in ("reflection", "patch"):
                found_new = True
                due += accepted < proposer.max_merge_invocations
        elif e.kind == Kind.GATE_PASSED and data.get("merge"):
            due, accepted = due - 1, accepted + 1
        elif e.kind == Kind.PARENT_SELECTED or data.get("origin") == "merge":
            assert state is not None
            state.i = data["iteration"]
            state.full_program_trace.append({})
            theirs = None
            if due > 0 and found_new:
                proposer.merges_due, proposer.last_iter_found_new_program = due, True
                theirs = proposer.propose(state)
            found_new = False
            if theirs is not None:  # the iteration is a merge
                assert e.kind == Kind.PROPOSAL_MADE and data["origin"] == "merge"
                assert e.artifact_id == Artifact(theirs.candidate).id
                assert [index[p] for p in data["parents"]] == theirs.parent_program_ids
                assert [val_pos[v] for v in data["subsample"]] == theirs.subsample_indices
                merges += 1
                continue
            assert e.kind == Kind.PARENT_SELECTED
            assert index[e.artifact_id] == selector.select_candidate_idx(state)
            batch = sampler.next_minibatch_ids(loader, state)
            assert data["minibatch"] == [task.train[k].id for k in batch]
            selections += 1
    assert selections >= 30 and merges >= 1
