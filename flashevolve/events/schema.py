"""The one typed event schema of flashevolve.

Every observable thing in a run -- an LLM request, a queue hand-off, a proposal, a gate verdict,
a staleness decision, a worker-count change -- is one :class:`Event`.  Events are flat records so
that they land in a Polars frame without reshaping; anything kind-specific goes in ``data``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import polars as pl


class Kind(StrEnum):
    RUN_STARTED = "run_started"
    RUN_FINISHED = "run_finished"
    REQUEST_STARTED = "request_started"
    REQUEST_FINISHED = "request_finished"
    REQUEST_FAILED = "request_failed"
    REQUEST_CANCELLED = "request_cancelled"
    #: a request that waited on the client's side (its queue, a retry's backoff) went to the
    #: server; data.held_from: run-clock time it started waiting (ChatRequest.on_dispatch)
    REQUEST_SENT = "request_sent"
    ITEM_ENQUEUED = "item_enqueued"
    ITEM_DEQUEUED = "item_dequeued"
    ITEM_DONE = "item_done"  # a stage finished processing an item (production-rate signal)
    ITEM_DROPPED = "item_dropped"  # work abandoned (stale discard, stop, error); data says why
    PARENT_SELECTED = "parent_selected"
    ROLLOUT_FINISHED = "rollout_finished"  # one example scored; data: score, late
    PROPOSAL_MADE = "proposal_made"
    PROPOSAL_REJECTED = "proposal_rejected"  # malformed reflection, duplicate, ...; reason says
    #: one edit of a proposal could not be applied (ACE: an invalid delta operation); the rest
    #: of the proposal went on.  data: the operation and its type; reason says why
    OPERATION_REJECTED = "operation_rejected"
    REFLECTION_SKIPPED = "reflection_skipped"  # all-perfect minibatch
    GATE_PASSED = "gate_passed"
    GATE_FAILED = "gate_failed"
    VALIDATION_FINISHED = "validation_finished"  # one full validation sweep finished
    EARLY_REJECTED = "early_rejected"  # validation stopped: the bar can no longer be cleared
    ADMITTED = "admitted"
    #: an artifact admitted earlier got its (new) validation score (ACE validates some playbook
    #: versions after admitting them); the best-score series reads these with ``admitted``
    SCORED = "scored"
    SPECULATIVE_ADMITTED = "speculative_admitted"
    SPECULATION_CONFIRMED = "speculation_confirmed"
    SPECULATION_ROLLED_BACK = "speculation_rolled_back"
    STALE_DETECTED = "stale_detected"  # lag, frontier_lag, decision, artifact_id (result)
    PATCH_MADE = "patch_made"  # data.patched_from: item ids merged into artifact_id
    WORKERS_CHANGED = "workers_changed"
    JOB_BOUND_CHANGED = "job_bound_changed"  # max_in_flight moved; data: from, to
    BACKEND_LOAD = "backend_load"  # the server's own report; data: running, waiting, kv_usage
    BUDGET_STOP = "budget_stop"
    #: an item in hand made no progress for too long and was cancelled; latency_s: how long
    WATCHDOG = "watchdog"
    #: which sandbox protections are active for generated code (Meta-Harness); data: summary
    SANDBOX_PROTECTIONS = "sandbox_protections"
    WIND_DOWN = "wind_down"  # no new jobs from here to the deadline; data: margin_s, remaining_s
    ERROR = "error"
    # -- reliability (appended; docs/reliability.md) ------------------------------------------
    # data: fault, attempt, wait_s, status, retry_after_s; latency_s: the failed attempt's time
    REQUEST_RETRIED = "request_retried"
    # a fault absorbed without a retry; data: fault, attempt, status, copy, action
    # ("accepted": the answer was kept; "twin_continues": its hedged twin still runs)
    REQUEST_FAULT = "request_fault"
    REQUEST_HEDGED = "request_hedged"  # a straggler got a second copy; data: attempt, after_s
    HEDGE_RESOLVED = "hedge_resolved"  # data: attempt, winner (primary|hedge), wasted_tokens
    # a circuit breaker changed state; data: state, previous, failures, open_s, fault
    ENDPOINT_STATE = "endpoint_state"
    # -- several endpoints (appended; docs/scale-out.md) -------------------------------------
    # a router sent the request to ``endpoint``; data: endpoint, reason (least_loaded |
    # affinity | affinity_overflow | moved), and for a move: moved_from, fault.  The request's later events carry
    # that endpoint.
    REQUEST_ROUTED = "request_routed"


@dataclass(slots=True)
class Event:
    kind: str
    ts: float = 0.0  # run-clock seconds since start (virtual under the simulator)
    wall: float = 0.0  # real seconds since start
    stage: str | None = None
    item_id: str | None = None
    artifact_id: str | None = None
    parent_id: str | None = None
    version_stamp: int | None = None  # pool_version the item was made against
    frontier_stamp: int | None = None  # frontier_version the item was made against
    pool_version: int | None = None  # pool_version when the event happened
    frontier_version: int | None = None
    lag: int | None = None  # pool_version - version_stamp
    frontier_lag: int | None = None
    request_id: str | None = None
    role: str | None = None  # "task" | "reflection" for requests
    endpoint: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    in_flight: int | None = None  # backend requests in flight right after this event
    workers: int | None = None
    score: float | None = None
    decision: str | None = None
    reason: str | None = None
    data: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in _FIELDS}


_FIELDS = dataclasses.fields(Event)

#: Polars schema of the event frame; ``data`` is kept as a JSON string column.
SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.Utf8(),
    "ts": pl.Float64(),
    "wall": pl.Float64(),
    "stage": pl.Utf8(),
    "item_id": pl.Utf8(),
    "artifact_id": pl.Utf8(),
    "parent_id": pl.Utf8(),
    "version_stamp": pl.Int64(),
    "frontier_stamp": pl.Int64(),
    "pool_version": pl.Int64(),
    "frontier_version": pl.Int64(),
    "lag": pl.Int64(),
    "frontier_lag": pl.Int64(),
    "request_id": pl.Utf8(),
    "role": pl.Utf8(),
    "endpoint": pl.Utf8(),
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
    "latency_s": pl.Float64(),
    "in_flight": pl.Int64(),
    "workers": pl.Int64(),
    "score": pl.Float64(),
    "decision": pl.Utf8(),
    "reason": pl.Utf8(),
    "data": pl.Utf8(),
}

#: Columns whose values depend on real time and so differ between two identical virtual runs.
WALL_COLUMNS = ("wall",)
