"""The fault SPEC: readable items, validated with errors that name the bad item, seeded draws."""

from __future__ import annotations

from collections import Counter

import pytest

from flashevolve.backends.faults import OBSERVED_AS, FaultKind, FaultPlan, parse_fault_spec
from flashevolve.errors import ConfigError


def test_rate_alone_means_every_kind_equally() -> None:
    spec = parse_fault_spec("rate=0.25")
    assert spec is not None and spec.rate == 0.25 and spec.seed == 0
    assert set(spec.weights) == set(FaultKind) and set(spec.weights.values()) == {1.0}


def test_kinds_and_weights_and_settings() -> None:
    spec = parse_fault_spec("rate=0.1,seed=7,hang=2,http503,retry_after_s=3,drip_s=5")
    assert spec is not None
    assert spec.weights == {FaultKind.HANG: 2.0, FaultKind.HTTP503: 1.0}
    assert (spec.seed, spec.retry_after_s, spec.drip_s) == (7, 3.0, 5.0)
    # describe() gives every item back, and reads back to the same spec
    assert parse_fault_spec(spec.describe()) == spec


@pytest.mark.parametrize("off", [None, "", "none", " off "])
def test_no_faults(off: str | None) -> None:
    assert parse_fault_spec(off) is None


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("rate=0.3,hangg=1", "'hangg'"),
        ("rate=3", "rate"),
        ("rate=0", "rate"),
        ("rate=x", "rate"),
        ("hang=-1", "weight of hang"),
        ("hang=0", "at least one fault kind"),
        ("retry_after_form=never", "retry_after_form"),
        ("rate=0.2,,hang", "empty item"),
    ],
)
def test_bad_items_are_named(spec: str, named: str) -> None:
    with pytest.raises(ConfigError, match="fault spec") as err:
        parse_fault_spec(spec)
    assert named in str(err.value)
    assert "\n" not in str(err.value)


def test_draws_are_seeded_and_hit_the_rate() -> None:
    spec = parse_fault_spec("rate=0.25,seed=5")
    assert spec is not None
    a, b = FaultPlan(spec), FaultPlan(spec)
    draws = [a.draw() for _ in range(4000)]
    assert draws == [b.draw() for _ in range(4000)]
    hits = [d for d in draws if d is not None]
    assert 0.22 < len(hits) / len(draws) < 0.28
    assert set(hits) == set(FaultKind)  # every kind comes up
    assert Counter(str(h) for h in hits) == a.drawn and a.requests == 4000
    # drawn is not injected: nothing was delivered yet
    assert a.stats()["injected_total"] == 0


def test_every_kind_says_what_a_client_sees() -> None:
    assert set(OBSERVED_AS) == set(FaultKind)
