"""What a sandbox may do (``SandboxConfig``, validated) and what a run reports (the results)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flashevolve.errors import ConfigError

Isolation = Literal["auto", "bwrap", "unshare", "none"]

#: What ended a run, decided by the parent from facts the program cannot forge (its wait status,
#: our own timers and counters):
#:   ok            exit code 0
#:   error         a non-zero exit code (an exception, ``sys.exit(n)``, a MemoryError ...)
#:   timeout       still running at ``timeout_s`` (wall clock): killed with everything it started
#:   cpu_limit     killed by the kernel at ``cpu_s`` seconds of CPU (RLIMIT_CPU)
#:   output_limit  wrote more than ``max_output_total_bytes`` to stdout + stderr: killed
#:   killed        died from another signal (a crash, or killed from inside the sandbox)
Status = Literal["ok", "error", "timeout", "cpu_limit", "output_limit", "killed"]


class SandboxConfig(BaseModel):
    """Limits and isolation of one sandboxed program (or of one session).

    The defaults suit a short evaluation (a unit-test run, a harness on one example).  Every
    limit is enforced by the kernel or by the parent, never by the program's good will.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Wall-clock seconds before the program and everything it started are killed.  In a
    #: session this bounds each call; ``session_timeout_s`` bounds the whole session.
    timeout_s: float = Field(default=10.0, gt=0, le=24 * 3600)
    #: CPU seconds (RLIMIT_CPU) of each process; the kernel kills a process that uses more.
    cpu_s: int = Field(default=10, ge=1, le=24 * 3600)
    #: Address space of each process (RLIMIT_AS), in MiB.
    memory_mb: int = Field(default=1024, ge=64)
    #: Processes and threads the sandbox's uid may have at once (RLIMIT_NPROC).
    max_processes: int = Field(default=64, ge=1)
    #: Largest file a process may write (RLIMIT_FSIZE), in MiB.
    max_file_mb: int = Field(default=16, ge=0)
    #: Open files per process (RLIMIT_NOFILE).
    max_open_files: int = Field(default=256, ge=16)
    #: Size of the writable scratch directory, in MiB (a tmpfs under bubblewrap).
    scratch_mb: int = Field(default=64, ge=1)
    #: Bytes of stdout and of stderr kept in the result (the rest is counted, not kept).
    max_output_bytes: int = Field(default=64_000, ge=0)
    #: Bytes of stdout + stderr after which the program is killed (an output flood).
    max_output_total_bytes: int = Field(default=8_000_000, ge=1)
    #: Model calls the program may make through the channel (more get an error back).
    max_llm_calls: int = Field(default=64, ge=0)
    #: Model calls of this program in flight at once (the rest wait in the parent).
    max_llm_concurrency: int = Field(default=4, ge=1)
    #: Longest line on the channel, either way (a model call, a result, a reply).
    max_message_bytes: int = Field(default=1_000_000, ge=1024)
    #: Upper bound on ``max_tokens`` of one model call (a larger request is refused).
    max_tokens_cap: int = Field(default=8192, ge=1)
    #: Whole-session wall-clock bound (sessions only).
    session_timeout_s: float = Field(default=600.0, gt=0)
    #: ``auto`` picks the strongest isolation this machine offers (bubblewrap, then util-linux
    #: ``unshare``, then nothing); naming one makes a missing one an error instead.
    isolation: Isolation = "auto"
    #: Apply Landlock inside the sandbox when the kernel offers it (a second, independent
    #: filesystem/network/signal wall).  Turn off only to test the other layers.
    landlock: bool = True
    #: Let the program import the packages of the current virtualenv (read-only).
    site_packages: bool = True
    #: Extra host paths the program may read (read-only), e.g. a dataset directory.
    read_paths: tuple[str, ...] = ()
    #: Extra environment variables for the program.  Nothing of the parent's environment is
    #: passed on otherwise (no API keys, no HOME).
    env: dict[str, str] = Field(default_factory=dict)
    #: Run generated code even when this machine offers no isolation at all (no namespaces, no
    #: Landlock).  The program then runs as an ordinary child process with only resource
    #: limits: it can read your files and reach the network.  Off by default, loudly named.
    allow_unsandboxed: bool = False

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"environment variable name {name!r} is not valid")
        return value

    @classmethod
    def of(
        cls, config: SandboxConfig | Mapping[str, Any] | None, **overrides: Any
    ) -> SandboxConfig:
        """A config from an instance, a dict or nothing, with overrides; errors name the field."""
        if isinstance(config, SandboxConfig):
            data = config.model_dump() | overrides
        else:
            data = dict(config or {}) | overrides
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "sandbox"
            raise ConfigError(
                f"sandbox setting {where!r}: {first['msg']} (got {first.get('input')!r})"
            ) from None


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """What the sandboxed process tree used.  ``source`` says who measured the CPU and memory
    figures: ``kernel`` (``wait4`` on the outermost process) or ``program`` (the launcher's own
    report at a normal exit: under bubblewrap the kernel's figure does not include the program;
    a killed program reports nothing and its figures stay 0).  ``wall_s`` is always ours."""

    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    max_rss_kb: int = 0
    wall_s: float = 0.0
    source: Literal["kernel", "program", "none"] = "kernel"


@dataclass(frozen=True, slots=True)
class LLMCall:
    """One model call the program made through the channel (already validated)."""

    index: int  # 1, 2, ... in the order the program made them
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """The outcome of one sandboxed run."""

    status: Status
    reason: str  # one line for a human (and for a feedback string)
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    #: The program's structured result (``fe_llm.set_result(value)`` or the return value of a
    #: ``module:function`` entry point); ``None`` when it gave none (see ``has_value``).
    value: Any = None
    has_value: bool = False
    #: What the program said about its own failure (exception type and message).  It comes
    #: from inside the sandbox: informative, not evidence.
    program_error: str | None = None
    llm_calls: int = 0
    #: Problems on the channel: malformed lines, refused calls, failed model calls.
    channel_errors: tuple[str, ...] = ()
    usage: ResourceUsage = field(default_factory=ResourceUsage)
    #: The protections this run had (``Protections.active()``).
    protections: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def killed_by_sandbox(self) -> bool:
        """Stopped by a limit of the sandbox (not by finishing or failing on its own)."""
        return self.status in ("timeout", "cpu_limit", "output_limit")


@dataclass(frozen=True, slots=True)
class CallResult:
    """The outcome of one ``SandboxSession.call``."""

    status: Literal["ok", "error", "timeout", "dead"]
    value: Any = None
    error: str | None = None  # the exception (type: message) or why the session is dead
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"
