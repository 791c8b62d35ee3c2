"""Heavy work as Ray tasks on a Ray cluster (``pip install 'flashevolve[ray]'``).

The orchestrator stays one process with one event loop; only the work handed to
:meth:`RayExecutor.run` leaves it, as one Ray task per call.  The loop never blocks on Ray: the
task's ObjectRef is awaited (Ray's asyncio support), and starting or joining Ray (seconds) runs
in a thread.  What comes back is what a local call would give: the function's value, or the
exception it raised (unwrapped from Ray's ``RayTaskError``), so a metric that fails on a worker
is an evaluator failure exactly as it is locally.  A worker or node that dies is an
:class:`~flashevolve.executors.base.ExecutorError`.  Cancelling the awaiting task cancels the Ray
task (``ray.cancel``).  By default a running task's worker is killed (``force_cancel=True``):
the gentle form raises ``KeyboardInterrupt`` in the worker only when it next runs Python code,
and a metric waiting on its sandboxed program can sit through the whole program's timeout (a
full test run here once saw a cancelled 120 s program still running after 60 s).  Ray starts a
new worker; ``force_cancel=False`` keeps the gentle form.

Where Ray runs (``address``):

- ``None``: a local Ray on this machine, started on first use and stopped by :meth:`close`; it
  listens on 127.0.0.1 only (nothing else can join it; if the program imported Ray before, set
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before that import -- a warning says so otherwise)
  and uses ``local_cpus`` CPUs;
- ``"auto"``: the cluster this machine is part of (``ray start --head`` / ``ray start
  --address=...`` ran here, or ``RAY_ADDRESS`` is set);
- ``"HOST:PORT"``: that cluster's head (GCS address); ``"ray://HOST:10001"``: through Ray
  Client.

A Ray the caller already initialised (``ray.init(...)`` before the run) is used as it is and
left running.  Ray works in real time: a run on the simulator's virtual clock
(``run_virtual``) would jump its clock while it waits for a Ray task, so use the local executor
there.  Workers need flashevolve importable: install it on every node, or pass
``runtime_env={"py_modules": [flashevolve]}`` (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from flashevolve.errors import UserError
from flashevolve.executors.base import ExecutorError

T = TypeVar("T")

INSTALL_HINT = "pip install 'flashevolve[ray]'"


class RayUnavailable(UserError):
    """Ray was asked for and is not installed."""


def require_ray() -> None:
    """One clear error when Ray is not installed (checked without importing it)."""
    if importlib.util.find_spec("ray") is None:
        raise RayUnavailable(
            f"the Ray executor needs Ray, which is not installed: {INSTALL_HINT} (or use the "
            "default local executor)"
        )


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What every Ray task of flashevolve runs (on a worker)."""
    return fn(*args, **kwargs)


