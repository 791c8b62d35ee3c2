"""The live counters behind ``Evolver.status()``: folded from the events as they are logged (and
replayed over the history on resume), so a dashboard asks for numbers without reading the log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flashevolve.events.schema import Event, Kind
from flashevolve.policies.staleness import DECISIONS

#: Events counted per endpoint in ``status()["endpoints"]``.
ENDPOINT_KINDS = frozenset({Kind.REQUEST_FINISHED, Kind.REQUEST_FAILED, Kind.ENDPOINT_STATE})


def _decision_counts() -> dict[str, int]:
    return dict.fromkeys(DECISIONS, 0)


@dataclass
class LiveCounters:
    """What ``status()`` reports about the run so far, updated one event at a time."""

    proposals: int = 0
    accepted: int = 0
    generated_tokens: int = 0
    #: the backend's attainable tokens/s, if it says (``utilization``'s denominator)
    attainable: float | None = None
    best: float | None = None
    stale: dict[str, int] = field(default_factory=_decision_counts)
    #: endpoint -> its latest load report
    server_load: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: endpoint -> requests answered, failed, and its state
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)

    def count(self, event: Event) -> None:
        kind = event.kind
        if kind in (Kind.REQUEST_FINISHED, Kind.REQUEST_CANCELLED):
            self.generated_tokens += event.completion_tokens or 0
        if kind == Kind.PROPOSAL_MADE:
            self.proposals += 1
        elif kind in (Kind.ADMITTED, Kind.SCORED):
            self._count_admission(event)
        elif kind == Kind.STALE_DETECTED and event.decision:
            self.stale[event.decision] = self.stale.get(event.decision, 0) + 1
        elif kind == Kind.RUN_STARTED:
            backend = (event.data or {}).get("backend") or {}
            self.attainable = backend.get("attainable_tokens_per_s")
        elif kind == Kind.BACKEND_LOAD and event.endpoint:
            self.server_load[event.endpoint] = dict(event.data or {})
        elif kind in ENDPOINT_KINDS and event.endpoint:  # per endpoint, for the dashboard
            self._count_endpoint(event, event.endpoint)

    def _count_admission(self, event: Event) -> None:
        if event.kind == Kind.ADMITTED and (event.data or {}).get("origin") != "seed":
            self.accepted += 1
        if event.score is not None and (self.best is None or event.score > self.best):
            self.best = event.score

    def _count_endpoint(self, event: Event, endpoint: str) -> None:
        counts = self.endpoints.setdefault(endpoint, {"requests": 0, "failed": 0, "state": "up"})
        if event.kind == Kind.ENDPOINT_STATE:
            counts["state"] = (event.data or {}).get("state", counts["state"])
        else:
            counts["requests" if event.kind == Kind.REQUEST_FINISHED else "failed"] += 1

    def utilization(self, elapsed: float) -> float | None:
        """Generated tokens per second over what the server can attain (when it says)."""
        if self.attainable is None or elapsed <= 0:
            return None
        return self.generated_tokens / elapsed / self.attainable
