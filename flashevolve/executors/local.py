"""The default executor: threads (or processes) of this machine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import multiprocessing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class LocalExecutor:
    """Heavy work on this machine, off the event loop.

    ``kind="thread"`` (the default): in worker threads -- enough when the work waits on a
    subprocess (the code task's sandboxed programs) or releases the GIL; with ``max_workers``
    left at ``None`` it is the loop's default thread pool, exactly what ``asyncio.to_thread``
    used.  ``kind="process"``: in worker processes (started by a fork server, never forked from
    a process with threads), for pure-Python CPU work; functions and arguments must pickle with
    the standard pickle (module-level functions or ``functools.partial`` of them).

    Cancelling the caller stops waiting at once; work already running in a thread or process
    finishes there (it cannot be interrupted), and queued work is dropped.
    """

    def __init__(
        self, kind: Literal["thread", "process"] = "thread", max_workers: int | None = None
    ) -> None:
        if kind not in ("thread", "process"):
            raise ValueError(f"kind must be 'thread' or 'process', not {kind!r}")
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.kind = kind
        self.max_workers = max_workers
        self.name = "local" if kind == "thread" else "local-process"
        self._pool: concurrent.futures.Executor | None = None

    def __repr__(self) -> str:
        return f"LocalExecutor(kind={self.kind!r}, max_workers={self.max_workers})"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "max_workers": self.max_workers}

    def _executor(self) -> concurrent.futures.Executor | None:
        if self._pool is None:
            if self.kind == "process":
                context = multiprocessing.get_context("forkserver")
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.max_workers, mp_context=context
                )
            elif self.max_workers is not None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="flashevolve-heavy"
                )
        return self._pool  # None: the loop's default thread pool

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        if self.kind == "thread":  # the thread sees the caller's context variables
            call = functools.partial(contextvars.copy_context().run, call)
        return await loop.run_in_executor(self._executor(), call)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
