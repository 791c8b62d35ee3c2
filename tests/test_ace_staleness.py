"""Staleness of ACE delta operations: each stale-operation decision for each policy.

A batch of operations written against playbook version 1 is applied after another batch moved
the playbook to version 2.  The scheduler's own ``judge_stale`` asks the policy (a real Runtime,
not running; the reviewer answers through the simulated backend), and the apply stage applies
what survives.
"""

from __future__ import annotations

import json

import pytest
from support import make_stage_context

from flashevolve import Evolver
from flashevolve.artifacts import Artifact
from flashevolve.backends.sim import SimulatedLLM, SimulatedTask
from flashevolve.events.schema import Kind
from flashevolve.policies.reflective import Reflective
from flashevolve.policies.staleness import make_policy
from flashevolve.pool import ArtifactPool
from flashevolve.runtime.clock import run_virtual
from flashevolve.runtime.items import WorkItem
from flashevolve.runtime.scheduler import Runtime, RuntimeConfig
from flashevolve.workflows.ace import AceWorkflow, Playbook, StampedOp, validate_operation
from flashevolve.workflows.ace.items import CuratedBatch, Reflection
from flashevolve.workflows.ace.sim import AceContent, ace_length, ace_simulated

SEED = """\
## STRATEGIES & INSIGHTS
[str-00001] helpful=3 harmful=0 :: Read every figure with its unit before computing.
[str-00002] helpful=0 harmful=4 :: Always report ratios as fractions of one.

## FORMULAS & CALCULATIONS
[calc-00003] helpful=1 harmful=0 :: Return on equity divides net income by equity.
[calc-00004] helpful=2 harmful=0 :: Gross margin is revenue minus cost of goods sold over revenue."""

#: moves the playbook from version 1 to 2 (not stale: written against version 1)
FIRST = [
    {"type": "UPDATE", "id": "calc-00003",
     "content": "Return on equity divides net income by the average of opening and closing equity."},
    {"type": "DELETE", "id": "str-00002"},
    {"type": "ADD", "section": "OTHERS", "content": "CAGR annualises growth over the years between "
     "the two fiscal years."},
]  # fmt: skip

#: written against version 1 too, applied after FIRST: stale by one version
STALE = [
    {"type": "ADD", "section": "OTHERS", "content": "Quote EPS in dollars per share."},  # clean
    {"type": "ADD", "section": "OTHERS", "content": "CAGR annualises growth over the years "
     "between both fiscal years."},  # covered by FIRST's ADD
    {"type": "UPDATE", "id": "calc-00003", "content": "ROE uses closing equity."},  # rewritten
    {"type": "DELETE", "id": "str-00002"},  # target gone
    {"type": "MERGE", "ids": ["str-00002", "calc-00004"], "content": "Margins are percentages."},
    {"type": "UPDATE", "id": "calc-00004", "content": "Gross margin is a percentage of revenue."},
    {"type": "UPDATE", "id": "misc-00077", "content": "An id the curator made up."},
]  # fmt: skip
CONFLICTS = {"s.1": "covered by", "s.2": "rewritten", "s.3": "no longer", "s.4": "no longer"}
CLEAN = ("s.0", "s.5")


def reflection() -> Reflection:
    return Reflection(4, "train-4", "What was the ROE of Acme?", "0.12", 0.0,
                      "Wrong: expected 12.00, got 0.12.", "reported a fraction",
                      "Returns are percentages.", [("str-00001", "helpful")])  # fmt: skip


def batch(prefix: str, raw: list[dict], stamp: int) -> CuratedBatch:
    ops = [StampedOp(f"{prefix}.{k}", validate_operation(r), stamp) for k, r in enumerate(raw)]
    return CuratedBatch(ops, [reflection()], "base", stamp)


def item(item_id: str, payload: CuratedBatch) -> WorkItem:
    return WorkItem(item_id, "apply", payload, payload.stamp, 0, 0.0, f"j-{item_id}")


