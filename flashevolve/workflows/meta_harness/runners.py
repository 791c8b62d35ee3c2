"""How a candidate harness is checked and evaluated: the :class:`HarnessRunner` Protocol.

- :class:`SandboxRunner` really runs the harness, in :mod:`flashevolve.sandbox` (namespaces,
  Landlock, rlimits; docs/security.md).  The check is one short sandboxed process that imports
  the harness and inspects the interface; the evaluation is ``processes`` sandboxed sessions
  per candidate, each calling ``setup`` once and then ``predict`` for its share of the examples,
  every call bounded (``predict_timeout_s``) and the whole candidate bounded
  (``candidate_timeout_s``, ``max_llm_calls``).  The harness reaches the model only through the
  sandbox channel, forwarded through the run's instrumented backend with stage and item
  ``<item>/<example id>``.
- :class:`~flashevolve.workflows.meta_harness.sim_runner.SimulatedRunner` (virtual time) runs no
  code.

A runner needs nothing of the run but an :class:`~flashevolve.backends.base.LLM`, so it can be
driven from another thread with its own event loop: wrap the run's LLM in
:class:`ThreadsafeLLM` (see its docstring) -- the shape a process- or Ray-backed runner takes.
"""

from __future__ import annotations

import asyncio
import math
import traceback
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, Protocol, runtime_checkable

from flashevolve.backends.base import LLM, ChatRequest, ChatResult
from flashevolve.errors import ConfigError
from flashevolve.sandbox import (
    CallResult,
    LLMCall,
    Sandbox,
    SandboxConfig,
    SandboxResult,
    llm_forwarder,
)
from flashevolve.tasks.base import Example
from flashevolve.workflows.meta_harness.harness import (
    CheckResult,
    EvaluationReport,
    ExampleOutcome,
    HarnessTask,
    harness_files,
)

DRIVER_FILE = "fe_harness.py"
#: characters of each model prompt / answer kept in an example's trace
TRACE_CHARS = 1500


def driver_source() -> str:
    return resources.files(__package__).joinpath("inside", DRIVER_FILE).read_text("utf-8")


@runtime_checkable
class HarnessRunner(Protocol):
    """Checks and evaluates harnesses.  Small on purpose: a process pool or Ray cluster can
    implement the same two coroutines."""

    name: str
    #: True when the runner executes the harness's code (then the run must log the sandbox's
    #: protections and refuse to run without any)
    runs_code: bool

    def describe(self) -> dict[str, Any]:
        """What the run logs at start (for a code runner: the sandbox's protections); raises
        :class:`~flashevolve.sandbox.SandboxRefused` when the code may not run here."""
        ...

    async def check(self, files: Mapping[str, str], task: HarnessTask) -> CheckResult: ...

    async def evaluate(
        self,
        files: Mapping[str, str],
        task: HarnessTask,
        examples: Sequence[Example],
        llm: LLM,
        *,
        stage: str,
        item_id: str,
    ) -> EvaluationReport: ...


