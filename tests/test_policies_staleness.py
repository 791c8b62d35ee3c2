"""Guarded and Reflective staleness policies on hand-built stale items (virtual time only)."""

from __future__ import annotations

import asyncio
import json
import random
import re

import pytest
from support import make_stage_context

from flashevolve.artifacts import Artifact
from flashevolve.backends.sim import SimulatedTask, simulated
from flashevolve.events.schema import Kind
from flashevolve.policies.guarded import Guarded
from flashevolve.policies.reflective import Reflective, parse_answer
from flashevolve.policies.staleness import StaleItem, make_policy
from flashevolve.pool import ArtifactPool
from flashevolve.runtime.clock import run_virtual
from flashevolve.runtime.context import StageContext
from flashevolve.workflows.gepa.sim import WorkloadContent


def sim_evolver(staleness, *, n_train=12, n_val=6, budget=300, evaluate=2, seed=0, **kw):
    """An async GEPA run on the simulator with enough jobs in flight for items to go stale."""
    from flashevolve import Evolver

    return Evolver(
        SimulatedTask(n_train=n_train, n_val=n_val, seed=0),
        simulated(seed=0),
        budget=budget,
        workers={"rollout": 4, "propose": 4, "evaluate": evaluate},
        max_in_flight=16,
        staleness=staleness,
        seed=seed,
        **{"control": None, **kw},  # fixed workers: the tests count on the gate's 2
    )


def stale(
    item_id: str = "i1",
    lag: int = 1,
    frontier_lag: int = 0,
    age_s: float = 1.0,
    artifact: Artifact | None = None,
    parent: Artifact | None = None,
) -> StaleItem:
    return StaleItem(
        item_id=item_id,
        stage="gate",
        lag=lag,
        frontier_lag=frontier_lag,
        age_s=age_s,
        version_stamp=0,
        artifact=artifact,
        parent=parent,
        feedback=[
            {
                "example_id": "train-1",
                "input": "x",
                "score": 0.0,
                "feedback": "Wrong: missed constraint 2.",
            }
        ],
    )


# -- Guarded ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "item", "action", "limit"),
    [
        ({}, stale(lag=2), "accept", None),
        ({}, stale(lag=3), "discard", "lag"),
        ({"max_lag": 0}, stale(lag=1), "discard", "lag"),
        ({"max_lag": None, "max_age_s": 10.0}, stale(lag=50, age_s=9.0), "accept", None),
        ({"max_lag": None, "max_age_s": 10.0}, stale(lag=1, age_s=11.0), "discard", "age"),
        ({"counter": "frontier"}, stale(lag=9, frontier_lag=1), "accept", None),
        ({"counter": "frontier"}, stale(lag=0, frontier_lag=3), "discard", "lag"),
    ],
)
def test_guarded_decisions(kwargs, item, action, limit) -> None:
    decision = asyncio.run(Guarded(**kwargs).decide(item))
    assert decision.action == action
    assert decision.data.get("limit") == limit
    if limit == "lag":
        assert "max_lag" in decision.reason
    if limit == "age":
        assert "max_age_s" in decision.reason


def test_guarded_by_name_and_bad_settings() -> None:
    assert isinstance(make_policy("guarded", max_lag=1), Guarded)
    assert make_policy("reflective").name == "reflective"
    with pytest.raises(ValueError, match="counter"):
        Guarded(counter="wall")


# -- parsing the reviewer's answer -------------------------------------------------------------

GOOD = {
    "decisions": [{"item": "i1", "decision": "patch", "rationale": "useful rule"}],
    "patched": {"instruction": "new text"},
}


@pytest.mark.parametrize(
    ("text", "finish", "ok", "why"),
    [
        (json.dumps(GOOD), "stop", True, None),
        ("Sure!\n```json\n" + json.dumps(GOOD) + "\n```\n", "stop", True, None),
        ("Here you go: " + json.dumps(GOOD) + " -- done", "stop", True, None),
        ("```json\n" + json.dumps(GOOD)[:40], "stop", False, "never closed"),
        (json.dumps(GOOD), "length", False, "truncated"),
        ('{"decisions": [{"item": "i1", "decision": "maybe"}]}', "stop", False, "schema"),
        ('{"decisions": [{"item": "i1", "decision": "patch"', "stop", False, "no JSON object"),
        ('{"decisions": [,]}', "stop", False, "invalid JSON"),
        ("I think we should accept it.", "stop", False, "no JSON object"),
        ('{"decisions": []}', "stop", False, "empty"),
    ],
)
def test_parse_answer(text, finish, ok, why) -> None:
    parsed = parse_answer(text, finish)
    assert (parsed.answer is not None) == ok
    if why:
        assert why in parsed.reason


