"""Managed server subprocesses: start, wait until healthy, stop, and never leave orphans.

Shared by the embedded llama-server (:mod:`flashevolve.backends.llama`) and the vLLM launcher
(:mod:`flashevolve.backends.vllm_launcher`). The guarantees, in order of how the parent goes away:

- ``stop()`` (or ``close()``/``aclose()`` on the backend): SIGTERM to the server's process group,
  SIGKILL after a grace period.
- Garbage collection or interpreter exit: a ``weakref.finalize`` hook (which also runs at
  ``atexit``) does the same ``stop``.
- The parent is killed outright (SIGKILL, a Jupyter kernel restart): on Linux the child is started
  with ``PR_SET_PDEATHSIG`` so the kernel sends it SIGTERM when the parent dies.

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not the process. A server
started from a short-lived thread (``asyncio.to_thread``, a notebook widget callback) would be
killed when that thread ends, so every spawn goes through one daemon thread that lives as long as
the interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx2

from flashevolve.backends.paths import cache_dir
from flashevolve.errors import BackendError

log = logging.getLogger("flashevolve.backends")

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


# ----------------------------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (there is a small race until the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like the servers themselves: connections left in TIME_WAIT by a server
        # that just stopped do not count, a live listener does (restarting on a fixed port works).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def resolve_port(port: int | None, host: str = "127.0.0.1") -> int:
    """``port`` if it is free, a fresh free port if it is None; a clear error if it is taken."""
    if port is None:
        return free_port(host)
    if not 0 < int(port) < 65536:
        raise BackendError(f"port {port} is out of range; pass a port between 1 and 65535")
    if port_in_use(int(port), host):
        raise BackendError(
            f"port {port} is in use on {host}; pass another --port (or none to pick a free one), "
            f"or stop the program listening there"
        )
    return int(port)


# ---------------------------------------------------------------------------------- spawn thread


def _set_pdeathsig() -> None:
    """Runs in the child between fork and exec: die with the parent (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; never block the exec
        pass


class _Spawner:
    """One long-lived daemon thread that does every ``Popen`` (see module docstring)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="flashevolve-spawner", daemon=True
                )
                self._thread.start()
        fut: Future[Any] = Future()
        self._jobs.put((fn, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - handed back to the caller
                fut.set_exception(err)
            # Drop the last job so it cannot keep its owner alive (finalizers must still run).
            del fn, fut


_SPAWNER = _Spawner()


# ----------------------------------------------------------------------------- managed process


def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``. Safe to call twice."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)


def tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:]) or "(log is empty)"


class ManagedProcess:
    """A server subprocess with a port, a log file and a health endpoint.

    ``command`` must already contain the port (pick it with :func:`resolve_port`). Output (stdout
    and stderr) goes to ``log_path``. The process runs in its own session, so a Ctrl-C in the
    terminal reaches only Python, which then stops the server in order.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        port: int,
        host: str = "127.0.0.1",
        name: str = "server",
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        health_path: str = "/health",
        log_path: str | Path | None = None,
        grace_s: float = 5.0,
    ) -> None:
        self.command = [str(c) for c in command]
        self.port = int(port)
        self.host = host
        self.name = name
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.health_path = health_path if health_path.startswith("/") else "/" + health_path
        self.grace_s = grace_s
        if log_path is None:
            log_path = cache_dir() / "logs" / f"{name}-{self.port}.log"
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., ManagedProcess] | None = None

    # -- properties ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"ManagedProcess({self.name!r}, {self.base_url}, pid={self.pid}, {state})"

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> ManagedProcess:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logfile = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        env = None if self.env is None else {**os.environ, **self.env}
        preexec = _set_pdeathsig if sys.platform.startswith("linux") else None
        log.info("starting %s: %s (log: %s)", self.name, " ".join(self.command), self.log_path)
        command, cwd = self.command, self.cwd  # the job must not reference self (see finalize)
        try:
            self._proc = _SPAWNER.run(
                lambda: subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=preexec,  # noqa: PLW1509 - only prctl, no locks taken
                )
            )
        except OSError as err:
            raise BackendError(f"cannot start {self.name} ({self.command[0]}): {err}") from err
        finally:
            logfile.close()  # the child has its own copy of the descriptor
        self._finalizer = weakref.finalize(self, _terminate, self._proc, self.grace_s)
        return self

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
        """Poll ``GET health_path`` until it answers 200; a clear error if the process dies first
        or ``timeout_s`` passes (both show the last log lines)."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was not started")
        url = self.base_url + self.health_path
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        # No proxies: an http_proxy in the environment must not intercept loopback probes.
        with httpx2.Client(timeout=2.0, trust_env=False) as http:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise BackendError(
                        f"{self.name} exited with code {code} before it was ready; last log "
                        f"lines ({self.log_path}):\n{self.log_tail()}"
                    )
                last = _probe(http, url)
                if last == "ready":
                    return
                if time.monotonic() >= deadline:
                    break
                time.sleep(poll_s)  # readiness polling of a real subprocess, bounded
        self.stop()
        raise BackendError(
            f"{self.name} was not ready after {timeout_s:g}s ({url}: {last}); raise the "
            f"startup timeout if it is still loading; last log lines ({self.log_path}):\n"
            f"{self.log_tail()}"
        )

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM, then SIGKILL after the grace period. Idempotent."""
        if self._proc is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        _terminate(self._proc, self.grace_s if grace_s is None else grace_s)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _probe(http: httpx2.Client, url: str) -> str:
    """``"ready"`` if ``url`` answers 200, else what it said (for the timeout message)."""
    try:
        status = http.get(url).status_code
    except httpx2.HTTPError as err:
        return str(err) or type(err).__name__
    return "ready" if status == 200 else f"HTTP {status}"  # e.g. 503 while the model loads


def start_server(
    command: Sequence[str],
    *,
    port: int,
    host: str = "127.0.0.1",
    name: str = "server",
    env: Mapping[str, str] | None = None,
    health_path: str = "/health",
    ready_timeout_s: float = 60.0,
    log_path: str | Path | None = None,
    grace_s: float = 5.0,
) -> ManagedProcess:
    """Start ``command`` and return once ``health_path`` answers 200 (stopped again on failure)."""
    proc = ManagedProcess(
        command,
        port=port,
        host=host,
        name=name,
        env=env,
        health_path=health_path,
        log_path=log_path,
        grace_s=grace_s,
    )
    proc.start()
    try:
        proc.wait_ready(ready_timeout_s)
    except BaseException:
        proc.stop()
        raise
    return proc
