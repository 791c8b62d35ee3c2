"""GEPA building blocks: the epoch sampler and the strict reflection parser."""

import random
from collections import Counter

from flashevolve.tasks.base import Example, Rollout
from flashevolve.workflows.gepa.reflection import (
    build_reflection_prompt,
    parse_fenced,
    reflective_records,
)
from flashevolve.workflows.sampling import EpochSampler


def test_epoch_sampler_covers_every_item_each_epoch_and_pads_with_the_last_shuffled():
    """gepa counts uses afresh each epoch; among the equally used it pads with the id it saw
    last, so the padding repeats the end of the shuffled list, last first."""
    sampler = EpochSampler(7, 3, random.Random(0))
    for epoch in range(3):
        ids = [i for it in range(3 * epoch, 3 * epoch + 3) for i in sampler.batch(it)]
        assert len(ids) == 9 and set(ids) == set(range(7))
        assert sorted(Counter(ids).values()) == [1, 1, 1, 1, 1, 2, 2]
        assert ids[7:] == [ids[6], ids[5]]


def test_epoch_sampler_pads_past_one_repeat_when_the_batch_outgrows_the_split():
    order = EpochSampler(2, 5, random.Random(3)).batch(0)
    assert len(order) == 5 and sorted(Counter(order).values()) == [2, 3]
    assert order[2:] == [order[1], order[0], order[1]]


def test_epoch_sampler_is_seeded():
    a = [EpochSampler(10, 3, random.Random(4)).batch(i) for i in range(5)]
    b = [EpochSampler(10, 3, random.Random(4)).batch(i) for i in range(5)]
    assert a == b


def test_parse_takes_text_between_first_and_last_fence():
    answer = "Sure.\n```text\nLine one.\n```\nsome words\n```\nLine two.\n```\nThanks"
    assert parse_fenced(answer).text == "Line one.\n```\nsome words\n```\nLine two."


def test_parse_rejects_missing_unclosed_and_empty_blocks():
    assert parse_fenced("just prose").reason == "no fenced block in the reflection answer"
    assert "never closed" in parse_fenced("```\nhalf an instruction that got cut").reason
    assert parse_fenced("```\n   \n```").reason == "the fenced block is empty"
    assert parse_fenced("").text is None


def test_reflection_prompt_carries_records_and_the_current_text():
    examples = [Example("e1", {"prompt": "Say hi"})]
    rollouts = [Rollout("e1", "HELLO", 0.0, "expected lowercase")]
    prompt = build_reflection_prompt(
        "instruction", "Be nice.", reflective_records(examples, rollouts)
    )
    assert "Be nice." in prompt and "Say hi" in prompt and "expected lowercase" in prompt
    assert "# Example 1" in prompt and "```" in prompt
