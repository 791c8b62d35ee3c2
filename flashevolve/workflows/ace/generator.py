"""ACE's generator as a task view: the playbook in context, JSON out, the task's metric on the
final answer.

ACE does not use a task's own prompt (GEPA's ``rollout``): it builds the generator prompt from
``example.inputs`` (``question``/``prompt`` and ``context``) and scores the ``final_answer`` with
the task's ``metric(example, answer)`` (every :class:`~flashevolve.tasks.PromptTask` has one).
:class:`GeneratorView` wraps the task so that the shared evaluation machinery
(:func:`~flashevolve.workflows.evaluation.run_examples`: bounded concurrency, metric calls
counted) runs ACE's generator; :class:`GeneratorView` is what it rolls out through (``run_examples(..., task=view)``)
it.  A malformed generator answer is a rollout with score 0, ``error`` set and feedback saying
why -- recorded, never raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flashevolve.backends.base import LLM, ChatRequest, LLMError
from flashevolve.errors import ConfigError
from flashevolve.tasks.base import Example, MetricResult, Rollout, coerce_metric
from flashevolve.workflows.ace.prompts import (
    build_generator_prompt,
    clip,
    parse_generator,
    question_of,
)

COMPONENT = "playbook"


def check_task(task: Any) -> None:
    """ACE scores final answers with ``task.metric(example, answer)``; say so if it has none."""
    if not callable(getattr(task, "metric", None)):
        raise ConfigError(
            f"workflow 'ace' scores the generator's final answer with the task's "
            f"metric(example, answer); task {getattr(task, 'name', task)!r} has no metric method "
            "(use a PromptTask or add one)"
        )


def reference_text(example: Example) -> str | None:
    """What the reflector is shown as the reference answer (None when the task has none)."""
    ref = example.reference
    if ref is None:
        return None
    if isinstance(ref, Mapping):
        for key in ("answer", "target", "label"):
            if key in ref:
                return str(ref[key])
        return None
    return str(ref)


class GeneratorView:
    """A task whose ``rollout`` is ACE's generator (see the module docstring)."""

    def __init__(
        self,
        task: Any,
        *,
        max_tokens: int | None,
        temperature: float | None,
        reflection: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        check_task(task)
        self.task = task
        self.name = task.name
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.reflection = reflection
        self.extra_body = extra_body

    def describe(self) -> str:
        description: str = self.task.describe()
        return description

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
        question, context = question_of(example.inputs)
        prompt = build_generator_prompt(components[COMPONENT], question, context, self.reflection)
        messages = [{"role": "user", "content": prompt}]
        request = ChatRequest(
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=seed,
            stage=stage,
            item_id=item_id,
            metadata={"example_id": example.id, "task": self.name, "ace": "generator"},
            extra_body=self.extra_body,
        )
        trace: dict[str, Any] = {"question": question}
        try:
            result = await llm.complete(request)
        except LLMError as err:
            return Rollout(
                example.id, "", 0.0, f"The model call failed: {err}", trace=trace, error=str(err)
            )
        tokens: dict[str, Any] = {  # Rollout's two token-count fields, by name
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
        parsed = parse_generator(result.text, result.finish_reason)
        trace["finish_reason"] = result.finish_reason
        if isinstance(parsed, str):
            trace.update(malformed=parsed, reasoning="", bullet_ids=[], answer="")
            feedback = (
                f"The answer was not usable: {parsed}. The reply must be one JSON object with "
                f"'reasoning', 'bullet_ids' and 'final_answer'. It began: {clip(result.text, 200)!r}"
            )
            return Rollout(example.id, result.text, 0.0, feedback, trace, error=parsed, **tokens)
        trace.update(reasoning=parsed.reasoning, bullet_ids=parsed.bullet_ids, answer=parsed.answer)
        try:
            metric: MetricResult = coerce_metric(self.task.metric(example, parsed.answer))
        except Exception as err:  # a crashing evaluator scores 0 and says why
            why = f"{type(err).__name__}: {err}"
            return Rollout(
                example.id,
                result.text,
                0.0,
                f"The evaluator crashed: {why}",
                trace,
                error=why,
                **tokens,
            )
        return Rollout(example.id, result.text, metric.score, metric.feedback, trace, **tokens)
