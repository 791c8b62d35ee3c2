"""The public face of the sandbox: ``Sandbox.run`` (one program, one process) and
``Sandbox.session`` (one process, many calls), both asyncio coroutines, plus ``run_sync`` for
threads and worker processes without a loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from flashevolve.errors import ConfigError, UserError
from flashevolve.sandbox.channel import LLMHandler
from flashevolve.sandbox.config import CallResult, SandboxConfig, SandboxResult
from flashevolve.sandbox.process import SandboxProcess
from flashevolve.sandbox.protections import Protections, detect


class SandboxRefused(UserError):
    """The machine offers no isolation and the caller did not accept unsandboxed code."""


class Sandbox:
    """Runs untrusted Python under the limits of ``config`` (see :class:`SandboxConfig`).

    ``Sandbox(timeout_s=3, memory_mb=512)`` or ``Sandbox(SandboxConfig(...))``.  A Sandbox is
    cheap and stateless between runs; share one across concurrent runs freely.
    """

    def __init__(
        self, config: SandboxConfig | Mapping[str, Any] | None = None, **overrides: Any
    ) -> None:
        self.config = SandboxConfig.of(config, **overrides)
        self._protections: Protections | None = None

    def protections(self) -> Protections:
        """What programs run by this sandbox get on this machine (probed once, then cached)."""
        if self._protections is None:
            self._protections = detect(self.config)
        return self._protections

    def check(self) -> Protections:
        """Raise unless this sandbox may run generated code here; return its protections."""
        prot = self.protections()
        wanted = self.config.isolation
        if wanted in ("bwrap", "unshare") and prot.isolation != wanted:
            raise ConfigError(
                f"sandbox isolation={wanted!r} is not available here: "
                + "; ".join(prot.notes)
                + ". Install it, or use isolation='auto'"
            )
        if not prot.isolated and not self.config.allow_unsandboxed:
            raise SandboxRefused(
                "refusing to run generated code: this machine offers no isolation (no "
                "namespaces, no Landlock: " + "; ".join(prot.notes) + "). Install bubblewrap "
                "(apt-get install bubblewrap) or, only if you accept that the code can read "
                "your files and reach the network, pass allow_unsandboxed=True"
            )
        return prot

    async def run(
        self,
        source: str | None = None,
        *,
        files: Mapping[str, str | bytes] | None = None,
        entry: str = "main.py",
        args: Any = None,
        llm: LLMHandler | None = None,
    ) -> SandboxResult:
        """Run one program to its end (or to a limit) and report what happened.

        ``source`` is the program (saved as ``entry``); ``files`` adds more (relative paths).
        ``entry`` is a file run as ``__main__``, or ``"module:function"``: the function is
        called with ``args`` (or with no argument when ``args`` is None) and its return value
        becomes ``result.value``.  ``llm`` answers the program's ``fe_llm.complete`` calls.
        Cancelling the caller kills the program and everything it started.
        """
        prot = self.check()
        all_files = dict(files or {})
        if source is not None:
            if ":" in entry:
                raise ConfigError("pass source= only with a file entry like 'main.py'")
            all_files[entry] = source
        if ":" not in entry and entry not in all_files:
            raise ConfigError(f"entry {entry!r} is not among the files {sorted(all_files)}")
        _check_json(args, "args")
        proc = SandboxProcess(self.config, prot)
        try:
            await proc.start(all_files, mode="run", entry=entry, args=args, llm=llm)
            if not await proc.wait(self.config.timeout_s):
                proc.kill("timeout")
                await proc.wait(None)
            await proc.close()
            return proc.result()
        finally:
            await asyncio.shield(_close_quietly(proc))

    def run_sync(self, source: str | None = None, **kwargs: Any) -> SandboxResult:
        """``run`` for code without a running event loop (a worker thread, a Ray task); it runs
        its own loop, so it must not be called from a thread whose loop is running."""
        return asyncio.run(self.run(source, **kwargs))

    def session(
        self,
        module: str,
        *,
        files: Mapping[str, str | bytes],
        llm: LLMHandler | None = None,
    ) -> SandboxSession:
        """One sandboxed process that imports ``module`` (from ``files``) once and then runs
        many calls, each bounded by ``timeout_s``: ``async with sandbox.session(...) as s``."""
        return SandboxSession(self, module, dict(files), llm)


class SandboxSession:
    """A long-lived sandboxed module: ``ready`` says whether it imported, ``call`` runs one of
    its functions.  A call that times out kills the process (its state cannot be trusted any
    more); later calls then report ``dead``.  ``close`` returns the process's result."""

    def __init__(
        self, sandbox: Sandbox, module: str, files: dict[str, str | bytes], llm: LLMHandler | None
    ) -> None:
        self.sandbox, self.module, self.files, self.llm = sandbox, module, files, llm
        self.ready: CallResult = CallResult("dead", error="not started")
        self._proc: SandboxProcess | None = None
        self._lock = asyncio.Lock()
        self._ids = 0
        self._lifetime: asyncio.TimerHandle | None = None
        self._result: SandboxResult | None = None

    async def __aenter__(self) -> SandboxSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> CallResult:
        prot = self.sandbox.check()
        config = self.sandbox.config
        self._proc = proc = SandboxProcess(config, prot)
        try:
            await proc.start(self.files, mode="serve", entry=self.module, args=None, llm=self.llm)
        except BaseException:
            await asyncio.shield(_close_quietly(proc))
            raise
        loop = asyncio.get_running_loop()
        self._lifetime = loop.call_later(config.session_timeout_s, proc.kill, "timeout")
        self.ready = await self._await_reply(0, config.timeout_s)
        return self.ready

    async def call(self, function: str, *args: Any, timeout_s: float | None = None) -> CallResult:
        """Run ``module.function(*args)`` inside; JSON in, JSON out."""
        _check_json(list(args), "args")
        async with self._lock:
            proc = self._proc
            if proc is None or proc.exited.done() or not self.ready.ok:
                return CallResult("dead", error=self._dead_reason())
            self._ids += 1
            assert proc.channel is not None
            message = {"kind": "call", "id": self._ids, "function": function, "args": list(args)}
            if len(json.dumps(message)) >= self.sandbox.config.max_message_bytes:
                return CallResult("error", error="the call's arguments exceed max_message_bytes")
            proc.channel.send(message)
            return await self._await_reply(self._ids, timeout_s or self.sandbox.config.timeout_s)

    async def _await_reply(self, ident: int, timeout_s: float) -> CallResult:
        proc = self._proc
        assert proc is not None and proc.channel is not None
        future = asyncio.get_running_loop().create_future()
        proc.channel.replies[ident] = future
        try:
            done, _ = await asyncio.wait(
                [future, proc.exited], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            proc.channel.replies.pop(ident, None)
        if future in done:
            reply = future.result()
            kind = reply.get("kind")
            if kind in ("return", "ready") and reply.get("ok", True):
                return CallResult("ok", value=reply.get("value"))
            if kind in ("raise", "ready"):
                return CallResult(
                    "error", error=reply.get("error"), traceback=reply.get("traceback")
                )
        if not done:
            proc.kill("timeout")
            await proc.wait(None)
            return CallResult("timeout", error=f"no answer within {timeout_s:g} s: killed")
        return CallResult("dead", error=self._dead_reason())

    def _dead_reason(self) -> str:
        proc = self._proc
        if proc is None:
            return "the session was not started"
        if not proc.exited.done():
            return self.ready.error or "the module did not import"
        return "the sandboxed process ended: " + proc.status()[1]

    async def close(self) -> SandboxResult:
        """End the session (politely, then by force) and report on the process."""
        if self._result is not None:
            return self._result
        proc = self._proc
        if proc is None:
            raise ConfigError("the session was never started")
        if self._lifetime is not None:
            self._lifetime.cancel()
        try:
            if not proc.exited.done() and proc.channel is not None:
                proc.channel.send({"kind": "close"})
                if not await proc.wait(min(2.0, self.sandbox.config.timeout_s)):
                    proc.kill()
                    await proc.wait(None)
            await proc.close()
            self._result = proc.result()
        finally:
            await asyncio.shield(_close_quietly(proc))
        return self._result


async def _close_quietly(proc: SandboxProcess) -> None:
    """Cleanup that runs even when the caller was cancelled: kill, reap, remove files."""
    if proc.proc is None:
        import shutil

        shutil.rmtree(proc.host_dir, ignore_errors=True)
        return
    if not proc.exited.done() or proc.host_dir.exists():
        await proc.close()


def _check_json(value: Any, field: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sandbox {field} must be JSON-serialisable: {err}") from None
