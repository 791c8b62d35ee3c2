"""One sandboxed process: started, watched, killed, reaped and cleaned up, all without blocking
the event loop.

The process is started with ``subprocess.Popen`` in a new session (so one ``killpg`` reaches
everything that did not leave the group; under bubblewrap, killing its outer process ends the
pid namespace and so everything inside).  Its exit is watched through a pidfd on the event
loop and reaped with ``wait4``, which also gives the resource usage of the whole tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from flashevolve.errors import ConfigError
from flashevolve.sandbox import command as cmd
from flashevolve.sandbox.channel import LLMHandler, ParentChannel
from flashevolve.sandbox.config import ResourceUsage, SandboxConfig, SandboxResult, Status
from flashevolve.sandbox.protections import Protections, drop_uid_without_view, new_sandbox_uid

#: How long to wait for the pipes to drain once the process is gone (they close at once unless
#: an escaped process still holds them, which only the namespace-less fallbacks allow).
DRAIN_S = 0.5


class CappedOutput(asyncio.Protocol):
    """Keeps the first ``keep`` bytes of a pipe, counts the rest, reports floods."""

    def __init__(self, keep: int, on_bytes: Any) -> None:
        self.keep, self.on_bytes = keep, on_bytes
        self.kept = bytearray()
        self.total = 0
        self.eof = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        room = self.keep - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        self.on_bytes(len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)

    def text(self) -> str:
        return self.kept.decode("utf-8", errors="replace")

    @property
    def truncated(self) -> bool:
        return self.total > len(self.kept)


def write_files(src: Path, files: Mapping[str, str | bytes]) -> None:
    """The program's files, at relative paths that stay inside ``src``."""
    for name, content in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ConfigError(
                f"sandbox file name {name!r} must be a relative path inside the sandbox "
                "(no leading '/', no '..')"
            )
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8") if isinstance(content, str) else content
        target.write_bytes(data)


