"""The executor Protocol: where CPU-heavy work of a run goes (a task metric that runs code, a
harness evaluation in its sandbox, a user's heavy rollout step), and which executor a run uses.

The orchestrator -- queues, workers, the event log -- stays one process on one event loop; an
executor only takes the pieces of work that would otherwise hold a CPU:

- :class:`~flashevolve.executors.local.LocalExecutor` (the default): worker threads, as the
  code task always did, or worker processes (``kind="process"``);
- :class:`~flashevolve.executors.ray_executor.RayExecutor`: Ray tasks on a Ray cluster
  (``pip install 'flashevolve[ray]'``).

Work goes in as a *picklable* function and its arguments (a module-level function, a
``functools.partial`` of one, or -- for Ray, which pickles with cloudpickle -- a closure), and
comes back as the function's return value or its exception: a metric that raises on a Ray
worker raises the same exception here, so the run logs the same events as for local work.
Cancelling the awaiting task cancels the remote work (``ray.cancel``).

Which executor the code of a run sees is a context variable the ``Evolver`` sets for the run
(:func:`current_executor`); :func:`run_heavy` is the one call a task or a workflow makes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

#: Attribute that :func:`heavy` sets on a function.
HEAVY_MARK = "__flashevolve_heavy__"


class ExecutorError(RuntimeError):
    """The executor could not run the work (a Ray worker died, the cluster went away): not the
    work's own exception, which is raised as it is."""


@runtime_checkable
class Executor(Protocol):
    name: str

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` somewhere else; the event loop is never blocked."""
        ...

    def close(self) -> None:
        """Cancel what is still running and release the workers (idempotent)."""
        ...


_current: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "flashevolve_executor", default=None
)
_default: Executor | None = None


def default_executor() -> Executor:
    """The executor of code that runs outside any run: local threads."""
    global _default
    if _default is None:
        from flashevolve.executors.local import LocalExecutor

        _default = LocalExecutor()
    return _default


def current_executor() -> Executor:
    """The executor of the run this code belongs to (the default outside a run)."""
    return _current.get() or default_executor()


@contextlib.contextmanager
def use_executor(executor: Executor) -> Iterator[Executor]:
    """Make ``executor`` the current one for the code run inside the block (and the asyncio
    tasks it starts)."""
    token = _current.set(executor)
    try:
        yield executor
    finally:
        _current.reset(token)


@contextlib.asynccontextmanager
async def run_scope(executor: Executor, *, owned: bool) -> AsyncIterator[Executor]:
    """A run's executor for the run's duration; closed at the end if the run made it."""
    try:
        with use_executor(executor):
            yield executor
    finally:
        if owned:
            import asyncio

            await asyncio.to_thread(executor.close)  # ray.shutdown() takes a while


async def run_heavy(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run CPU-heavy ``fn(*args, **kwargs)`` on the current run's executor."""
    return await current_executor().run(fn, *args, **kwargs)


def heavy(fn: Callable[..., T]) -> Callable[..., T]:
    """Mark a task metric as heavy: ``PromptTask(metric=heavy(my_metric))`` runs it on the run's
    executor (local threads by default, Ray with ``executor="ray"``) instead of the event loop."""
    setattr(fn, HEAVY_MARK, True)
    return fn


def is_heavy(fn: Any) -> bool:
    return bool(getattr(fn, HEAVY_MARK, False))
