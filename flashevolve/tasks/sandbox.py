"""Run model-written Python against unit tests in a subprocess (the HumanEval-style metric).

Isolation is best-effort, not a security boundary: the program runs with ``python -I`` in a
fresh temporary directory with a minimal environment, a memory cap, socket creation disabled
and a wall-clock timeout that kills the whole process group.  A crashing or hanging program
scores 0 with a feedback line; it never takes the run down.  Only run code you would run
yourself.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flashevolve.tasks.base import Example, MetricResult, PromptTask

# Prepended to every program.  Sockets are blocked by a subclass (not a plain function) so
# modules that subclass socket.socket at import (ssl, asyncio) still import.
_PROLOGUE = """\
import resource as _r, socket as _s
try:
    _r.setrlimit(_r.RLIMIT_AS, ({mem}, {mem}))
except (ValueError, OSError):
    pass
class _NoNetwork(_s.socket):
    def __init__(self, *a, **k):
        raise OSError("network access is disabled while the tests run")
def _no_network(*a, **k):
    raise OSError("network access is disabled while the tests run")
_s.socket = _NoNetwork
_s.create_connection = _no_network
_s.getaddrinfo = _no_network
del _r, _s
"""


@dataclass(frozen=True, slots=True)
class RunResult:
    passed: bool
    timed_out: bool
    returncode: int | None
    stdout: str
    stderr: str


def run_python(source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> RunResult:
    """Run ``source`` as a script; kill it (and its children) after ``timeout_s`` seconds."""
    with tempfile.TemporaryDirectory(prefix="flashevolve-exec-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(_PROLOGUE.format(mem=memory_mb * 1024 * 1024) + source, encoding="utf-8")
        env = {"PATH": os.defpath, "HOME": tmp, "PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", str(script)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, so the kill reaches grandchildren
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return RunResult(False, True, None, out, err)
        return RunResult(proc.returncode == 0, False, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)


def extract_code(output: str, entry_point: str) -> str:
    """The fenced block defining ``entry_point`` (else the longest block, else the raw text)."""
    blocks = re.findall(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", output, flags=re.S)
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


def humaneval_metric(example: Example, output: str, *, timeout_s: float = 10.0) -> MetricResult:
    ref = example.reference
    program = build_program(ref["prompt"], output, ref["test"], ref["entry_point"])
    result = run_python(program, timeout_s=timeout_s)
    if result.timed_out:
        return MetricResult(
            0.0,
            f"The program did not finish within {timeout_s:g} s (an "
            "infinite loop or far too slow) and was stopped.",
            {"timed_out": True},
        )
    if result.passed:
        return MetricResult(1.0, "All tests passed.", {"returncode": 0})
    tail = _tail(result.stderr) or f"exit code {result.returncode} with no error output"
    return MetricResult(
        0.0, f"The tests failed: {tail}", {"returncode": result.returncode, "stderr_tail": tail}
    )


class CodeTask(PromptTask):
    """A PromptTask whose metric is slow (it runs a subprocess).

    The metric runs in a worker thread so a 10-second test run does not stall the event
    loop that every other rollout, proposal and validation shares.
    """

    metric_in_thread = True
