"""The driver that runs a harness inside the sandbox (stdlib only; shipped next to it).

The parent never imports the harness itself: it starts a sandboxed process that imports this
module and calls its functions (``Sandbox.run`` with ``entry="fe_harness:check"``, or a
session with ``setup``/``predict`` calls).  Everything returned from here comes from inside the
sandbox and is treated by the parent as data to score, never as evidence.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import time
from typing import Any

#: characters of a call's printed output kept for the trace
STDOUT_KEEP = 2000

_state: dict[str, Any] = {}


class _BoundedText(io.TextIOBase):
    """Keeps the first ``limit`` characters written to it and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit, self.kept, self.dropped = limit, 0, 0
        self.parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        room = self.limit - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def text(self) -> str:
        out = "".join(self.parts)
        return out + (f"\n[... {self.dropped} more characters]" if self.dropped else "")


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:2000]


def check(spec: dict[str, Any]) -> dict[str, Any]:
    """Import the harness and check the interface functions exist and take their arguments."""
    module = importlib.import_module(spec["module"])
    problems = []
    for name, nargs in spec["functions"].items():
        function = getattr(module, name, None)
        if function is None:
            problems.append(f"{name}() is not defined")
            continue
        if not callable(function):
            problems.append(f"{name} is not callable (it is a {type(function).__name__})")
            continue
        try:
            inspect.signature(function).bind(*([None] * nargs))
        except TypeError as err:
            problems.append(f"{name}() cannot be called with {nargs} argument(s): {err}")
        except ValueError:
            pass  # a builtin without a signature: let the call decide
    return {"ok": not problems, "problems": problems}


def _call(function: Any, argument: Any) -> dict[str, Any]:
    printed = _BoundedText(STDOUT_KEEP)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        value = function(argument)
    return {
        "value": _jsonable(value),
        "stdout": printed.text(),
        "seconds": round(time.perf_counter() - t0, 4),
    }


def setup(spec: dict[str, Any], memory: Any) -> dict[str, Any]:
    """Import the harness and hand it its memory (once per process)."""
    module = importlib.import_module(spec["module"])
    _state["module"], _state["spec"] = module, spec
    return _call(getattr(module, spec["setup"]), memory)


def predict(example_input: Any) -> dict[str, Any]:
    """Run the harness on one example; its return value and what it printed."""
    module, spec = _state["module"], _state["spec"]
    return _call(getattr(module, spec["predict"]), example_input)
