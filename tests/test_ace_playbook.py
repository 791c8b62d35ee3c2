"""The ACE playbook, its delta operations and the strict parsers of ACE's three prompts."""

from __future__ import annotations

import json
import random

import pytest

from flashevolve.workflows.ace.operations import (
    MAX_BULLET_CHARS,
    StampedOp,
    apply_operations,
    apply_tags,
    refine,
    validate_operation,
)
from flashevolve.workflows.ace.playbook import (
    Bullet,
    Playbook,
    PlaybookFormatError,
    clean_text,
    section_slug,
    similarity,
)
from flashevolve.workflows.ace.prompts import parse_curator, parse_generator, parse_reflector

# -- text form ----------------------------------------------------------------------------------

_ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEF0123456789 .,;:!?-+*/=%$&()[]{}'\"#@\t\néüß→"


def random_playbook(rng: random.Random) -> Playbook:
    sections: dict[str, list[Bullet]] = {}
    used_ids: set[str] = set()
    for s in range(rng.randrange(1, 7)):
        name = clean_text("".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(1, 25))))
        name = name.lstrip("#") or f"S{s}"
        name = clean_text(name) or f"S{s}"
        if name in sections:
            continue
        bullets = []
        for _ in range(rng.randrange(0, 6)):
            text = clean_text("".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(1, 80))))
            text = text or "x"
            bid = f"{section_slug(name)}-{rng.randrange(1, 10**5):05d}"
            if bid in used_ids:
                continue
            used_ids.add(bid)
            bullets.append(Bullet(bid, text, rng.randrange(0, 50), rng.randrange(0, 50)))
        sections[name] = bullets
    return Playbook(sections)


@pytest.mark.parametrize("seed", range(300))
def test_render_and_parse_are_exact_inverses(seed):
    book = random_playbook(random.Random(seed))
    text = book.render()
    parsed = Playbook.parse(text)
    assert parsed == book
    assert parsed.render() == text


def test_the_format_is_the_official_bullet_line():
    book = Playbook.empty(["FORMULAS & CALCULATIONS", "OTHERS"])
    book.sections["OTHERS"].append(Bullet("misc-00001", "Use average equity for ROE.", 3, 1))
    assert book.render() == (
        "## FORMULAS & CALCULATIONS\n\n## OTHERS\n"
        "[misc-00001] helpful=3 harmful=1 :: Use average equity for ROE."
    )


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("[a-1] helpful=0 harmful=0 :: x", 1, "before the first section"),
        ("## A\n[a-1] helpful=0 harmful=0 :: x\n[a-1] helpful=0 harmful=0 :: y", 3, "repeats"),
        ("## A\n\n## A", 3, "appears twice"),
        ("## A\n- a loose note", 2, "expected"),
        ("## A\n[a-1] helpful=x harmful=0 :: y", 2, "expected"),
        ("## A\n\n\n## B", 2, "blank line"),
        ("## A\n## B", 2, "follow a blank line"),
        ("", 1, "blank line"),
    ],
)
def test_malformed_playbooks_name_the_line(text, line, problem):
    with pytest.raises(PlaybookFormatError) as err:
        Playbook.parse(text)
    assert err.value.line == line and problem in str(err.value)


def test_a_hand_written_playbook_is_read_leniently_but_never_guessed():
    text = "\n## A  \n\n[a-1] helpful=2 harmful=0 :: keep   \n\n\n## B\n"
    book = Playbook.parse(text, strict=False)
    assert book.sections == {"A": [Bullet("a-1", "keep", 2, 0)], "B": []}
    with pytest.raises(PlaybookFormatError, match="line 2"):
        Playbook.parse("## A\n* not a bullet", strict=False)


# -- operations ---------------------------------------------------------------------------------


def book3() -> Playbook:
    return Playbook(
        {
            "STRATEGIES & INSIGHTS": [Bullet("str-00001", "Read the question twice.", 4, 1)],
            "FORMULAS & CALCULATIONS": [
                Bullet("calc-00002", "ROE divides net income by average equity.", 2, 0),
                Bullet("calc-00003", "Margins are percentages of revenue.", 1, 3),
            ],
            "OTHERS": [],
        }
    )


def ops(*raw: dict, stamp: int = 1) -> list[StampedOp]:
    return [StampedOp(f"o{k}", validate_operation(r), stamp) for k, r in enumerate(raw)]


def outcome_of(applied, op_id):
    return next(o for o in applied.outcomes if o.op_id == op_id)