class SandboxRunner:
    """Runs harnesses in the sandbox (see the module docstring for the bounds)."""

    name = "sandbox"
    runs_code = True

    def __init__(
        self,
        *,
        processes: int = 2,
        check_timeout_s: float = 30.0,
        setup_timeout_s: float = 120.0,
        predict_timeout_s: float = 60.0,
        candidate_timeout_s: float = 900.0,
        max_llm_calls: int = 400,
        max_llm_concurrency: int = 4,
        memory_mb: int = 1024,
        cpu_s: int = 120,
        allow_unsandboxed: bool = False,
        sandbox: SandboxConfig | Mapping[str, Any] | None = None,
    ) -> None:
        if processes < 1:
            raise ConfigError("runner processes must be at least 1")
        self.processes = processes
        self.check_timeout_s = check_timeout_s
        self.setup_timeout_s = setup_timeout_s
        self.predict_timeout_s = predict_timeout_s
        self.candidate_timeout_s = candidate_timeout_s
        self.max_llm_calls = max_llm_calls
        base = SandboxConfig.of(
            sandbox,
            timeout_s=predict_timeout_s,
            session_timeout_s=candidate_timeout_s,
            cpu_s=cpu_s,
            memory_mb=memory_mb,
            max_llm_concurrency=max_llm_concurrency,
            max_llm_calls=max(1, math.ceil(max_llm_calls / processes)),
            allow_unsandboxed=allow_unsandboxed,
        )
        self.sandbox = Sandbox(base)
        self.check_sandbox = Sandbox(base, timeout_s=check_timeout_s, max_llm_calls=0)

    def describe(self) -> dict[str, Any]:
        prot = self.sandbox.check()  # raises SandboxRefused when nothing isolates the code
        return {
            "runner": self.name,
            "runs_code": True,
            "summary": prot.summary(),
            "active": list(prot.active()),
            "isolated": prot.isolated,
            "allow_unsandboxed": self.sandbox.config.allow_unsandboxed,
            "notes": list(prot.notes),
            "protections": prot.as_dict(),
        }

    def _files(self, files: Mapping[str, str]) -> dict[str, str]:
        out = harness_files(files)
        if DRIVER_FILE in out:
            raise ValueError(f"a harness may not ship a file named {DRIVER_FILE}")
        out[DRIVER_FILE] = driver_source()
        return out

    # -- the import and interface check ------------------------------------------------------------
    async def check(self, files: Mapping[str, str], task: HarnessTask) -> CheckResult:
        spec = task.harness
        if spec.main_file not in files:
            return CheckResult(
                False, f"the harness has no {spec.main_file} (files: {sorted(files)})"
            )
        try:
            shipped = self._files(files)
        except ValueError as err:
            return CheckResult(False, str(err))
        args = {"module": spec.module, "functions": spec.functions()}
        result = await self.check_sandbox.run(files=shipped, entry="fe_harness:check", args=args)
        return check_verdict(result)

    # -- the evaluation ----------------------------------------------------------------------------
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
        shipped = self._files(files)
        outcomes: dict[int, ExampleOutcome] = {}
        shares = [list(range(i, len(examples), self.processes)) for i in range(self.processes)]
        shares = [s for s in shares if s]
        calls = [0]
        aborted: list[str] = []

        async def run_share(indices: list[int]) -> None:
            share = _Share(self, task, shipped, examples, indices, llm, stage, item_id)
            try:
                await share.run(outcomes)
            finally:
                calls[0] += share.llm_calls
                if share.aborted:
                    aborted.append(share.aborted)

        await asyncio.gather(*(run_share(s) for s in shares))
        ordered = [outcomes[i] for i in range(len(examples))]
        return EvaluationReport(
            ordered,
            aborted="; ".join(dict.fromkeys(aborted)) or None,  # each reason once
            llm_calls=calls[0],
            details={"processes": len(shares)},
        )


def check_verdict(result: SandboxResult) -> CheckResult:
    """A CheckResult from the sandboxed check's result (statuses come from the parent)."""
    details = {"status": result.status, "stderr_tail": _tail(result.stderr)}
    if not result.ok:
        why = result.program_error or result.reason
        return CheckResult(False, f"import check failed ({result.status}): {why}", details)
    value = result.value if isinstance(result.value, dict) else {}
    problems = value.get("problems")
    if not isinstance(problems, list):
        return CheckResult(False, "the import check returned nothing usable", details)
    if problems:
        return CheckResult(False, "interface: " + "; ".join(map(str, problems))[:500], details)
    return CheckResult(True, "imports and defines the interface", details)


