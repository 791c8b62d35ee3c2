"""The Task Protocol (what users implement for their own problems) and a ready base class.

A task owns its data splits, its seed artifact and *how one example is run*: ``rollout`` takes
the artifact's components, one example and an LLM, and returns the output, a score in [0, 1] and
textual feedback.  Most tasks are "one prompt, one answer, one checker": :class:`PromptTask`
does that from a metric function.  Agentic or code-running tasks override ``rollout``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from flashevolve.backends.base import LLM, ChatRequest, LLMError
from flashevolve.executors import is_heavy, run_heavy


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    inputs: Mapping[str, Any]
    reference: Any = None  # whatever the metric needs: gold answer, constraints, tests
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class MetricResult:
    score: float  # in [0, 1]
    feedback: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Rollout:
    """One example run under one artifact: what GEPA calls an evaluation with traces."""

    example_id: str
    output: str
    score: float
    feedback: str
    trace: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # set when the LLM call or the evaluator failed (score is 0 then)
    #: Whose failure ``error`` is, when set:
    #: - ``"infrastructure"``: the model call failed for good (connection, timeouts, 5xx,
    #:   garbage answers, rate limits, an open circuit -- after the client's retries).  The
    #:   model never answered, so the 0 is no judgement of the artifact: re-run the example or
    #:   leave it out of the comparison, never score it;
    #: - ``"request"``: the server rejected the request itself as invalid (HTTP 400/413/422,
    #:   e.g. a prompt longer than the context): asking again gives the same answer, so the 0
    #:   stands;
    #: - ``"evaluator"``: the model answered and the metric crashed on it.
    error_kind: str | None = None

    @property
    def infrastructure_failure(self) -> bool:
        return self.error_kind == "infrastructure"


@runtime_checkable
class Task(Protocol):
    name: str

    # read-only to a run (a task may keep its splits in lists, tuples, ...)
    @property
    def train(self) -> Sequence[Example]: ...

    @property
    def val(self) -> Sequence[Example]: ...

    @property
    def test(self) -> Sequence[Example]: ...

    def seed_artifact(self) -> dict[str, str]: ...

    def describe(self) -> str:
        """One paragraph about the task, shown to the reflection model (may be empty)."""
        ...

    async def rollout(
        self,
        components: Mapping[str, str],
        example: Example,
        llm: LLM,
        *,
        stage: str,
        item_id: str,
        seed: int | None = None,
    ) -> Rollout: ...


MetricFn = Callable[[Example, str], "MetricResult | tuple[float, str] | float"]
RenderFn = Callable[[Mapping[str, str], Example], list[dict[str, str]]]


def default_render(components: Mapping[str, str], example: Example) -> list[dict[str, str]]:
    """System message = the components (one, or several with headers); user = the input."""
    if len(components) == 1:
        system = next(iter(components.values()))
    else:
        system = "\n\n".join(f"## {name}\n{text}" for name, text in components.items())
    inputs = example.inputs
    if set(inputs) == {"prompt"} or "prompt" in inputs and len(inputs) == 1:
        user = str(inputs["prompt"])
    else:
        user = "\n".join(f"{k}: {v}" for k, v in inputs.items())
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def coerce_metric(value: Any) -> MetricResult:
    if isinstance(value, MetricResult):
        result = value
    elif isinstance(value, tuple) and len(value) == 2:
        result = MetricResult(float(value[0]), str(value[1]))
    elif isinstance(value, int | float):
        result = MetricResult(float(value), "")
    else:
        raise TypeError(
            f"a metric must return MetricResult, (score, feedback) or a number, got {type(value)}"
        )
    result.score = min(1.0, max(0.0, float(result.score)))
    return result


class PromptTask:
    """A task where the artifact is a system prompt and each example is one chat call."""

    #: The metric is heavy (it executes code): it runs on the run's executor -- worker threads
    #: by default, Ray tasks with ``Evolver(executor="ray")`` -- so it does not stall the event
    #: loop every other request shares (flashevolve.executors).  A metric wrapped in
    #: ``flashevolve.executors.heavy`` is heavy too.
    metric_in_thread = False

    def __init__(
        self,
        name: str,
        *,
        train: Sequence[Example],
        val: Sequence[Example],
        test: Sequence[Example] = (),
        seed: Mapping[str, str],
        metric: MetricFn,
        render: RenderFn | None = None,
        description: str = "",
        max_tokens: int | None = 512,
        temperature: float | None = 0.0,
    ) -> None:
        if not train:
            raise ValueError(f"task {name!r}: the train split is empty; give at least one example")
        if not val:
            raise ValueError(f"task {name!r}: the val split is empty; give at least one example")
        self.name = name
        self.train = list(train)
        self.val = list(val)
        self.test = list(test)
        self._seed = dict(seed)
        self._metric = metric
        self._render = render or default_render
        self.description = description
        self.max_tokens = max_tokens
        self.temperature = temperature

    def seed_artifact(self) -> dict[str, str]:
        return dict(self._seed)

    def describe(self) -> str:
        return self.description

    def metric(self, example: Example, output: str) -> MetricResult:
        return coerce_metric(self._metric(example, output))

    def heavy_metric(self) -> Callable[[Example, str], Any]:
        """What the executor runs for a heavy metric: the metric function itself -- light to
        ship to a worker process or a Ray cluster -- unless a subclass overrides ``metric``."""
        return self._metric if type(self).metric is PromptTask.metric else self.metric

    def messages(self, components: Mapping[str, str], example: Example) -> list[dict[str, str]]:
        return self._render(components, example)

    async def rollout(
        self,
        components: Mapping[str, str],
        example: Example,
        llm: LLM,
        *,
        stage: str,
        item_id: str,
        seed: int | None = None,
    ) -> Rollout:
        messages = self.messages(components, example)
        request = ChatRequest(
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=seed,
            stage=stage,
            item_id=item_id,
            metadata={"example_id": example.id, "task": self.name},
        )
        try:
            result = await llm.complete(request)
        except LLMError as err:
            infrastructure = err.infrastructure
            return Rollout(
                example.id,
                "",
                0.0,
                f"The model call failed: {err}",
                trace={
                    "messages": messages,
                    "fault": None if err.fault is None else str(err.fault),
                    "attempts": err.attempts,
                },
                error=str(err),
                error_kind="infrastructure" if infrastructure else "request",
            )
        try:
            if self.metric_in_thread or is_heavy(self._metric):
                raw = await run_heavy(self.heavy_metric(), example, result.text)
                metric = coerce_metric(raw)
            else:
                metric = self.metric(example, result.text)
        except Exception as err:  # a crashing evaluator scores 0 and says why; the run goes on
            tb = traceback.format_exception_only(type(err), err)[-1].strip()
            return Rollout(
                example.id,
                result.text,
                0.0,
                f"The evaluator crashed: {tb}",
                trace={"messages": messages},
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                error=tb,
                error_kind="evaluator",
            )
        return Rollout(
            example_id=example.id,
            output=result.text,
            score=metric.score,
            feedback=metric.feedback,
            trace={
                "messages": messages,
                "details": metric.details,
                "finish_reason": result.finish_reason,
            },
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