class SandboxProcess:
    """A started sandbox (``start``), its end (``wait``/``kill``) and its ``result``."""

    def __init__(self, config: SandboxConfig, protections: Protections) -> None:
        self.config, self.protections = config, protections
        self.host_dir = Path(tempfile.mkdtemp(prefix="flashevolve-sbx-"))
        self.kill_reason: Status | None = None
        self.exit_status: int | None = None
        self.rusage: Any = None
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: ParentChannel | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._pump: asyncio.Task[None] | None = None
        self._pidfd: int | None = None
        self.stdout: CappedOutput | None = None
        self.stderr: CappedOutput | None = None
        self._output_total = 0

    # ---------------------------------------------------------------- start

    def _command(self, python: str) -> cmd.Command:
        kind = self.protections.isolation
        if kind == "bwrap":
            uid = new_sandbox_uid() if os.geteuid() == 0 else None
            bwrap = shutil.which("bwrap") or "bwrap"
            return cmd.bwrap_command(
                self.config, self.host_dir, bwrap=bwrap, python=python, sandbox_uid=uid
            )
        uid = drop_uid_without_view(python)
        if kind == "unshare":
            unshare = shutil.which("unshare") or "unshare"
            return cmd.unshare_command(
                self.config, self.host_dir, unshare=unshare, python=python, sandbox_uid=uid
            )
        return cmd.plain_command(self.config, self.host_dir, python=python, sandbox_uid=uid)

    async def start(
        self,
        files: Mapping[str, str | bytes],
        *,
        mode: str,
        entry: str,
        args: Any,
        llm: LLMHandler | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        src = self.host_dir / "src"
        src.mkdir()
        (self.host_dir / "work").mkdir()
        write_files(src, files)
        command = self._command(sys.executable)
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        spec = cmd.launch_spec(
            self.config,
            command.layout,
            mode=mode,
            entry=entry,
            args=args,
            channel_fds=(to_child_r, from_child_w),
            landlock_required=self.protections.landlock,
            limit_processes=self.protections.nproc_limit,
        )
        cmd.write_launch(self.host_dir, spec)
        self._share_with(command.user)
        try:
            self.proc = subprocess.Popen(
                command.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(to_child_r, from_child_w),
                start_new_session=True,
                env=command.env if command.env is not None else {"PATH": "/usr/bin:/bin"},
                cwd=str(self.host_dir),
                user=command.user,
                group=command.user,
                extra_groups=[] if command.user is not None else None,
            )
        except BaseException:
            os.close(to_child_w)
            os.close(from_child_r)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._pidfd = os.pidfd_open(self.proc.pid)
        loop.add_reader(self._pidfd, self._reap)
        self.stdout = await self._capture(self.proc.stdout)
        self.stderr = await self._capture(self.proc.stderr)
        reader = asyncio.StreamReader(limit=self.config.max_message_bytes, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_child_r, "rb", 0)
        )
        self._transports.append(transport)
        writer, _ = await loop.connect_write_pipe(
            asyncio.BaseProtocol, os.fdopen(to_child_w, "wb", 0)
        )
        self._transports.append(writer)

        def write(data: bytes) -> None:
            if not writer.is_closing():
                writer.write(data)

        self.channel = ParentChannel(
            self.config, reader, write, llm, on_flood=lambda: self.kill("output_limit")
        )
        self._pump = asyncio.create_task(self.channel.pump(), name="sandbox-channel")

    def _share_with(self, uid: int | None) -> None:
        """Root drops the program to ``uid``: let it reach its files and write its work dir."""
        os.chmod(self.host_dir, 0o711)
        if uid is not None:
            os.chown(self.host_dir / "work", uid, uid)

    async def _capture(self, pipe: Any) -> CappedOutput:
        loop = asyncio.get_running_loop()
        protocol = CappedOutput(self.config.max_output_bytes, self._count_output)
        transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
        self._transports.append(transport)
        return protocol

    def _count_output(self, n: int) -> None:
        self._output_total += n
        if self._output_total > self.config.max_output_total_bytes:
            self.kill("output_limit")

    # ---------------------------------------------------------------- end

    def _reap(self) -> None:
        assert self.proc is not None and self._pidfd is not None
        try:
            pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: its status is lost
            pid, status, rusage = self.proc.pid, None, None
        if pid == 0:
            return  # spurious wake-up: not exited yet
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self.exit_status, self.rusage = status, rusage
        # Popen must not try to reap it again
        self.proc.returncode = -1 if status is None else os.waitstatus_to_exitcode(status)
        self.ended_at = time.monotonic()
        if not self.exited.done():
            self.exited.set_result(None)

    def kill(self, reason: Status | None = None) -> None:
        """SIGKILL the process group (bubblewrap's outer process takes its pid namespace with
        it).  The first reason given is the one reported."""
        if self.kill_reason is None and reason is not None and not self.exited.done():
            self.kill_reason = reason
        if self.proc is not None and not self.exited.done():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def wait(self, timeout: float | None) -> bool:
        """True once the process exited; False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Kill if still running, reap, drain the pipes, forget the files."""
        self.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.exited), 5.0)
        waits = [p.eof for p in (self.stdout, self.stderr) if p is not None]
        if self.channel is not None:
            waits.append(self.channel.closed)
        if waits:
            await asyncio.wait(waits, timeout=DRAIN_S)
        for transport in self._transports:
            transport.close()
        if self.channel is not None:
            await self.channel.aclose()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        shutil.rmtree(self.host_dir, ignore_errors=True)

    # ---------------------------------------------------------------- result

    def _exit(self) -> tuple[int | None, int | None]:
        """(exit code, signal) of the program.  bubblewrap reports a child killed by signal N
        as exit code 128 + N (the shell's convention)."""
        if self.exit_status is None:
            return None, None
        code = os.waitstatus_to_exitcode(self.exit_status)
        if code < 0:
            return None, -code
        if self.protections.isolation == "bwrap" and code > 128:
            return None, code - 128
        return code, None

    def usage(self) -> ResourceUsage:
        ru = self.rusage
        wall = (self.ended_at or time.monotonic()) - self.started_at
        if self.protections.isolation == "bwrap":
            told = self.channel.reported_usage if self.channel else None
            if not told:
                return ResourceUsage(wall_s=wall, source="none")
            try:
                cpu_user, cpu_sys = float(told["cpu_user_s"]), float(told["cpu_system_s"])
                return ResourceUsage(cpu_user, cpu_sys, int(told["max_rss_kb"]), wall, "program")
            except (KeyError, TypeError, ValueError):
                return ResourceUsage(wall_s=wall, source="none")
        if ru is None:
            return ResourceUsage(wall_s=wall, source="none")
        return ResourceUsage(ru.ru_utime, ru.ru_stime, ru.ru_maxrss, wall)

    def status(self) -> tuple[Status, str]:
        config = self.config
        code, sig = self._exit()
        error = self.channel.program_error if self.channel else None
        if self.kill_reason == "timeout":
            return "timeout", (
                f"did not finish within {config.timeout_s:g} s and was killed with every "
                "process it started"
            )
        if self.kill_reason == "output_limit":
            return "output_limit", (
                f"flooded its output (over {config.max_output_total_bytes} bytes of stdout, "
                "stderr or channel junk) and was killed"
            )
        if sig is not None:
            usage = self.usage()
            used = usage.cpu_user_s + usage.cpu_system_s
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and used >= config.cpu_s):
                return "cpu_limit", f"used its {config.cpu_s} s of CPU and was killed by the kernel"
            return "killed", f"killed by signal {signal.Signals(sig).name}"
        if code is None:
            return "error", "its exit status was lost (another part of the process reaped it)"
        if code == 0:
            return "ok", "exited normally"
        detail = f" ({error})" if error else ""
        return "error", f"exit code {code}{detail}"

    def result(self) -> SandboxResult:
        status, reason = self.status()
        code, sig = self._exit()
        channel = self.channel
        assert self.stdout is not None and self.stderr is not None and channel is not None
        errors = list(channel.errors)
        if channel.error_count > len(errors):
            errors.append(f"... {channel.error_count - len(errors)} more")
        return SandboxResult(
            status=status,
            reason=reason,
            exit_code=code,
            signal=sig,
            stdout=self.stdout.text(),
            stderr=self.stderr.text(),
            stdout_truncated=self.stdout.truncated,
            stderr_truncated=self.stderr.truncated,
            value=channel.value,
            has_value=channel.has_value,
            program_error=channel.program_error,
            llm_calls=channel.llm_calls,
            channel_errors=tuple(errors),
            usage=self.usage(),
            protections=self.protections.active(),
        )