class _Share:
    """One sandboxed session evaluating some of the examples (setup once, then predict)."""

    def __init__(
        self,
        runner: SandboxRunner,
        task: HarnessTask,
        files: dict[str, str],
        examples: Sequence[Example],
        indices: list[int],
        llm: LLM,
        stage: str,
        item_id: str,
    ) -> None:
        self.runner, self.task, self.files = runner, task, files
        self.examples, self.indices = examples, indices
        self.llm, self.stage, self.item_id = llm, stage, item_id
        self.current = "setup"
        self.calls_by_part: dict[str, list[dict[str, str]]] = {}
        self.llm_calls = 0
        self.aborted: str | None = None

    async def handle(self, call: LLMCall) -> str:
        """Forward one model call with the current example as its item; keep it for the trace."""
        part = self.current
        forward = llm_forwarder(
            self.llm,
            stage=self.stage,
            item_id=f"{self.item_id}/{part}",
            metadata={"example_id": part},
        )
        self.llm_calls += 1
        answer = await forward(call)
        prompt = "\n".join(f"[{m['role']}] {m['content']}" for m in call.messages)
        self.calls_by_part.setdefault(part, []).append(
            {"prompt": _clip(prompt), "answer": _clip(answer)}
        )
        return answer

    async def run(self, outcomes: dict[int, ExampleOutcome]) -> None:
        spec = self.task.harness
        session = self.runner.sandbox.session("fe_harness", files=self.files, llm=self.handle)
        pending = list(self.indices)
        try:
            async with asyncio.timeout(self.runner.candidate_timeout_s):
                ready = await session.start()
                if not ready.ok:
                    self.aborted = f"the harness process did not start: {ready.error}"
                    return
                driver_spec = {"module": spec.module, "setup": spec.setup, "predict": spec.predict}
                setup = await session.call(
                    "setup", driver_spec, self.task.memory(), timeout_s=self.runner.setup_timeout_s
                )
                if not setup.ok:
                    self.aborted = f"setup failed ({setup.status}): {_error_line(setup)}"
                    return
                while pending:
                    index = pending[0]
                    example = self.examples[index]
                    self.current = example.id
                    result = await session.call(
                        "predict",
                        self.task.harness_input(example),
                        timeout_s=self.runner.predict_timeout_s,
                    )
                    outcomes[index] = self.outcome(example, result)
                    pending.pop(0)
                    if result.status in ("timeout", "dead"):
                        self.aborted = (
                            f"the harness process ended on example {example.id} "
                            f"({result.status}: {_error_line(result)})"
                        )
                        return
        except TimeoutError:
            self.aborted = (
                f"the candidate's time budget ({self.runner.candidate_timeout_s:g} s) ran out"
            )
        finally:
            final = await _close(session)
            for index in pending:
                if index not in outcomes:
                    why = self.aborted or (final.reason if final else "not run")
                    outcomes[index] = not_run(self.examples[index], why)

    def outcome(self, example: Example, result: CallResult) -> ExampleOutcome:
        trace: dict[str, Any] = {"calls": self.calls_by_part.pop(example.id, [])}
        if not result.ok:
            error = _error_line(result)
            trace["traceback"] = _tail(result.traceback or "", 12)
            return ExampleOutcome(
                example.id,
                0.0,
                f"The harness failed on this example ({result.status}): {error}",
                error=f"{result.status}: {error}",
                trace=trace,
            )
        reply = result.value if isinstance(result.value, dict) else {}
        value = reply.get("value")
        trace["stdout"] = str(reply.get("stdout", ""))[:2000]
        trace["seconds"] = reply.get("seconds")
        try:
            metric = self.task.score(example, value)
        except Exception as err:  # a crashing scorer scores 0 and says why; the run goes on
            line = traceback.format_exception_only(type(err), err)[-1].strip()
            return ExampleOutcome(
                example.id, 0.0, f"The scorer crashed: {line}", _clip(str(value)), line, trace
            )
        return ExampleOutcome(
            example.id, metric.score, metric.feedback, _clip(str(value)), None, trace
        )


def not_run(example: Example, why: str) -> ExampleOutcome:
    return ExampleOutcome(example.id, 0.0, f"Not run: {why}", error=f"not run: {why}")


async def _close(session: Any) -> SandboxResult | None:
    try:
        return await asyncio.shield(session.close())
    except Exception:  # never started (the sandbox refused, ...): nothing to report
        return None


def _error_line(result: CallResult) -> str:
    return str(result.error or "no error message")[:400]


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])[-1500:]


def _clip(text: str, limit: int = TRACE_CHARS) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 14] + " [... clipped]"


class ThreadsafeLLM:
    """An LLM usable from another thread's event loop: each request runs on ``loop`` (the run's
    loop, where the instrumented backend lives) and the caller awaits it from its own loop.

    ``asyncio.run(runner.evaluate(..., llm=ThreadsafeLLM(ctx.task_llm, loop)))`` in a worker
    thread evaluates a harness off the run's loop; requests still appear in the run's log with
    their stage and item.  Cancelling the caller cancels the request on ``loop``.
    """

    def __init__(self, llm: LLM, loop: asyncio.AbstractEventLoop) -> None:
        self.llm, self.loop = llm, loop
        self.model, self.endpoint = llm.model, llm.endpoint

    async def complete(self, request: ChatRequest) -> ChatResult:
        future = asyncio.run_coroutine_threadsafe(self.llm.complete(request), self.loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    async def aclose(self) -> None:
        return None
