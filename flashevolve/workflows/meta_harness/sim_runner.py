"""The simulator's harness runner: evaluates harnesses on virtual time without running them.

Under :class:`~flashevolve.runtime.clock.VirtualTimeLoop` waiting on a real subprocess makes
virtual time jump to the next timer, so sandbox timeouts would fire at once: simulated runs
cannot run code.  :class:`SimulatedRunner` stands in for :class:`~.runners.SandboxRunner`:

- *check*: a static check -- every ``.py`` file parses (``ast``), and the interface functions
  are defined at module level with room for their arguments -- plus ``check_s`` simulated
  seconds for the sandboxed process the real check starts;
- *evaluate*: reads the latent quality (``[[sim-quality=q]]``, :data:`.sim.SEED_QUALITY` when
  absent) and model calls per example (``[[sim-calls=k]]``) the simulated proposer wrote into
  the code, sends the k calls of each example to the simulated server (stage ``evaluate``, item
  ``<item>/<example id>``; at most ``concurrency`` examples at once, Meta-Harness's semaphore of
  16), and scores the example from the last answer (pass when q + noise >= its difficulty).

The difficulty of an example is ``example.meta["difficulty"]`` or a stable hash of its id,
spread over [0.05, 0.95].
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from flashevolve.backends.base import LLM, ChatRequest, LLMError
from flashevolve.backends.sim.workload import ANSWER_RE, filler, quality_marker, unit_hash
from flashevolve.tasks.base import Example
from flashevolve.workflows.meta_harness.harness import (
    CheckResult,
    EvaluationReport,
    ExampleOutcome,
    HarnessTask,
)
from flashevolve.workflows.meta_harness.sim import SEED_QUALITY, harness_calls, harness_quality


def example_difficulty(example: Example) -> float:
    given = example.meta.get("difficulty") if example.meta else None
    if isinstance(given, int | float):
        return float(given)
    return 0.05 + 0.9 * unit_hash("harness-difficulty", example.id)


def static_check(files: Mapping[str, str], task: HarnessTask) -> CheckResult:
    """Parse every Python file and find the interface functions, without running anything."""
    spec = task.harness
    if spec.main_file not in files:
        return CheckResult(False, f"the harness has no {spec.main_file} (files: {sorted(files)})")
    trees = {}
    for name, source in files.items():
        if not name.endswith(".py"):
            continue
        try:
            trees[name] = ast.parse(source, filename=name)
        except SyntaxError as err:
            return CheckResult(
                False, f"import check failed: SyntaxError in {name} line {err.lineno}: {err.msg}"
            )
    defined = {
        node.name: node
        for node in trees[spec.main_file].body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    problems = []
    for function, nargs in spec.functions().items():
        node = defined.get(function)
        if node is None:
            problems.append(f"{function}() is not defined")
            continue
        positional = len(node.args.posonlyargs) + len(node.args.args)
        if positional < nargs and node.args.vararg is None:
            problems.append(f"{function}() cannot be called with {nargs} argument(s)")
    if problems:
        return CheckResult(False, "interface: " + "; ".join(problems))
    return CheckResult(True, "imports and defines the interface (static check, simulated)")


class SimulatedRunner:
    """Evaluates harnesses on virtual time (see the module docstring)."""

    name = "simulated"
    runs_code = False

    def __init__(
        self,
        *,
        concurrency: int = 16,
        check_s: float = 0.5,
        start_s: float = 0.3,
        prompt_tokens: int = 600,
        max_tokens: int | None = None,
        seed_quality: float = SEED_QUALITY,
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.check_s = check_s
        self.start_s = start_s
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.seed_quality = seed_quality

    def describe(self) -> dict[str, Any]:
        return {
            "runner": self.name,
            "runs_code": False,
            "summary": "simulated runner: no harness code runs (latent quality vs difficulty)",
        }

    async def check(self, files: Mapping[str, str], task: HarnessTask) -> CheckResult:
        verdict = static_check(files, task)
        await asyncio.sleep(self.check_s)
        return verdict

    async def evaluate(
        self,
        files: Mapping[str, str],
        task: HarnessTask,
        examples: Sequence[Example],
        llm: LLM,
        *,
        stage: str,
        item_id: str,
    ) -> EvaluationReport:
        code = files.get(task.harness.main_file, "")
        quality = harness_quality(code) if "[[sim-quality=" in code else self.seed_quality
        calls = harness_calls(code)
        gate = asyncio.Semaphore(self.concurrency)
        counted = [0]
        await asyncio.sleep(self.start_s)

        async def one(example: Example) -> ExampleOutcome:
            difficulty = example_difficulty(example)
            head = (
                f"{quality_marker(quality)}\n[sim-example id={example.id} "
                f"difficulty={difficulty:.3f}]\n{task.harness_input(example)}\n"
            )
            prompt = head + filler(max(0, self.prompt_tokens * 4 - len(head)))
            answer = ""
            async with gate:
                for k in range(calls):
                    request = ChatRequest(
                        messages=[{"role": "user", "content": prompt}],
                        max_tokens=self.max_tokens,
                        stage=stage,
                        item_id=f"{item_id}/{example.id}",
                        metadata={"example_id": example.id, "call": k},
                    )
                    counted[0] += 1
                    try:
                        answer = (await llm.complete(request)).text
                    except LLMError as err:
                        return ExampleOutcome(
                            example.id, 0.0, f"The model call failed: {err}", error=str(err)
                        )
            first = answer.split("\n", 1)[0]
            found = ANSWER_RE.search(first)
            passed = found is not None and found.group(1).lower() == "pass"
            feedback = (
                "Correct (simulated)."
                if passed
                else f"Wrong (simulated): {first.removeprefix('ANSWER:').strip()}."
            )
            return ExampleOutcome(
                example.id,
                1.0 if passed else 0.0,
                feedback,
                output=first,
                trace={"calls": [{"prompt": head, "answer": first}]},
            )

        outcomes = await asyncio.gather(*(one(ex) for ex in examples))
        return EvaluationReport(list(outcomes), llm_calls=counted[0])
