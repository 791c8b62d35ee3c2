"""Executors: where the CPU-heavy work of a run goes (docs/scale-out.md).

- :class:`Executor` -- the Protocol: ``await run(fn, *args, **kwargs)``, ``close()``;
- :class:`LocalExecutor` -- threads (the default) or processes of this machine;
- :class:`RayExecutor` -- Ray tasks on a Ray cluster (``pip install 'flashevolve[ray]'``);
- :func:`make_executor` -- one from a name (``Evolver(executor="ray")``, ``--executor``);
- :func:`run_heavy` -- run a function on the current run's executor; :func:`heavy` marks a task
  metric as heavy; :func:`current_executor` / :func:`use_executor` -- the run's executor, a
  context variable the ``Evolver`` sets for the run.
"""

from __future__ import annotations

from typing import Any

from flashevolve.errors import ConfigError
from flashevolve.executors.base import (
    Executor,
    ExecutorError,
    current_executor,
    default_executor,
    heavy,
    is_heavy,
    run_heavy,
    run_scope,
    use_executor,
)
from flashevolve.executors.local import LocalExecutor
from flashevolve.executors.ray_executor import RayExecutor  # imports Ray only when started

#: What ``make_executor`` understands.
NAMES = ("local", "thread", "process", "ray")


def make_executor(spec: Any = None, *, ray_address: str | None = None, **options: Any) -> Executor:
    """An executor from ``spec``: an :class:`Executor` (returned as is), ``None`` / ``"local"``
    / ``"thread"`` (local threads), ``"process"`` (local processes), ``"ray"`` (a local Ray, or
    the cluster at ``ray_address``: ``"auto"`` or ``"HOST:PORT"``) or ``"ray:ADDRESS"``.
    ``options`` go to the executor's constructor."""
    if spec is not None and not isinstance(spec, str):
        if isinstance(spec, Executor):
            return spec
        raise ConfigError(
            f"executor must be a name ({', '.join(NAMES)}) or an Executor object, not "
            f"{type(spec).__name__}"
        )
    name, _, address = (spec or "local").partition(":")
    if name in ("local", "thread"):
        return LocalExecutor("thread", **options)
    if name == "process":
        return LocalExecutor("process", **options)
    if name == "ray":
        return RayExecutor(address or ray_address, **options)
    raise ConfigError(f"unknown executor {spec!r}; use one of {', '.join(NAMES)}")


def executor_from_options(executor: str | None, ray_address: str | None) -> str | None:
    """The command line's ``--executor NAME`` and ``--ray-address auto|HOST:PORT`` as the
    ``Evolver(executor=...)`` value (checked now: a typo or a missing Ray is one line before
    any server starts)."""
    if ray_address and (executor or "local") != "ray":
        raise ConfigError("--ray-address needs --executor ray")
    if executor is None:
        return None
    spec = f"ray:{ray_address}" if executor == "ray" and ray_address else executor
    make_executor(spec)  # validates the name; for ray, that Ray is installed (nothing starts)
    return spec


def resolve_executor(spec: Any) -> tuple[Executor, bool]:
    """(executor, owned): an executor made here from a name is owned by the run (closed at its
    end); one passed in belongs to the caller; ``None`` is the shared default."""
    if spec is None:
        return default_executor(), False
    executor = make_executor(spec)
    return executor, executor is not spec


__all__ = [
    "NAMES",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "RayExecutor",
    "current_executor",
    "default_executor",
    "executor_from_options",
    "heavy",
    "is_heavy",
    "make_executor",
    "resolve_executor",
    "run_heavy",
    "run_scope",
    "use_executor",
]