def test_parse_answer_is_lenient_about_spelling() -> None:
    parsed = parse_answer('{"decision": "Reject", "rationale": "covered already"}')
    assert parsed.answer is not None
    assert parsed.answer.decisions[0].decision == "discard"


# -- the Reflective policy against the simulated backend -----------------------------------------


class Scripted(WorkloadContent):
    """A content model whose patch answers come from a script (one answer per review call)."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.answers = answers
        self.prompts: list[str] = []

    def respond(self, messages, stage, rng, *, truncated=False):  # noqa: ANN001
        if stage == "patch":
            self.prompts.append(str(messages[-1]["content"]))
            return self.answers.pop(0)
        return super().respond(messages, stage, rng, truncated=truncated)


def make_ctx(content=None) -> StageContext:  # noqa: ANN001
    task = SimulatedTask(n_train=6, n_val=4, seed=0)
    pool = ArtifactPool([ex.id for ex in task.val])
    seed = Artifact(task.seed_artifact())
    pool.admit(seed, {ex.id: 0.25 for ex in task.val}, ts=0.0)
    best = seed.with_component(
        "instruction", "Better.\n[[sim-quality=0.400]]", parents=(seed.id,), origin="reflection"
    )
    pool.admit(best, {ex.id: 0.5 for ex in task.val}, ts=1.0)
    # the clock is started inside the virtual loop (decide_all)
    return make_stage_context(task, simulated(seed=0, content=content), pool=pool)


def proposals(ctx: StageContext, n: int) -> list[StaleItem]:
    seed = ctx.pool.records[0].artifact
    return [
        stale(
            f"i{k}",
            lag=1,
            artifact=seed.with_component(
                "instruction", f"Proposal {k}.\n[[sim-quality=0.{380 + k}]]", parents=(seed.id,)
            ),
            parent=seed,
        )
        for k in range(n)
    ]


def decide_all(
    policy: Reflective, ctx: StageContext, items: list[StaleItem], gaps: list[float] | None = None
):  # noqa: ANN201
    async def main():
        ctx.clock.start()
        tasks = []
        for k, it in enumerate(items):
            tasks.append(asyncio.create_task(policy.decide(it, ctx)))
            if gaps:
                await asyncio.sleep(gaps[k])
        return await asyncio.gather(*tasks)

    return run_virtual(main())


def answer(decisions: list[tuple[str, str]], patched: dict | None) -> str:
    return json.dumps(
        {
            "decisions": [
                {"item": i, "decision": d, "rationale": f"{d} {i}"} for i, d in decisions
            ],
            "patched": patched,
        }
    )


def test_reflective_batch_patches_once_and_merges_the_rest() -> None:
    content = Scripted(
        [
            answer(
                [("i0", "patch"), ("i1", "discard"), ("i2", "patch"), ("i3", "accept")],
                {"instruction": "Merged.\n[[sim-quality=0.450]]"},
            )
        ]
    )
    ctx = make_ctx(content)
    items = proposals(ctx, 4)
    decisions = decide_all(Reflective(k=4), ctx, items)
    assert [d.action for d in decisions] == ["patch", "discard", "merged", "accept"]
    patched = decisions[0].repair.value
    best = ctx.pool.best()
    assert patched.origin == "patch"
    assert patched.parents == (best.id, items[0].artifact.id, items[2].artifact.id)
    assert decisions[0].patched_from == ("i0", "i2")
    assert decisions[2].merged_into == patched.id
    made = ctx.log.of_kind(Kind.PATCH_MADE)
    assert len(made) == 1 and made[0].artifact_id == patched.id
    assert made[0].data["patched_from"] == ["i0", "i2"]
    assert len(content.prompts) == 1  # k items -> one call
    prompt = content.prompts[0]
    assert "## Stale item i3" in prompt and "## Current state" in prompt
    assert "missed constraint 2" in prompt  # the item's own minibatch feedback


@pytest.mark.parametrize(
    "bad",
    [
        "not json at all",
        '```json\n{"decisions": [',  # opened fence, cut off
        answer([("i0", "patch"), ("i1", "patch")], None),  # patch without the patched text
        answer([("i0", "patch"), ("i1", "patch")], {"nonexistent": "x"}),
    ],
)
def test_reflective_never_adopts_unusable_answers(bad: str) -> None:
    ctx = make_ctx(Scripted([bad]))
    decisions = decide_all(Reflective(k=2), ctx, proposals(ctx, 2))
    assert [d.action for d in decisions] == ["discard", "discard"]
    assert all(d.reason for d in decisions)
    assert not ctx.log.of_kind(Kind.PATCH_MADE)


def test_reflective_fenced_answer_and_default_simulator_schema() -> None:
    # The default simulator answers with the documented schema; fence it to check tolerance.
    ctx = make_ctx(Scripted(["```json\n" + answer([("i0", "accept")], None) + "\n```"]))
    (d,) = decide_all(Reflective(k=1), ctx, proposals(ctx, 1))
    assert d.action == "accept"
    ctx = make_ctx()  # WorkloadContent's own respond_patch
    decisions = decide_all(Reflective(k=3), ctx, proposals(ctx, 3))
    assert {d.action for d in decisions} <= {"accept", "discard", "patch", "merged"}
    assert not any("unusable" in d.reason for d in decisions)


def test_reflective_flushes_after_max_wait_on_the_run_clock() -> None:
    content = Scripted([answer([("i0", "discard")], None), answer([("i1", "accept")], None)])
    ctx = make_ctx(content)
    items = proposals(ctx, 2)
    # k=4 is never reached: i0 waits max_wait_s=5 alone, i1 arrives 20 s later.
    decisions = decide_all(Reflective(k=4, max_wait_s=5.0), ctx, items, gaps=[20.0, 0.0])
    assert [d.action for d in decisions] == ["discard", "accept"]
    assert [d.data["trigger"] for d in decisions] == ["max_wait_s", "max_wait_s"]
    assert len(content.prompts) == 2


def test_reflective_history_is_capped_newest_first() -> None:
    ctx = make_ctx(Scripted([answer([("i0", "discard")], None)]))
    seed = ctx.pool.records[0].artifact
    for k in range(30):
        art = seed.with_component(
            "instruction", f"Variant {k} " + "x" * 400, parents=(seed.id,), origin="reflection"
        )
        ctx.pool.admit(art, {ex.id: 0.3 for ex in ctx.task.val}, ts=2.0 + k)
    content = ctx.reflection_llm.content
    decide_all(Reflective(k=1, history_tokens=300), ctx, proposals(ctx, 1))
    prompt = content.prompts[0]
    assert "Variant 29" in prompt and "Variant 0 " not in prompt
    assert "older admissions omitted" in prompt


def test_reflective_gate_patches_setting_reaches_the_workflow() -> None:
    ev = sim_evolver(Reflective(k=2, gate_patches=False))
    summary = ev.run_virtual()
    patched = [
        e for e in ev.event_list() if e.kind == Kind.STALE_DETECTED and e.decision == "patch"
    ]
    assert patched, "no stale proposal was patched: nothing checked"
    # a repair skips the gate: no gate verdict names a patched artifact
    gated = {
        e.artifact_id for e in ev.event_list() if e.kind in (Kind.GATE_PASSED, Kind.GATE_FAILED)
    }
    assert not gated & {e.artifact_id for e in patched}
    assert summary["stale_seen"] > 0
    assert summary["stale_seen"] == sum(
        summary[f"stale_{k}"] for k in ("accepted", "patched", "discarded", "merged")
    )
    random.seed(0)


class _Recording:
    """Wraps an LLM and keeps each request's extra_body (what an HTTP client would send)."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner, self.model, self.endpoint = inner, inner.model, inner.endpoint
        self.extra: list[dict | None] = []

    async def complete(self, request):  # noqa: ANN001, ANN201
        self.extra.append(request.extra_body)
        return await self.inner.complete(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_reflective_review_schema_is_made_per_batch() -> None:
    ctx = make_ctx(
        Scripted([answer([("i0", "patch"), ("i1", "discard")], {"instruction": "Merged."})])
    )
    ctx.reflection_llm = rec = _Recording(ctx.reflection_llm)
    decisions = decide_all(
        Reflective(k=2, review_schema=True, patch_chars=50), ctx, proposals(ctx, 2)
    )
    assert [d.action for d in decisions] == ["patch", "discard"]
    assert all(d.data["review_schema"] is True for d in decisions)
    (extra,) = rec.extra
    fmt = extra["response_format"]
    assert fmt["type"] == "json_schema"
    schema = fmt["json_schema"]["schema"]
    listed = schema["properties"]["decisions"]
    assert listed["minItems"] == listed["maxItems"] == 2
    assert listed["items"]["properties"]["item"]["enum"] == ["i0", "i1"]
    patched = schema["properties"]["patched"]["anyOf"][0]
    assert patched["required"] == ["instruction"] and patched["additionalProperties"] is False
    assert patched["properties"]["instruction"]["maxLength"] == 50
    # without the setting, no extra body
    ctx = make_ctx(Scripted([answer([("i0", "discard")], None)]))
    ctx.reflection_llm = rec = _Recording(ctx.reflection_llm)
    decide_all(Reflective(k=1), ctx, proposals(ctx, 1))
    assert rec.extra == [None]


def test_reflective_patch_that_only_changes_whitespace_is_unchanged() -> None:
    ctx = make_ctx()
    best = ctx.pool.best().artifact["instruction"]
    ctx = make_ctx(Scripted([answer([("i0", "patch")], {"instruction": best + "  \n"})]))
    (d,) = decide_all(Reflective(k=1), ctx, proposals(ctx, 1))
    assert d.action == "discard" and "unchanged" in d.reason
    assert not ctx.log.of_kind(Kind.PATCH_MADE)


# -- the order the reviewer sees (position bias) ---------------------------------------------------

_SHOWN_RE = re.compile(r"^## Stale item (\S+)", re.MULTILINE)


class ByPrompt(WorkloadContent):
    """A reviewer whose answer is made from the prompt: ``answer_for(ids as shown) -> text``."""

    def __init__(self, answer_for) -> None:  # noqa: ANN001
        super().__init__()
        self.answer_for = answer_for
        self.shown: list[list[str]] = []

    def respond(self, messages, stage, rng, *, truncated=False):  # noqa: ANN001
        if stage == "patch":
            shown = _SHOWN_RE.findall(str(messages[-1]["content"]))
            self.shown.append(shown)
            return self.answer_for(shown)
        return super().respond(messages, stage, rng, truncated=truncated)


#: what the reviewer says about each item, whatever position it is shown in
VERDICTS = {"i0": "patch", "i1": "discard", "i2": "patch", "i3": "accept"}


def _by_id_reversed(shown: list[str]) -> str:
    # decisions listed in the reverse of the shown order: matching must go by id
    return answer(
        [(i, VERDICTS[i]) for i in reversed(shown)],
        {"instruction": "Merged.\n[[sim-quality=0.450]]"},
    )


def test_reflective_shows_each_batch_in_a_recorded_permutation() -> None:
    orders = set()
    for seed in range(6):
        content = ByPrompt(_by_id_reversed)
        ctx = make_ctx(content)
        ctx.seed = seed
        ctx.reflection_llm = rec = _Recording(ctx.reflection_llm)
        items = proposals(ctx, 4)
        decisions = decide_all(Reflective(k=4, review_schema=True), ctx, items)
        (shown,) = content.shown
        orders.add(tuple(shown))
        # every decision records the same batch order: what the prompt showed, a permutation
        assert all(d.data["shown_order"] == shown for d in decisions)
        assert sorted(shown) == ["i0", "i1", "i2", "i3"]
        assert [d.data["position"] for d in decisions] == [shown.index(it.item_id) for it in items]
        # the schema's item enum and the prompt's id list follow the shown order too
        schema = rec.extra[0]["response_format"]["json_schema"]["schema"]
        assert schema["properties"]["decisions"]["items"]["properties"]["item"]["enum"] == shown
        # decisions still belong to the right items; patch bookkeeping is in arrival order
        assert [d.action for d in decisions] == ["patch", "discard", "merged", "accept"]
        assert all(d.data["matched_by"] == "id" for d in decisions)
        assert decisions[0].patched_from == ("i0", "i2")
        assert decisions[0].repair.value.parents[1:] == (items[0].artifact.id, items[2].artifact.id)
    assert len(orders) > 1  # the seeds do shuffle (identity for all six would be a bug)


def test_reflective_order_is_seeded_per_run() -> None:
    def orders(seed: int, shuffle: bool = True) -> list[list[str]]:
        content = ByPrompt(lambda shown: answer([(i, "discard") for i in shown], None))
        ctx = make_ctx(content)
        ctx.seed = seed
        decisions = decide_all(Reflective(k=3, shuffle=shuffle), ctx, proposals(ctx, 9))
        # three batches of three, in arrival order; each decision names its batch's order
        recorded = [decisions[b * 3].data["shown_order"] for b in range(3)]
        assert recorded == content.shown
        return recorded

    # the run's per-stage stream "review-order": one shuffle per batch, in batch order
    rng = random.Random("7:review-order")
    expected = []
    for b in range(3):
        order = [0, 1, 2]
        rng.shuffle(order)
        expected.append([f"i{3 * b + p}" for p in order])
    assert orders(7) == orders(7) == expected
    assert orders(8) != orders(7)
    assert orders(7, shuffle=False) == [["i0", "i1", "i2"], ["i3", "i4", "i5"], ["i6", "i7", "i8"]]


def test_reflective_position_fallback_follows_the_shown_order() -> None:
    # Ids the batch does not have, as many decisions as items: the n-th decision belongs to the
    # n-th item *as shown* (seed 3 shows a batch of two reversed).
    content = ByPrompt(lambda shown: answer([("first", "accept"), ("second", "discard")], None))
    ctx = make_ctx(content)
    ctx.seed = 3
    decisions = decide_all(Reflective(k=2), ctx, proposals(ctx, 2))
    assert content.shown == [["i1", "i0"]]
    assert [d.action for d in decisions] == ["discard", "accept"]
    assert [d.data["position"] for d in decisions] == [1, 0]
    assert all(d.data["matched_by"] == "position" for d in decisions)


def test_reflective_unusable_answer_and_single_items_record_positions() -> None:
    ctx = make_ctx(Scripted(["not json", answer([("i0", "accept")], None)]))
    ctx.seed = 3
    decisions = decide_all(Reflective(k=2), ctx, proposals(ctx, 2))
    assert [d.action for d in decisions] == ["discard", "discard"]
    assert [d.data["position"] for d in decisions] == [1, 0]
    assert decisions[0].data["shown_order"] == ["i1", "i0"] and decisions[0].data["malformed"]
    (d,) = decide_all(Reflective(k=1), ctx, proposals(ctx, 1))
    assert d.data["position"] == 0 and d.data["shown_order"] == ["i0"]
    # a failed review call (the script has no answer left) is a discard with the order recorded
    decisions = decide_all(Reflective(k=2), ctx, proposals(ctx, 2))
    assert [d.action for d in decisions] == ["discard", "discard"]
    assert all(d.reason.startswith("review failed") for d in decisions)
    assert sorted(d.data["position"] for d in decisions) == [0, 1]
    assert decisions[0].data["batch_size"] == 2


def test_reflective_positions_are_in_the_run_events() -> None:

    def stale_events() -> list[tuple[str, str, str, int, tuple[str, ...]]]:
        ev = sim_evolver(Reflective(k=2), seed=2)  # a run with four two-item batches
        ev.run_virtual()
        rows = []
        for e in ev.events.filter(ev.events["kind"] == Kind.STALE_DETECTED).iter_rows(named=True):
            d = json.loads(e["data"])
            rows.append(
                (e["item_id"], e["decision"], d["batch"], d["position"], tuple(d["shown_order"]))
            )
        return rows

    rows = stale_events()
    assert rows
    batches: dict[str, list] = {}
    for item, _decision, batch, position, shown in rows:
        assert shown[position] == item  # the item was shown where its event says
        batches.setdefault(batch, []).append((position, shown))
    for members in batches.values():
        assert len({shown for _, shown in members}) == 1  # one order per batch
        assert sorted(p for p, _ in members) == list(range(len(members)))
    # two-item batches were shown both ways round: in id order and reversed
    pairs = {shown for *_, shown in rows if len(shown) == 2}
    assert {shown == tuple(sorted(shown, key=lambda i: int(i[1:]))) for shown in pairs} == {
        True,
        False,
    }
    assert stale_events() == rows  # same seed, same run, same orders
    random.seed(0)


def test_reflective_timers_and_reviews_do_not_outlive_the_run() -> None:
    """A stale item still waiting for company when the run ends must not leave its timer (or a
    review call) pending on the loop."""
    import asyncio

    from flashevolve.policies.reflective import Reflective
    from flashevolve.runtime.clock import run_virtual

    policy = Reflective(k=4, max_wait_s=10_000)  # a part batch waits until the end

    async def main():
        ev = sim_evolver(policy, n_train=20, evaluate=8, budget=420)
        summary = await ev.run()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return summary, others, len(policy._waiting)

    summary, leftovers, waiting_at_end = run_virtual(main)
    assert summary["stale_seen"] > 0
    assert waiting_at_end > 0, "the case under test: a part batch was waiting when the run ended"
    assert leftovers == []


def test_reflective_batches_never_wait_for_more_items_than_the_stage_has_workers() -> None:
    """Each waiting item holds a gate worker: with k above the worker count a batch could only
    leave by max_wait_s and the gate would stand still until then."""
    from flashevolve.policies.reflective import Reflective

    ev = sim_evolver(Reflective(k=8, max_wait_s=10_000), n_train=20, budget=600)
    summary = ev.run_virtual()
    stale = ev.events.filter(ev.events["kind"] == Kind.STALE_DETECTED)
    assert summary["stale_seen"] > 0 and stale["decision"].null_count() == 0
    sizes = [json.loads(d)["batch_size"] for d in stale["data"].to_list()]
    assert max(sizes) <= 2  # batches of at most the gate's 2 workers
