"""Find tasks by name: the built-ins, and user files through the loaders.

Built-ins are imported lazily so ``import flashevolve`` stays cheap and a missing optional
extra (``bench``) only matters when that task is asked for.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from flashevolve.errors import ConfigError, UserError
from flashevolve.tasks.base import Task


def _ifeval_lite(**options: Any) -> Task:
    from flashevolve.tasks.ifeval_lite import ifeval_lite

    return _call("ifeval-lite", ifeval_lite, options)


def _ifbench(**options: Any) -> Task:
    from flashevolve.tasks.ifbench import ifbench

    return _call("ifbench", ifbench, options)


def _formula_lite(**options: Any) -> Task:
    from flashevolve.tasks.formula_lite import formula_lite

    return _call("formula-lite", formula_lite, options)


def _intent_lite(**options: Any) -> Task:
    from flashevolve.tasks.intent_lite import intent_lite

    return _call("intent-lite", intent_lite, options)


def _sim(**options: Any) -> Task:
    # The serving simulator's workload (a simulated task, not a real benchmark); written
    # alongside the simulated backend.
    from flashevolve.backends.sim.workload import SimulatedTask

    return _call("sim", SimulatedTask, options)


_BUILTINS: dict[str, Callable[..., Task]] = {
    "ifeval-lite": _ifeval_lite,
    "ifbench": _ifbench,
    "formula-lite": _formula_lite,
    "intent-lite": _intent_lite,
    "sim": _sim,
}


def _call(name: str, factory: Callable[..., Task], options: dict[str, Any]) -> Task:
    """Turn an unknown keyword into a UserError that lists what the task accepts."""
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:
        known = [
            n
            for n, p in params.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"
        ]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise UserError(
                f"task {name!r} has no option {unknown[0]!r}; its options are: "
                f"{', '.join(known) or '(none)'}"
            )
    return factory(**options)


def available_tasks() -> list[str]:
    """Names accepted by :func:`get_task`."""
    return sorted(_BUILTINS)


def get_task(name: str, **options: Any) -> Task:
    """A built-in task by name, e.g. ``get_task("ifeval-lite", n_train=10)``."""
    key = name.strip().lower().replace("_", "-")
    factory = _BUILTINS.get(key)
    if factory is None:
        raise UserError(
            f"unknown task {name!r}; choose one of: {', '.join(available_tasks())} "
            "(or load your own file with load_task_file(path))"
        )
    return factory(**options)


def resolve_task(task: Any) -> Task:
    """A task object as given, or a built-in one by name; a wrong object is a clear error."""
    if isinstance(task, str):
        return get_task(task)
    for attr in ("train", "val", "seed_artifact", "rollout"):
        if not hasattr(task, attr):
            raise ConfigError(f"task object lacks {attr!r}: implement flashevolve.tasks.Task")
    # duck-typed: the members a run needs were checked by name above
    return cast(Task, task)


def load_task_file(path: str | Path, kind: str | None = None, **options: Any) -> Task:
    """A task from a JSON/JSONL file; ``kind`` is detected from the fields when None.

    Kinds: aime, hotpotqa, hover, humaneval, prompt.  Options: name, seed, n_train, n_val,
    instruction, max_tokens, temperature, timeout_s (humaneval).
    """
    from flashevolve.tasks.loaders import load_task_file as _load

    return _call("load_task_file", _load, {"path": path, "kind": kind, **options})