def run_scenario(policy, content=None):
    """Apply FIRST then STALE; returns (events, workflow, pool)."""
    task = SimulatedTask(n_train=4, n_val=2, seed=0)
    wf = AceWorkflow(initial_playbook=SEED)
    llm = SimulatedLLM(content=content or AceContent(), length_fn=ace_length)
    pool = ArtifactPool([ex.id for ex in task.val])
    ctx = make_stage_context(task, llm, pool=pool, workflow=wf)
    seed = Artifact({"playbook": wf.seed_text}, origin="seed")
    pool.admit(seed, {ex.id: 0.5 for ex in task.val}, ts=0.0)
    policy = make_policy(policy) if isinstance(policy, str) else policy
    ctx.runtime = Runtime(wf, ctx, RuntimeConfig(load_every_s=None), policy)

    async def main():
        ctx.clock.start()
        await wf._apply(item("f", batch("f", FIRST, 1)), ctx)
        assert pool.pool_version == 2
        await wf._apply(item("s", batch("s", STALE, 1)), ctx)

    run_virtual(main())
    return ctx.log.snapshot(), wf, pool


def of(events, kind):
    return [e for e in events if e.kind == kind]


def outcomes(events):
    admitted = of(events, Kind.ADMITTED)[-1]
    return {o["op_id"]: o for o in admitted.data["operations"]}


def test_full_accepts_every_stale_operation_which_then_applies_or_fails_by_the_rules():
    events, wf, pool = run_scenario("full")
    stale = {e.item_id: e for e in of(events, Kind.STALE_DETECTED)}
    assert set(stale) == set(CONFLICTS) | set(CLEAN)  # s.6 was invalid from the start
    for op_id, why in CONFLICTS.items():
        e = stale[op_id]
        assert e.decision == "accept" and e.data["policy"] == "full" and why in e.data["conflict"]
        assert e.lag == 1 and e.version_stamp == 1 and e.stage == "apply" and e.reason
    for op_id in CLEAN:
        assert stale[op_id].decision == "accept" and stale[op_id].data["policy"] == "workflow"
    got = outcomes(events)
    assert {k for k, o in got.items() if o["status"] == "applied"} == {"s.0", "s.2", "s.5"}
    assert (
        "near-duplicate" in got["s.1"]["reason"] and "no bullet str-00002" in got["s.3"]["reason"]
    )
    assert "no bullet misc-00077" in got["s.6"]["reason"]
    head = Playbook.parse(pool.records[-1].artifact["playbook"])
    assert head.get("calc-00003").text == "ROE uses closing equity."  # the stale rewrite won


def test_guarded_discards_every_conflict_and_applies_the_clean_ones():
    events, wf, pool = run_scenario("guarded")
    stale = {e.item_id: e for e in of(events, Kind.STALE_DETECTED)}
    for op_id in CONFLICTS:
        assert stale[op_id].decision == "discard" and stale[op_id].reason.startswith("conflict: ")
    got = outcomes(events)
    assert {k for k, o in got.items() if o["status"] == "applied"} == {"s.0", "s.5"}
    assert set(of(events, Kind.ADMITTED)[-1].data["stale"]) == set(CONFLICTS) | set(CLEAN)
    head = Playbook.parse(pool.records[-1].artifact["playbook"])
    assert "average of opening and closing" in head.get("calc-00003").text


