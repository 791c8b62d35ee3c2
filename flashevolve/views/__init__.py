"""Views of a run: Altair charts, the ipywidgets dashboard and the offline HTML report.

Heavy imports (Altair, ipywidgets, vl-convert) happen when a view module is first used, so
``import flashevolve`` stays cheap in scripts that never draw anything.
"""

from __future__ import annotations

import importlib
import random
from typing import Any

import polars as pl

from flashevolve.events.log import events_to_frame
from flashevolve.events.schema import Event, Kind

_LAZY = {
    "throughput_chart": "flashevolve.views.charts",
    "concurrency_chart": "flashevolve.views.charts",
    "server_load_chart": "flashevolve.views.charts",
    "stage_breakdown_chart": "flashevolve.views.charts",
    "score_vs_time_chart": "flashevolve.views.charts",
    "staleness_chart": "flashevolve.views.charts",
    "lineage_chart": "flashevolve.views.charts",
    "Dashboard": "flashevolve.views.widgets",
    "dashboard": "flashevolve.views.widgets",
    "write_report": "flashevolve.views.report",
    "save_chart": "flashevolve.views.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flashevolve.views' has no attribute {name!r}")


def example_events(mode: str = "async", *, seed: int = 0, iterations: int = 24) -> pl.DataFrame:
    """A small *synthetic* event log, for previewing charts and testing views without a run.

    Nothing is executed: timings and scores are drawn from a seeded RNG.  ``run_started`` marks
    the log ``simulated`` and ``synthetic`` so every chart title says "(simulated)".  In "async"
    mode iterations overlap (stale work appears and is accepted, patched, merged or discarded);
    in "sync" mode they run one after another.  A pretend 8-slot server reports its load every
    5 s (``backend_load`` events).
    """
    rng = random.Random(seed)
    raw: list[dict[str, Any]] = []
    info = {"mode": mode, "workflow": "gepa", "task": "example", "seed": seed}
    raw.append(
        {
            "kind": Kind.RUN_STARTED,
            "ts": 0.0,
            "data": {**info, "simulated": True, "synthetic": True},
        }
    )
    raw.append(
        {
            "kind": Kind.ADMITTED,
            "ts": 0.0,
            "artifact_id": "a0",
            "score": 0.40,
            "data": {"origin": "seed", "parents": []},
        }
    )
    req = 0

    def request(stage: str, item: str, role: str, start: float, dur: float) -> float:
        nonlocal req
        req += 1
        rid = f"r{req}"
        common = {"stage": stage, "item_id": item, "request_id": rid, "role": role}
        common["endpoint"] = "sim://example"
        raw.append({"kind": Kind.REQUEST_STARTED, "ts": start, **common})
        raw.append(
            {
                "kind": Kind.REQUEST_FINISHED,
                "ts": start + dur,
                **common,
                "prompt_tokens": rng.randint(300, 900),
                "completion_tokens": rng.randint(50, 400),
                "latency_s": dur,
            }
        )
        return start + dur

    def stage_item(stage: str, item: str, start: float, work: float, wait: float) -> float:
        raw.append({"kind": Kind.ITEM_ENQUEUED, "ts": start, "stage": stage, "item_id": item})
        raw.append(
            {
                "kind": Kind.ITEM_DEQUEUED,
                "ts": start + wait,
                "stage": stage,
                "item_id": item,
                "data": {"wait_s": wait},
            }
        )
        raw.append(
            {
                "kind": Kind.ITEM_DONE,
                "ts": start + wait + work,
                "stage": stage,
                "item_id": item,
                "latency_s": work,
            }
        )
        return start + wait + work

    spacing = 6.0 if mode == "async" else 0.0
    t_sync = 0.0
    candidates: list[tuple[str, float]] = [("a0", 0.40)]
    pending: list[dict[str, Any]] = []  # children waiting for admission, resolved in time order
    for i in range(1, iterations + 1):
        item = f"i{i}"
        t0 = i * spacing if mode == "async" else t_sync
        parent, pscore = rng.choice(candidates[-4:])
        raw.append({"kind": Kind.PARENT_SELECTED, "ts": t0, "item_id": item, "artifact_id": parent})
        ends = [request("rollout", item, "task", t0 + 0.1 * k, rng.uniform(2, 5)) for k in range(3)]
        t1 = stage_item("rollout", item, t0, max(ends) - t0, 0.0)
        wait = rng.uniform(0, 2) if mode == "async" else 0.0
        t2 = request("propose", item, "reflection", t1 + wait, rng.uniform(4, 9))
        t2 = stage_item("propose", item, t1, t2 - t1 - wait, wait)
        child = f"a{i}"
        raw.append(
            {
                "kind": Kind.PROPOSAL_MADE,
                "ts": t2,
                "stage": "propose",
                "item_id": item,
                "artifact_id": child,
                "parent_id": parent,
            }
        )
        ends = [request("gate", item, "task", t2 + 0.1 * k, rng.uniform(2, 5)) for k in range(3)]
        t3 = stage_item("gate", item, t2, max(ends) - t2, 0.0)
        score = min(1.0, max(0.0, pscore + rng.gauss(0.02, 0.06)))
        passed = score > pscore
        raw.append(
            {
                "kind": Kind.GATE_PASSED if passed else Kind.GATE_FAILED,
                "ts": t3,
                "item_id": item,
                "artifact_id": child,
                "parent_id": parent,
                "score": round(score * 3, 3),
                "data": {"parent_sum": round(pscore * 3, 3)},
            }
        )
        t_end = t3
        if passed:
            ends = [
                request("validate", item, "task", t3 + 0.1 * k, rng.uniform(2, 6)) for k in range(5)
            ]
            t_end = stage_item("validate", item, t3, max(ends) - t3, 0.0)
            raw.append(
                {
                    "kind": Kind.VALIDATION_FINISHED,
                    "ts": t_end,
                    "artifact_id": child,
                    "score": score,
                    "data": {"n": 5},
                }
            )
            pending.append(
                {"ts": t_end, "item": item, "child": child, "parent": parent, "score": score}
            )
            candidates.append((child, score))
        t_sync = t_end + 0.5
    # admissions in time order, so pool versions and lags are consistent
    version = 1
    made_at = {e["item_id"]: e["ts"] for e in raw if e["kind"] == Kind.PARENT_SELECTED}
    admitted_at: list[float] = [0.0]
    admitted_ids = ["a0"]
    for p in sorted(pending, key=lambda p: p["ts"]):
        lag = sum(1 for t in admitted_at if made_at[p["item"]] < t <= p["ts"])
        origin, parents, patched = "reflection", [p["parent"]], []
        if lag > 0:
            decision = rng.choice(["accept", "accept", "patch", "merged", "discard"])
            raw.append(
                {
                    "kind": Kind.STALE_DETECTED,
                    "ts": p["ts"],
                    "stage": "validate",
                    "item_id": p["item"],
                    "artifact_id": p["child"],
                    "lag": lag,
                    "frontier_lag": rng.randint(0, lag),
                    "decision": decision,
                    "reason": "synthetic",
                }
            )
            if decision == "discard":
                raw.append(
                    {
                        "kind": Kind.ITEM_DROPPED,
                        "ts": p["ts"],
                        "stage": "validate",
                        "item_id": p["item"],
                    }
                )
                continue
            if decision in ("patch", "merged"):
                origin = "patch" if decision == "patch" else "merge"
                newest = admitted_ids[-1]
                parents = [p["parent"], newest] if newest != p["parent"] else [p["parent"]]
                patched = [p["item"]]
        version += 1
        admitted_at.append(p["ts"])
        admitted_ids.append(p["child"])
        raw.append(
            {
                "kind": Kind.ADMITTED,
                "ts": p["ts"],
                "artifact_id": p["child"],
                "parent_id": parents[0],
                "score": p["score"],
                "pool_version": version,
                "frontier_version": version,
                "data": {"origin": origin, "parents": parents, "patched_from": patched},
            }
        )
    end = max(e["ts"] for e in raw) + 1.0
    raw.append({"kind": Kind.RUN_FINISHED, "ts": end, "data": info})
    raw.sort(key=lambda e: e["ts"])
    in_flight = 0
    events = []
    for e in raw:
        if e["kind"] == Kind.REQUEST_STARTED:
            in_flight += 1
            e["in_flight"] = in_flight
        elif e["kind"] == Kind.REQUEST_FINISHED:
            in_flight -= 1
            e["in_flight"] = in_flight
        e["kind"] = str(e["kind"])
        e["wall"] = e["ts"]
        events.append(Event(**e))
    events = _with_server_load(events, end)
    return events_to_frame(events)


def _with_server_load(events: list[Event], end: float, slots: int = 8) -> list[Event]:
    """Add what a pretend ``slots``-slot server would report every 5 s (synthetic, like the
    rest): requests beyond its slots wait."""
    samples, in_flight, i = [], 0, 0
    for k in range(int(end // 5) + 1):
        t = 5.0 * k
        while i < len(events) and events[i].ts <= t:
            if events[i].in_flight is not None:
                in_flight = events[i].in_flight
            i += 1
        running, waiting = min(in_flight, slots), max(0, in_flight - slots)
        data = {"running": running, "waiting": waiting, "kv_usage": round(running / slots, 3)}
        samples.append(
            Event(kind=str(Kind.BACKEND_LOAD), ts=t, wall=t, endpoint="sim://example", data=data)
        )
    return sorted(events + samples, key=lambda e: e.ts)


__all__ = [
    "Dashboard",
    "concurrency_chart",
    "dashboard",
    "example_events",
    "lineage_chart",
    "save_chart",
    "score_vs_time_chart",
    "server_load_chart",
    "stage_breakdown_chart",
    "staleness_chart",
    "throughput_chart",
    "write_report",
]