def test_add_appends_a_fresh_bullet_and_moves_the_counter():
    res = apply_operations(
        book3(), ops({"type": "ADD", "section": "formulas_and_calculations", "content": "CAGR "
                      "annualises over the years between the two dates."}), 10)  # fmt: skip
    new = res.playbook.sections["FORMULAS & CALCULATIONS"][-1]
    assert new == Bullet("calc-00010", new.text, 0, 0) and res.next_id == 11
    assert outcome_of(res, "o0").bullet_id == "calc-00010"


def test_add_to_a_missing_section_goes_to_others():
    res = apply_operations(
        book3(), ops({"type": "ADD", "section": "Tax tricks", "content": "New"}), 5
    )
    assert res.playbook.sections["OTHERS"] == [Bullet("misc-00005", "New")]
    assert "not in the playbook" in outcome_of(res, "o0").reason


def test_update_merge_and_delete():
    res = apply_operations(
        book3(),
        ops(
            {"type": "UPDATE", "id": "str-00001", "content": "Read the question three times."},
            {"type": "MERGE", "ids": ["calc-00002", "calc-00003"],
             "content": "Returns use average balances; margins are percentages."},
            {"type": "ADD", "section": "OTHERS", "content": "A lone note about taxes."},
        ),
        7,
    )  # fmt: skip
    assert all(o.status == "applied" for o in res.outcomes)
    book = res.playbook
    assert book.get("str-00001") == Bullet("str-00001", "Read the question three times.", 4, 1)
    assert book.sections["FORMULAS & CALCULATIONS"] == [
        Bullet("calc-00007", "Returns use average balances; margins are percentages.", 3, 3)
    ]
    res2 = apply_operations(book, ops({"type": "DELETE", "id": "calc-00007"}), res.next_id)
    assert res2.playbook.sections["FORMULAS & CALCULATIONS"] == []


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "UPDATE", "id": "calc-99999", "content": "x"},
        {"type": "DELETE", "id": "calc-99999"},
        {"type": "MERGE", "ids": ["calc-00002", "calc-99999"], "content": "x"},
    ],
)
def test_an_invalid_id_is_rejected_and_the_rest_applies(raw):
    res = apply_operations(
        book3(), ops(raw, {"type": "ADD", "section": "OTHERS", "content": "Still added."}), 4
    )
    bad, good = res.outcomes
    assert bad.status == "rejected" and "calc-99999" in bad.reason
    assert good.status == "applied" and res.playbook.get("misc-00004") is not None
    assert res.playbook.get("calc-00002") is not None  # an invalid MERGE touches nothing


@pytest.mark.parametrize(
    ("first", "second", "survivor_text"),
    [
        ({"type": "UPDATE", "id": "calc-00003", "content": "Margins are percent."},
         {"type": "DELETE", "id": "calc-00003"}, "Margins are percent."),
        ({"type": "DELETE", "id": "calc-00003"},
         {"type": "UPDATE", "id": "calc-00003", "content": "Margins are percent."}, None),
        ({"type": "DELETE", "id": "calc-00003"},
         {"type": "MERGE", "ids": ["calc-00002", "calc-00003"], "content": "Both."}, None),
        ({"type": "MERGE", "ids": ["calc-00002", "calc-00003"], "content": "Both merged."},
         {"type": "UPDATE", "id": "calc-00003", "content": "Too late."}, None),
    ],
)  # fmt: skip
def test_conflicting_operations_in_one_batch_first_claim_wins(first, second, survivor_text):
    res = apply_operations(book3(), ops(first, second), 9)
    assert [o.status for o in res.outcomes] == ["applied", "rejected"]
    assert "already claimed by operation o0" in res.outcomes[1].reason
    kept = res.playbook.get("calc-00003")
    assert (kept.text if kept else None) == survivor_text
    # deterministic: the same batch gives the same playbook
    assert apply_operations(book3(), ops(first, second), 9).playbook == res.playbook


def test_a_merge_of_a_bullet_deleted_earlier_is_rejected():
    deleted = apply_operations(book3(), ops({"type": "DELETE", "id": "calc-00002"}), 4).playbook
    res = apply_operations(
        deleted, ops({"type": "MERGE", "ids": ["calc-00002", "calc-00003"], "content": "x y"}), 4
    )
    assert res.outcomes[0].status == "rejected" and "no bullet calc-00002" in res.outcomes[0].reason
    assert res.playbook == deleted