class Scripted(AceContent):
    """Review answers from a script (one per review call); everything else as AceContent."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.answers = answers
        self.prompts: list[str] = []

    def respond(self, messages, stage, rng, *, truncated=False):  # noqa: ANN001
        if stage == "patch":
            self.prompts.append(str(messages[-1]["content"]))
            return self.answers.pop(0)
        return super().respond(messages, stage, rng, truncated=truncated)


REVIEW = {
    "decisions": [
        {"item": "s.1", "decision": "discard", "rationale": "already covered"},
        {"item": "s.2", "decision": "patch", "rationale": "keep the idea, rebased"},
        {"item": "s.3", "decision": "accept", "rationale": "still right"},
        {"item": "s.4", "decision": "patch", "rationale": "merge what is left"},
    ],
    "patched": {
        "operations": [
            {"type": "UPDATE", "id": "calc-00003", "content": "ROE divides net income by average "
             "equity and is reported as a percentage."},
            {"type": "UPDATE", "id": "calc-00004", "content": "Margins are percentages."},
        ]
    },
}  # fmt: skip


def test_reflective_reviews_the_conflicts_in_one_call_and_rebases_patches():
    content = Scripted([json.dumps(REVIEW)])
    events, wf, pool = run_scenario(Reflective(k=4), content)
    assert len(content.prompts) == 1  # the four conflicts went to one review call
    prompt = content.prompts[0]
    for needle in ("<playbook>", "version 2", "Operations applied since version 1",
                   "UPDATE [calc-00003]", '"type": "UPDATE"', "rewritten since version 1",
                   "Returns are percentages.", '{"operations"'):  # fmt: skip
        assert needle in prompt, needle
    stale = {e.item_id: e for e in of(events, Kind.STALE_DETECTED)}
    assert [stale[i].decision for i in ("s.1", "s.2", "s.3", "s.4")] == [
        "discard", "patch", "accept", "merged"
    ]  # fmt: skip
    patch = of(events, Kind.PATCH_MADE)[0]
    assert patch.parent_id == pool.records[1].id and len(patch.data["operations"]) == 2
    assert stale["s.2"].artifact_id == patch.artifact_id == stale["s.4"].artifact_id
    admitted = of(events, Kind.ADMITTED)[-1]
    assert admitted.data["patched_from"] == ["s.2"]
    got = outcomes(events)
    # the rebased UPDATE of calc-00004 and the clean s.5 both name calc-00004: first claim wins
    assert got["s.2.r0"]["status"] == "applied" and got["s.2.r1"]["status"] == "applied"
    assert "already claimed" in got["s.5"]["reason"]
    head = Playbook.parse(pool.records[-1].artifact["playbook"])
    assert head.get("calc-00003").text.endswith("reported as a percentage.")


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"decisions": [{"item": "s.2", "decision": "patch"}],
          "patched": {"operations": [{"type": "DELETE", "id": "nope-1"}]}}, "patch not usable"),
        ({"decisions": [{"item": "s.2", "decision": "patch"}], "patched": None}, "patch not usable"),
        ("not json at all", "unusable review answer"),
    ],
)  # fmt: skip
def test_an_unusable_review_discards_and_says_why(answer, why):
    text = answer if isinstance(answer, str) else json.dumps(answer)
    events, _, _ = run_scenario(Reflective(k=4), Scripted([text]))
    stale = {e.item_id: e for e in of(events, Kind.STALE_DETECTED)}
    assert why in stale["s.2"].reason and stale["s.2"].decision == "discard"
    assert {stale[i].decision for i in CLEAN} == {"accept"}


@pytest.mark.parametrize("policy", ["full", "guarded", "reflective"])
def test_async_runs_judge_stale_operations_by_the_policy(policy):
    ev = Evolver(
        SimulatedTask(n_train=40, n_val=8, seed=0),
        ace_simulated(seed=0),
        workflow="ace",
        mode="async",
        budget=900,
        staleness=policy,
        workers={"curate": 3},
    )
    summary = ev.run_virtual()
    stale = [e for e in ev.event_list() if e.kind == Kind.STALE_DETECTED]
    conflicts = [e for e in stale if e.data["conflict"]]
    assert conflicts and all(e.reason for e in stale) and summary["errors"] == 0
    decided = {e.decision for e in conflicts}
    if policy == "full":
        assert decided == {"accept"}
    if policy == "guarded":
        assert decided == {"discard"}
    if policy == "reflective":
        assert decided <= {"accept", "discard", "patch", "merged"} and "discard" in decided
        assert all(e.data["policy"] == "reflective" for e in conflicts)
    assert all(e.decision == "accept" and e.data["policy"] == "workflow"
               for e in stale if not e.data["conflict"])  # fmt: skip
