"""Run model-written Python against unit tests (the HumanEval-style metric) in the sandbox.

Each program runs in :mod:`flashevolve.sandbox` (namespaces, a private read-only filesystem,
Landlock, resource limits; see ``docs/security.md``) with a wall-clock timeout that kills it and
everything it started.  A crashing or hanging program scores 0 with a feedback line; it never
takes the run down.  On a machine with no isolation at all the task refuses to load unless the
caller passes ``allow_unsandboxed=True``.
"""

from __future__ import annotations

import functools
import math
import re

from flashevolve.sandbox import Sandbox, SandboxConfig, SandboxResult
from flashevolve.tasks.base import Example, MetricResult, PromptTask


@functools.cache
def code_sandbox(
    timeout_s: float = 10.0, memory_mb: int = 1024, allow_unsandboxed: bool = False
) -> Sandbox:
    """The sandbox unit tests run in (one per setting; a Sandbox holds no per-run state).  The
    CPU limit sits above the wall-clock one, so a busy loop is reported as a timeout."""
    return Sandbox(
        SandboxConfig(
            timeout_s=timeout_s,
            cpu_s=math.ceil(timeout_s) + 1,
            memory_mb=memory_mb,
            max_llm_calls=0,
            allow_unsandboxed=allow_unsandboxed,
        )
    )


def run_python(
    source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, allow_unsandboxed: bool = False
) -> SandboxResult:
    """Run ``source`` as a script in the sandbox (blocking: call it from a worker thread, a
    worker process or a Ray task)."""
    sandbox = code_sandbox(timeout_s, memory_mb, allow_unsandboxed)
    return sandbox.run_sync(source, entry="program.py")


def extract_code(output: str, entry_point: str) -> str:
    """The fenced block defining ``entry_point`` (else the longest block, else the raw text)."""
    blocks: list[str] = re.findall(
        r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", output, flags=re.S
    )
    if not blocks:
        return output
    for block in blocks:
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", block, flags=re.M):
            return block
    return max(blocks, key=len)


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """Stub + completion + tests + ``check(entry_point)``.

    A completion that redefines the function is appended after the stub (closed with
    ``pass``) so it overrides it while keeping the stub's imports and helpers; a completion
    that is only a body continues the stub, indented if the model forgot to.
    """
    code = extract_code(completion, entry_point)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, flags=re.M):
        body = prompt.rstrip() + "\n    pass\n\n" + code
    else:
        lines = code.splitlines()
        first = next((ln for ln in lines if ln.strip()), "")
        if first and not first[0].isspace():
            code = "\n".join("    " + ln if ln.strip() else ln for ln in lines)
        body = prompt + code
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"


def _tail(stderr: str, lines: int = 6, chars: int = 700) -> str:
    """The end of the traceback on one line, without temp paths or ^^^ marker lines."""
    kept: list[str] = []
    for line in stderr.strip().splitlines():
        line = re.sub(r'File "[^"]*program\.py", line (\d+)(, in (\S+))?', r"line \1\2", line)
        if line.strip() and not re.fullmatch(r"[\s^~]+", line) and not line.startswith("Trace"):
            kept.append(line.strip())
    text = " | ".join(kept[-lines:])
    return text if len(text) <= chars else "..." + text[-chars:]


def humaneval_metric(
    example: Example, output: str, *, timeout_s: float = 10.0, allow_unsandboxed: bool = False
) -> MetricResult:
    ref = example.reference
    program = build_program(ref["prompt"], output, ref["test"], ref["entry_point"])
    result = run_python(program, timeout_s=timeout_s, allow_unsandboxed=allow_unsandboxed)
    if result.status in ("timeout", "cpu_limit"):
        return MetricResult(
            0.0,
            f"The program did not finish within {timeout_s:g} s (an "
            "infinite loop or far too slow) and was stopped.",
            {"timed_out": True, "sandbox": result.status},
        )
    if result.ok:
        return MetricResult(1.0, "All tests passed.", {"returncode": 0})
    if result.status in ("output_limit", "killed"):
        return MetricResult(
            0.0, f"The program was stopped: {result.reason}.", {"sandbox": result.status}
        )
    tail = _tail(result.stderr) or f"exit code {result.exit_code} with no error output"
    return MetricResult(
        0.0, f"The tests failed: {tail}", {"returncode": result.exit_code, "stderr_tail": tail}
    )


class CodeTask(PromptTask):
    """A PromptTask whose metric is slow (it runs a subprocess).

    The metric runs on the run's executor -- a worker thread by default, a Ray task with
    ``Evolver(executor="ray")`` -- so a 10-second test run does not stall the event loop that
    every other rollout, proposal and validation shares.
    """

    metric_in_thread = True
