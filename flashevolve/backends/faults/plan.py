"""The seeded draw of faults and the count of what was injected, shared by the HTTP server and
the in-process simulator so that both inject the same way and report the same numbers."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from flashevolve.backends.faults.spec import OBSERVED_AS, FaultKind, FaultSpec


class FaultPlan:
    """Draws a fault (or none) for each arriving request and counts the injected ones.

    A fault counts as *injected* when it reached the client: an error status or a broken body
    when it is sent, a hang or a drip when it begins (the client is then stuck with it).  A
    fault drawn for a request the client abandoned first (e.g. the losing copy of a hedged
    request) never reached it and counts only as *drawn*.
    """

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._rng = random.Random(f"faults:{spec.seed}")
        self._kinds = list(spec.weights)
        self._weights = [spec.weights[k] for k in self._kinds]
        self.requests = 0
        self.drawn: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    def draw(self) -> FaultKind | None:
        self.requests += 1
        # two draws per request whatever the outcome: the same seed gives the same faults to
        # the same arrivals even if the rate changes
        hit = self._rng.random() < self.spec.rate
        kind = self._rng.choices(self._kinds, self._weights)[0]
        if not hit:
            return None
        self.drawn[kind] += 1
        return kind

    def delivered(self, kind: FaultKind) -> None:
        self.injected[kind] += 1

    def stats(self) -> dict[str, Any]:
        """What ``GET /stats`` reports under ``faults``."""
        observed: Counter[str] = Counter()
        for kind, n in self.injected.items():
            seen = OBSERVED_AS[FaultKind(kind)]
            if seen is not None:
                observed[str(seen)] += n
        return {
            "spec": self.spec.describe(),
            "requests": self.requests,
            "injected_total": sum(self.injected.values()),
            "injected": dict(sorted(self.injected.items())),
            "drawn": dict(sorted(self.drawn.items())),
            # what a client should have seen of them, by the client's fault names
            "expected_client_faults": dict(sorted(observed.items())),
        }