def test_near_duplicates_are_rejected_unless_dedup_is_off():
    dup = {"type": "ADD", "section": "OTHERS", "content": "Margins are percentages of the revenue."}
    res = apply_operations(book3(), ops(dup), 4)
    assert res.outcomes[0].status == "rejected" and "near-duplicate of bullet calc-00003" in (
        res.outcomes[0].reason
    )
    assert apply_operations(book3(), ops(dup), 4, dedup_threshold=None).outcomes[0].status == (
        "applied"
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"type": "ADD", "section": "A"}, "content"),
        ({"type": "ADD", "section": "A", "content": "   "}, "empty"),
        ({"type": "ADD", "section": "A", "content": "x" * (MAX_BULLET_CHARS + 1)}, "at most"),
        ({"type": "RENAME", "id": "a"}, "type must be one of"),
        ({"type": "MERGE", "ids": ["a"], "content": "x"}, "ids"),
        ({"type": "MERGE", "ids": ["a", "a"], "content": "x"}, "repeat"),
        ({"type": "DELETE"}, "id"),
        ("DELETE a-1", "operation"),
    ],
)
def test_operations_are_validated_one_by_one(raw, problem):
    with pytest.raises(ValueError, match=problem):
        validate_operation(raw)


def test_lenient_spellings_of_operations():
    op = validate_operation({"type": "merge", "source_ids": ["a-1", "b-2"], "text": "x\n y"})
    assert (op.type, op.ids, op.content) == ("MERGE", ["a-1", "b-2"], "x y")
    assert validate_operation({"type": "Update", "bullet_id": "a-1", "content": "z"}).id == "a-1"


def test_counter_tags_and_refine():
    book = book3()
    counts = apply_tags(
        book, [("str-00001", "helpful"), ("calc-00003", "harmful"), ("gone-1", "helpful")]
    )
    assert counts == {"helpful": 1, "harmful": 1, "neutral": 0, "gone": 1}
    assert book.get("str-00001").helpful == 5 and book.get("calc-00003").harmful == 4
    book.sections["OTHERS"].append(Bullet("misc-00009", "Read the question twice!", 1, 0))
    assert refine(book, 0.8) == [("str-00001", "misc-00009")]
    assert book.get("str-00001") == Bullet("str-00001", "Read the question twice.", 6, 1)
    assert similarity("a b c", "a b c") == 1.0 and similarity("a b", "c d") == 0.0


# -- parsers ------------------------------------------------------------------------------------


def test_generator_answers():
    good = {"reasoning": "r", "bullet_ids": ["calc-00002", "[str-00001]"], "final_answer": 12.5}
    parsed = parse_generator("Sure:\n```json\n" + json.dumps(good) + "\n```")
    assert parsed.answer == "12.5" and parsed.bullet_ids == ["calc-00002", "str-00001"]
    assert "truncated" in parse_generator(json.dumps(good), "length")
    assert "final_answer" in parse_generator('{"reasoning": "r"}')
    assert "not a list" in parse_generator('{"final_answer": "1", "bullet_ids": "a"}')
    assert "no JSON" in parse_generator("The answer is 4.")
    assert "never closed" in parse_generator('```json\n{"final_answer": "1"}')


def test_reflector_answers_keep_only_tags_of_used_bullets():
    raw = {
        "diagnosis": "used the ending balance",
        "key_insight": "average the balances",
        "bullet_tags": [
            {"id": "calc-00002", "tag": "Helpful"},
            {"id": "calc-00003", "tag": "harmful"},
            {"id": "str-00001", "tag": "great"},
            "junk",
        ],
    }
    parsed = parse_reflector(json.dumps(raw), ["calc-00002", "str-00001"])
    assert parsed.tags == [("calc-00002", "helpful")] and parsed.ignored_tags == 3
    assert "key_insight" in parse_reflector('{"diagnosis": "x"}', [])
    assert "invalid JSON" in parse_reflector('{"key_insight": "x",}', [])


def test_curator_answers_keep_valid_operations_and_list_the_rest():
    raw = {
        "reasoning": "r",
        "operations": [
            {"type": "ADD", "section": "OTHERS", "content": "ok"},
            {"type": "UPDATE", "content": "no id"},
            {"type": "DELETE", "id": "calc-00002"},
            {"type": "ADD", "section": "OTHERS", "content": "<bullet text>"},
        ],
    }
    parsed = parse_curator(json.dumps(raw))
    assert [op.type for op in parsed.ops] == ["ADD", "DELETE"]
    assert parsed.invalid[0]["index"] == 1 and "id" in parsed.invalid[0]["reason"]
    assert parsed.invalid[1]["reason"] == "content is a placeholder"
    assert "operations" in parse_curator('{"reasoning": "nothing"}')
    assert "truncated" in parse_curator(json.dumps(raw), "length")