class RayExecutor:
    """Runs ``fn(*args, **kwargs)`` as a Ray task (see the module docstring).

    ``task_options``: Ray task options of every call (default ``num_cpus=1``,
    ``max_retries=1``: a call whose worker died is tried once more).  ``runtime_env``: Ray's
    runtime environment of the job.  ``init_options``: more ``ray.init`` keywords.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        local_cpus: int | None = None,
        runtime_env: dict[str, Any] | None = None,
        task_options: dict[str, Any] | None = None,
        init_options: dict[str, Any] | None = None,
        force_cancel: bool = True,
    ) -> None:
        require_ray()
        self.address = address or None
        self.local_cpus = local_cpus
        self.runtime_env = runtime_env
        self.task_options = {"num_cpus": 1, "max_retries": 1, **(task_options or {})}
        self.init_options = dict(init_options or {})
        self.force_cancel = force_cancel
        self.counts: Counter[str] = Counter()
        self._started_here = False
        self._remote: Any = None
        self._lock = threading.Lock()
        self._running: set[Any] = set()  # ObjectRefs not finished yet

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r})"

    def describe(self) -> dict[str, Any]:
        return {"kind": "ray", "address": self.address or "local", **self.stats()}

    def stats(self) -> dict[str, int]:
        """Ray tasks submitted, finished, failed (the function raised), lost (the executor
        failed) and cancelled, since this executor was made."""
        keys = ("submitted", "finished", "failed", "lost", "cancelled")
        return {k: self.counts[k] for k in keys}

    def in_flight(self) -> list[Any]:
        """The ObjectRefs of the calls still running (for ``ray.get`` / ``ray.cancel``)."""
        return list(self._running)

    # -- Ray's lifetime ----------------------------------------------------------------------
    def start(self) -> None:
        """Start or join Ray (blocking, seconds; idempotent).  :meth:`run` calls it in a thread
        when needed, so calling it yourself only moves the wait to a moment you choose."""
        with self._lock:
            if self._remote is not None and _ray().is_initialized():
                return
            if self.address is None and "ray" not in sys.modules:
                # a Ray of this machine only: it binds 127.0.0.1, not the host's address
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray = _ray()
            if not ray.is_initialized():
                options: dict[str, Any] = {"log_to_driver": False, **self.init_options}
                if self.address is None:
                    options.setdefault("include_dashboard", False)
                    if self.local_cpus is not None:
                        options.setdefault("num_cpus", self.local_cpus)
                else:
                    options["address"] = self.address
                if self.runtime_env is not None:
                    options["runtime_env"] = self.runtime_env
                try:
                    ray.init(**options)
                except (ConnectionError, RuntimeError, ValueError) as err:
                    where = self.address or "a local Ray"
                    raise ExecutorError(f"cannot start or reach Ray at {where}: {err}") from err
                self._started_here = True
                if self.address is None:
                    _warn_unless_loopback(ray)
            self._remote = ray.remote(_call).options(**self.task_options)

    def close(self) -> None:
        """Cancel the tasks still running; stop Ray if this executor started it."""
        for ref in list(self._running):
            self._cancel(ref)
        with self._lock:
            self._remote = None
            if self._started_here:
                self._started_here = False
                _ray().shutdown()

    # -- work ----------------------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if self._remote is None or not _ray().is_initialized():
            await asyncio.to_thread(self.start)
        ray = _ray()
        ref = self._remote.remote(fn, args, kwargs)
        self.counts["submitted"] += 1
        self._running.add(ref)
        try:
            value: T = await ref
        except asyncio.CancelledError:
            self._cancel(ref)
            raise
        except ray.exceptions.RayTaskError as err:
            cause = err.cause
            if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
                self.counts["failed"] += 1
                raise cause from None  # the function's own exception, as a local call gives
            self.counts["lost"] += 1
            raise ExecutorError(f"Ray could not run {_name(fn)}: {cause}") from None
        except ray.exceptions.RayError as err:  # a worker or node died, the object was lost
            self.counts["lost"] += 1
            raise ExecutorError(f"Ray could not run {_name(fn)}: {err}") from err
        finally:
            self._running.discard(ref)
        self.counts["finished"] += 1
        return value

    def _cancel(self, ref: Any) -> None:
        self._running.discard(ref)
        self.counts["cancelled"] += 1
        try:
            _ray().cancel(ref, force=self.force_cancel, recursive=True)
        except Exception:  # noqa: BLE001 - it finished meanwhile, or Ray is going away
            return


def _warn_unless_loopback(ray: Any) -> None:
    node = ray.util.get_node_ip_address()
    if node not in ("127.0.0.1", "::1"):
        warnings.warn(
            f"the local Ray listens on {node}, not 127.0.0.1: Ray was imported before the "
            "executor started it; set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing Ray "
            "to keep a local Ray on the loopback address",
            stacklevel=3,
        )


def _ray() -> Any:
    import ray

    return ray


def _name(fn: Any) -> str:
    inner = getattr(fn, "func", fn)  # a functools.partial
    return getattr(inner, "__qualname__", None) or repr(inner)
