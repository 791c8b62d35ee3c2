"""The real ``gepa`` package (0.1.4) as a measured peer, against an OpenAI-compatible server.

``run_gepa_peer`` runs ``gepa.optimize`` on a flashevolve :class:`~flashevolve.tasks.base.
PromptTask` through an adapter that evaluates a batch with a pool of threads (32 by default:
what DSPy and GEPA users set) and asks the same server for reflections, then returns what it
achieved in the numbers flashevolve reports: proposals, accepted proposals, validation sweeps
and the best validation score, per minute of wall time.

Requests carry the ``X-Flashevolve-Stage`` header (``rollout`` for traced minibatch evaluations,
``validate`` for validation, ``propose`` for reflections) so that the project's simulated server
draws their lengths per stage as it does for flashevolve's own requests; any other server
ignores it.  Nothing of gepa is changed: its engine, selection, sampling and prompts run as
shipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Any

from flashevolve.errors import ConfigError
from flashevolve.tasks.base import Example, PromptTask

STAGE_HEADER = "X-Flashevolve-Stage"


class PromptTaskAdapter:
    """A gepa adapter for a flashevolve prompt task: one chat call per example, the task's
    metric for the score and the feedback, ``threads`` examples at once."""

    #: gepa's default reflective proposer writes the new texts (with ``reflection_lm``)
    propose_new_texts = None

    def __init__(self, task: PromptTask, client: Any, model: str, *, threads: int = 32) -> None:
        if threads < 1:
            raise ConfigError("threads must be at least 1")
        self.task, self.client, self.model = task, client, model
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="gepa-peer-eval")
        self.requests = 0
        self._lock = threading.Lock()

    def chat(self, messages: list[dict[str, str]], stage: str, **options: Any) -> str:
        reply = self.client.chat.completions.create(
            model=self.model,
            messages=messages,
            extra_headers={STAGE_HEADER: stage},
            **{k: v for k, v in options.items() if v is not None},
        )
        with self._lock:
            self.requests += 1
        return reply.choices[0].message.content or ""

    def _one(self, candidate: Mapping[str, str], example: Example, stage: str) -> dict[str, Any]:
        output = self.chat(
            self.task.messages(candidate, example),
            stage,
            max_tokens=self.task.max_tokens,
            temperature=self.task.temperature,
        )
        result = self.task.metric(example, output)
        return {
            "inputs": dict(example.inputs),
            "output": output,
            "score": result.score,
            "feedback": result.feedback,
        }

    def evaluate(
        self, batch: Sequence[Example], candidate: dict[str, str], capture_traces: bool = False
    ) -> Any:
        from gepa.core.adapter import EvaluationBatch

        stage = "rollout" if capture_traces else "validate"
        traces = list(self.pool.map(lambda ex: self._one(candidate, ex, stage), batch))
        return EvaluationBatch(
            outputs=[t["output"] for t in traces],
            scores=[t["score"] for t in traces],
            trajectories=traces if capture_traces else None,
        )

    def make_reflective_dataset(
        self, candidate: dict[str, str], eval_batch: Any, components_to_update: list[str]
    ) -> dict[str, list[dict[str, Any]]]:
        records = [
            {
                "Inputs": t["inputs"].get("prompt", t["inputs"]),
                "Generated Outputs": t["output"],
                "Feedback": f"score {t['score']:.2f}: {t['feedback']}",
            }
            for t in eval_batch.trajectories or []
        ]
        return {name: records for name in components_to_update}

    def reflect(self, prompt: str | list[dict[str, Any]]) -> str:
        """gepa's ``reflection_lm``: a prompt in, the answer text out."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return self.chat(messages, "propose")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class PeerCounter:
    """gepa callbacks turned into flashevolve's counts (the seed's sweep is not counted)."""

    def __init__(self) -> None:
        self.proposals = self.accepted = self.validations = 0
        self.best_score: float | None = None

    def on_proposal_end(self, event: Mapping[str, Any]) -> None:
        self.proposals += 1

    def on_merge_attempted(self, event: Mapping[str, Any]) -> None:
        self.proposals += 1

    def on_candidate_accepted(self, event: Mapping[str, Any]) -> None:
        self.accepted += 1

    def on_valset_evaluated(self, event: Mapping[str, Any]) -> None:
        if event["iteration"] > 0:
            self.validations += 1
        score = event["average_score"]
        self.best_score = score if self.best_score is None else max(self.best_score, score)


class _Quiet:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def run_gepa_peer(
    task: PromptTask,
    base_url: str,
    model: str,
    *,
    seconds: float | None = None,
    max_metric_calls: int | None = None,
    seed: int = 0,
    threads: int = 32,
    api_key: str = "not-needed",
    **gepa_options: Any,
) -> dict[str, Any]:
    """Run ``gepa.optimize`` on ``task`` against the server at ``base_url``; return its numbers.

    Give ``seconds`` (gepa's own timeout stop, checked between iterations, so the run ends after
    the iteration in flight) and/or ``max_metric_calls``."""
    from gepa.api import optimize  # what gepa.optimize is (re-exported without __all__)
    from gepa.core.result import GEPAResult
    from gepa.utils.stop_condition import TimeoutStopCondition
    from openai import OpenAI

    if not isinstance(task, PromptTask):
        raise ConfigError(
            f"the gepa peer runs prompt tasks (one chat call per example); {task!r} is not one"
        )
    if seconds is None and max_metric_calls is None:
        raise ConfigError("give the gepa peer a budget: seconds=... and/or max_metric_calls=...")
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=8)
    adapter = PromptTaskAdapter(task, client, model, threads=threads)
    counter = PeerCounter()
    stops = [TimeoutStopCondition(seconds)] if seconds is not None else []
    t0 = time.perf_counter()
    try:
        result: GEPAResult[Any, Any] = optimize(
            seed_candidate=task.seed_artifact(),
            trainset=list(task.train),
            valset=list(task.val),
            # gepa's adapter Protocol is generic in types it cannot infer from a duck-typed
            # adapter (they come out as Never)
            adapter=adapter,  # type: ignore[arg-type]
            reflection_lm=adapter.reflect,
            max_metric_calls=max_metric_calls,
            stop_callbacks=stops or None,
            # GEPACallback lists every hook; gepa calls only those a callback has (its own doc)
            callbacks=[counter],  # type: ignore[list-item]
            logger=_Quiet(),
            seed=seed,
            **gepa_options,
        )
    finally:
        adapter.close()
        client.close()
    minutes = (time.perf_counter() - t0) / 60
    return {
        "config": "gepa (real package)",
        "peer": f"gepa {version('gepa')}",
        "threads": threads,
        "duration_s": minutes * 60,
        "proposals": counter.proposals,
        "accepted": counter.accepted,
        "validations": counter.validations,
        "proposals_per_min": counter.proposals / minutes,
        "accepted_per_min": counter.accepted / minutes,
        "validations_per_min": counter.validations / minutes,
        "best_score": counter.best_score,
        "candidates": len(result.candidates),
        "requests": adapter.requests,
    }
