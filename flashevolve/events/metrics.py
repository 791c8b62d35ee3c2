"""The metrics of PAPER.md section 6, defined once, computed from the event frame.

- proposal: a new artifact produced by the propose stage (``proposal_made``).
- validation sweep: one full validation-set evaluation of a proposal (``validation_finished``,
  the seed's sweep excluded).
- accepted proposal: passed the gate and was admitted for good (``admitted``, seed excluded;
  a speculative admission counts when it is confirmed, never when it is rolled back).
- best validation score over time: running maximum over admissions (a step function).
- improvement: an admission whose validation score is above every score admitted before it (the
  first admission, normally the seed, is the starting point, not an improvement).  Accepted
  proposals count throughput; improvements count progress -- a wide, stale pipeline can admit
  many children that do not raise the best score (docs/benchmarks.md section 4).
- tokens per proposal / per accepted proposal: all prompt + completion tokens of the run divided
  by the count; wasted tokens: completion tokens of requests cancelled before they finished, as
  far as the backend reports them (the simulator always; HTTP only when streaming) --
  ``cancelled_tokens_unknown`` counts the cancelled requests it could not.
- time to admission: mean seconds from a job's start to its child's admission (confirmed), and
  to its entering the pool (earlier under speculative validation).
- backend concurrency: requests at the server, a step function of time; mean is time-weighted.
  Requests a client holds back (waiting for one of its slots, or in a retry's backoff) are
  counted apart, as requests in the client: before they were, a run whose client capped requests
  at 128 reported a peak of 251 "at the server".
- utilization: generated tokens per second over the server's attainable tokens per second, when
  the backend says what it can attain (the simulator does); otherwise unknown.
- per endpoint (``endpoints``): requests answered, failed, tokens, requests moved away and
  times taken out, for each endpoint that had requests (behind a router: each server).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from flashevolve.events.endpoints import endpoint_summary
from flashevolve.events.frames import backend_load, best_score_over_time, concurrency, run_info
from flashevolve.events.schema import Kind
from flashevolve.policies.staleness import DECISIONS


def _count(df: pl.DataFrame, kind: str) -> int:
    return int(df.filter(pl.col("kind") == kind).height)


def _non_seed(df: pl.DataFrame, kind: str) -> pl.DataFrame:
    sub = df.filter(pl.col("kind") == kind)
    if sub.is_empty():
        return sub
    is_seed = pl.col("data").fill_null("").str.contains('"seed": true') | pl.col("data").fill_null(
        ""
    ).str.contains('"origin": "seed"')
    return sub.filter(~is_seed)


def _number(value: object) -> float:
    """A polars min/max of a numeric column (typed by polars as any Python value) as a float."""
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number from a numeric column, got {value!r}")
    return float(value)


def run_duration(df: pl.DataFrame) -> float:
    """Run-clock seconds from ``run_started`` to ``run_finished`` (or the last event)."""
    if df.is_empty():
        return 0.0
    starts = df.filter(pl.col("kind") == Kind.RUN_STARTED)["ts"]
    ends = df.filter(pl.col("kind") == Kind.RUN_FINISHED)["ts"]
    t0 = _number(starts.min()) if len(starts) else _number(df["ts"].min())
    t1 = _number(ends.max()) if len(ends) else _number(df["ts"].max())
    return max(0.0, t1 - t0)


def concurrency_stats(
    df: pl.DataFrame, duration: float | None = None, column: str = "at_server"
) -> tuple[float, int]:
    """(time-weighted mean, peak) of one column of :func:`frames.concurrency` over the run:
    ``at_server`` (default: requests the server has), ``in_client`` (waiting on the client's
    side) or ``in_flight`` (both)."""
    series = concurrency(df)
    if series.is_empty():
        return 0.0, 0
    t0 = _number(df["ts"].min())
    end = t0 + (duration if duration is not None else run_duration(df))
    ts = series["ts"].to_list() + [end]
    level = series[column].to_list()
    area = sum(max(0.0, min(ts[i + 1], end) - max(ts[i], t0)) * level[i] for i in range(len(level)))
    return area / max(1e-9, end - t0), int(max(level))


def generated_tokens(df: pl.DataFrame) -> int:
    """Tokens the servers generated: completions of finished requests plus what cancelled
    requests had generated, as far as the backend could tell."""
    ended = df.filter(pl.col("kind").is_in([Kind.REQUEST_FINISHED, Kind.REQUEST_CANCELLED]))
    return int(ended["completion_tokens"].fill_null(0).sum()) if ended.height else 0


def utilization(df: pl.DataFrame, duration: float | None = None) -> float | None:
    """Achieved over attainable server throughput: generated tokens per second of the run,
    divided by the ``attainable_tokens_per_s`` the run's backend declared (``run_started``;
    the simulator's profiles do, from their fitted step time).  ``None`` when the backend did
    not say what it could attain -- a number we cannot measure is not made up."""
    backend = run_info(df).get("backend") or {}
    attainable = backend.get("attainable_tokens_per_s") if isinstance(backend, dict) else None
    if not isinstance(attainable, int | float) or attainable <= 0:
        return None
    duration = run_duration(df) if duration is None else duration
    return generated_tokens(df) / max(duration, 1e-9) / attainable


def server_waiting_per_running(df: pl.DataFrame) -> float | None:
    """Requests the servers had waiting per request they were serving, averaged over their
    load reports (``backend_load`` events, a few seconds apart); ``None`` when no server
    reported.  About zero while a server has room; it rises once the server is full."""
    load = backend_load(df)
    if load.is_empty():
        return None
    running = float(load["running"].mean())  # type: ignore[arg-type]
    waiting = float(load["waiting"].mean())  # type: ignore[arg-type]
    return waiting / max(running, 1.0)


def time_to_admission(df: pl.DataFrame) -> tuple[float | None, float | None]:
    """Mean seconds from a job's start to its child's admission, over admitted children (the
    seed excluded): (to the confirmed admission, to entering the pool).  The two differ only
    under speculative validation, where a child enters the pool -- and can be chosen as a parent
    -- at its speculative admission, before its tail confirms it."""
    adm = _non_seed(df, Kind.ADMITTED).filter(pl.col("latency_s").is_not_null())
    if adm.is_empty():
        return None, None
    spec = (
        df.filter(pl.col("kind") == Kind.SPECULATIVE_ADMITTED)
        .group_by("artifact_id")
        .agg(pl.col("ts").min().alias("spec_ts"))
    )
    joined = adm.join(spec, on="artifact_id", how="left")
    early = (pl.col("ts") - pl.col("spec_ts")).fill_null(0.0)
    to_pool = joined.select((pl.col("latency_s") - early).mean()).item()
    return float(adm["latency_s"].mean()), float(to_pool)  # type: ignore[arg-type]


#: The best-score step series, as metrics and views both use it.
best_score_series = best_score_over_time


def summary(df: pl.DataFrame, duration: float | None = None) -> dict[str, Any]:
    """Every headline number of a run, keyed as ``Evolver.summary()`` and ``--json`` report."""
    duration = run_duration(df) if duration is None else duration
    minutes = max(duration / 60.0, 1e-9)
    proposals = _count(df, Kind.PROPOSAL_MADE)
    sweeps = _non_seed(df, Kind.VALIDATION_FINISHED).height
    accepted = _non_seed(df, Kind.ADMITTED).height
    finished = df.filter(pl.col("kind") == Kind.REQUEST_FINISHED)
    prompt_tokens = int(finished["prompt_tokens"].fill_null(0).sum()) if finished.height else 0
    completion_tokens = (
        int(finished["completion_tokens"].fill_null(0).sum()) if finished.height else 0
    )
    tokens = prompt_tokens + completion_tokens
    cancelled = df.filter(pl.col("kind") == Kind.REQUEST_CANCELLED)
    wasted = int(cancelled["completion_tokens"].fill_null(0).sum()) if cancelled.height else 0
    wasted_unknown = int(cancelled["completion_tokens"].is_null().sum()) if cancelled.height else 0
    best = best_score_series(df)
    improvements = max(0, int(best["is_new_best"].sum()) - 1) if best.height else 0
    seed = _seed_score(df)
    mean_conc, peak_conc = concurrency_stats(df, duration)
    mean_client, peak_client = concurrency_stats(df, duration, "in_client")
    stale = df.filter(pl.col("kind") == Kind.STALE_DETECTED)
    decisions = dict.fromkeys(DECISIONS, 0)
    for d in stale["decision"].drop_nulls().to_list():
        decisions[d] = decisions.get(d, 0) + 1
    gate_pass, gate_fail = _count(df, Kind.GATE_PASSED), _count(df, Kind.GATE_FAILED)
    to_admission, to_pool = time_to_admission(df)
    return {
        "duration_s": duration,
        "proposals": proposals,
        "proposals_per_min": proposals / minutes,
        "validations": sweeps,
        "validations_per_min": sweeps / minutes,
        "accepted": accepted,
        "accepted_per_min": accepted / minutes,
        "improvements": improvements,
        "improvements_per_min": improvements / minutes,
        "best_score": _number(best["best_score"].max()) if best.height else None,
        "time_to_admission_s": to_admission,  # mean, job start -> admitted (confirmed)
        "time_to_pool_s": to_pool,  # mean, job start -> in the pool (speculatively, if so)
        "seed_score": seed,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "tokens": tokens,
        "tokens_per_proposal": tokens / proposals if proposals else None,
        "tokens_per_accepted": tokens / accepted if accepted else None,
        "wasted_tokens": wasted,
        "cancelled_requests": cancelled.height,
        # cancelled requests whose generated tokens the backend could not tell (plain HTTP)
        "cancelled_tokens_unknown": wasted_unknown,
        "requests": finished.height,
        "failed_requests": _count(df, Kind.REQUEST_FAILED),
        "mean_concurrency": mean_conc,  # requests at the server
        "peak_concurrency": peak_conc,
        "mean_in_client": mean_client,  # requests waiting on the client's side
        "peak_in_client": peak_client,
        "utilization": utilization(df, duration),
        "server_waiting_per_running": server_waiting_per_running(df),
        "gate_pass_rate": gate_pass / (gate_pass + gate_fail) if gate_pass + gate_fail else None,
        "rejected_proposals": _count(df, Kind.PROPOSAL_REJECTED),
        "stale_seen": stale.height,
        "stale_accepted": decisions["accept"],
        "stale_patched": decisions["patch"],
        "stale_discarded": decisions["discard"],
        "stale_merged": decisions["merged"],
        "errors": _count(df, Kind.ERROR),
        **reliability(df),
        # endpoint -> requests, failed, tokens, moved_away, downs (events/endpoints.py)
        "endpoints": endpoint_summary(df),
    }


def reliability(df: pl.DataFrame) -> dict[str, Any]:
    """How the run weathered its infrastructure (docs/reliability.md): faults the client met
    (``data.fault`` on retried, accepted and failed requests), retries, hedged stragglers and
    the tokens their losing copies wasted, circuit-breaker openings, requests that failed for
    good at the infrastructure, and items the watchdog cancelled."""
    touched = df.filter(
        pl.col("kind").is_in(
            [str(Kind.REQUEST_RETRIED), str(Kind.REQUEST_FAULT), str(Kind.REQUEST_FAILED)]
        )
    )
    fault = pl.col("data").fill_null("{}").str.json_path_match("$.fault")
    faults = touched.select(fault.alias("fault")).drop_nulls()
    by_kind = (
        dict(faults.group_by("fault").len().sort("fault").iter_rows()) if faults.height else {}
    )
    resolved = df.filter(pl.col("kind") == str(Kind.HEDGE_RESOLVED))
    data = pl.col("data").fill_null("{}")
    won = resolved.filter(data.str.json_path_match("$.winner") == "hedge").height
    wasted = (
        resolved.select(
            data.str.json_path_match("$.wasted_tokens").cast(pl.Int64, strict=False).sum()
        ).item()
        if resolved.height
        else 0
    )
    states = df.filter(pl.col("kind") == str(Kind.ENDPOINT_STATE))
    failed = df.filter(pl.col("kind") == str(Kind.REQUEST_FAILED))
    return {
        "faults": int(sum(by_kind.values())),
        "faults_by_kind": by_kind,
        "retries": _count(df, Kind.REQUEST_RETRIED),
        "hedges": _count(df, Kind.REQUEST_HEDGED),
        "hedges_won": won,
        "hedge_wasted_tokens": int(wasted or 0),
        "circuit_opened": states.filter(data.str.json_path_match("$.state") == "open").height,
        "infrastructure_failures": failed.filter(
            data.str.json_path_match("$.infrastructure") == "true"
        ).height,
        "watchdog_cancelled": _count(df, Kind.WATCHDOG),
    }


def _seed_score(df: pl.DataFrame) -> float | None:
    adm = df.filter(pl.col("kind") == Kind.ADMITTED)
    if adm.is_empty():
        return None
    seeds = adm.filter(pl.col("data").fill_null("").str.contains('"origin": "seed"'))
    return float(seeds["score"][0]) if seeds.height else None
