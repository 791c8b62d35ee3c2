"""Which protections this machine gives a sandboxed program, found by trying them once.

A run logs ``protections().summary()`` at start.  The probe starts the real isolation command
with ``true`` inside (not a guess from kernel versions), so "yes" means it worked here.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from flashevolve.sandbox.command import bwrap_command, python_roots, unshare_command
from flashevolve.sandbox.config import SandboxConfig

Kind = Literal["bwrap", "unshare", "none"]
RLIMITS = ("cpu", "address-space", "processes", "file-size", "open-files", "no-core")
#: Host uids handed to sandboxes when we are root: a fresh one per run, so RLIMIT_NPROC (which
#: counts per uid) is per sandbox, and no sandbox owns a file or process of another.
SANDBOX_UID_BASE = 1_900_000_000
SANDBOX_UID_SPAN = 1 << 20


@dataclass(frozen=True, slots=True)
class Protections:
    """What a sandboxed program gets on this machine (each field: does it work here?)."""

    isolation: Kind
    user_ns: bool  # own user namespace
    net_ns: bool  # own network namespace: no interface but its own loopback
    pid_ns: bool  # own pid namespace: sees only its own processes, all die with it
    mount_ns: bool  # private filesystem view: only named paths exist
    ipc_ns: bool
    unprivileged_uid: bool  # runs as a non-root uid on the host
    nproc_limit: bool  # RLIMIT_NPROC is enforced (the kernel exempts host root from it)
    landlock_abi: int  # 0: no Landlock
    landlock: bool  # Landlock will be applied (kernel has it, binding installed, config on)
    seccomp: bool = False  # no seccomp filter (see docs/security.md)
    rlimits: tuple[str, ...] = RLIMITS
    notes: tuple[str, ...] = ()

    @property
    def isolated(self) -> bool:
        """At least one isolation protection (namespaces or Landlock) is in force."""
        return self.net_ns or self.mount_ns or self.landlock

    def active(self) -> tuple[str, ...]:
        names = [
            ("user-ns", self.user_ns),
            ("net-ns", self.net_ns),
            ("pid-ns", self.pid_ns),
            ("mount-ns", self.mount_ns),
            ("ipc-ns", self.ipc_ns),
            ("unprivileged-uid", self.unprivileged_uid),
            ("rlimit-nproc", self.nproc_limit),
            (f"landlock-abi-{self.landlock_abi}", self.landlock),
            ("seccomp", self.seccomp),
        ]
        return tuple(name for name, on in names if on) + tuple(
            f"rlimit-{r}" for r in self.rlimits if r != "processes"
        )

    def summary(self) -> str:
        def yn(flag: bool) -> str:
            return "yes" if flag else "no"

        landlock = f"yes (ABI {self.landlock_abi})" if self.landlock else "no"
        return (
            f"sandbox isolation={self.isolation}: user ns {yn(self.user_ns)}, net ns "
            f"{yn(self.net_ns)}, pid ns {yn(self.pid_ns)}, private filesystem "
            f"{yn(self.mount_ns)}, unprivileged uid {yn(self.unprivileged_uid)}, process "
            f"limit {yn(self.nproc_limit)}, landlock {landlock}, seccomp {yn(self.seccomp)}, "
            f"rlimits {','.join(self.rlimits)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_root() -> bool:
    return os.geteuid() == 0


def new_sandbox_uid() -> int:
    return SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_SPAN)


def world_reachable(path: str) -> bool:
    """Can a uid with no relation to the owner reach ``path`` (every directory on the way
    searchable by "others")?  Decides whether root can drop to a sandbox uid without a
    filesystem view of its own."""
    current = Path(os.path.abspath(path))
    for part in [*reversed(current.parents), current]:
        try:
            mode = os.stat(part).st_mode
        except OSError:
            return False
        if part != current and not mode & 0o001:
            return False
    return True


@functools.cache
def landlock_abi() -> tuple[int, str | None]:
    """(ABI version, why not) of Landlock here, through the ``landlockpy`` binding."""
    try:
        import landlockpy
    except ImportError:
        return 0, "the landlockpy package is not installed (pip install landlockpy)"
    try:
        abi = landlockpy.abi_version()
    except OSError as err:
        return 0, f"Landlock probe failed: {err}"
    return abi, None if abi else "this kernel has no Landlock (or it is disabled at boot)"


def _works(argv: list[str], user: int | None = None) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            user=user,
            group=user,
            extra_groups=[] if user is not None else None,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return False, str(err)
    return done.returncode == 0, done.stderr.decode(errors="replace").strip()[-300:]


@functools.cache
def _probe_bwrap(python: str) -> tuple[bool, str]:
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return False, "bubblewrap is not installed (apt-get install bubblewrap)"
    uid = new_sandbox_uid() if is_root() else None
    with tempfile.TemporaryDirectory(prefix="flashevolve-probe-") as tmp:
        host = Path(tmp)
        (host / "src").mkdir()
        (host / "launch.json").write_text("{}")
        config = SandboxConfig()
        cmd = bwrap_command(
            config, host, bwrap=bwrap, python=python, sandbox_uid=uid, inner=[python, "-c", ""]
        )
        ok, err = _works(cmd.argv)
    return ok, "" if ok else f"bubblewrap does not work here: {err}"


@functools.cache
def _probe_unshare(python: str, drop_root: bool) -> tuple[bool, str]:
    unshare = shutil.which("unshare")
    if not unshare:
        return False, "util-linux unshare is not installed"
    uid = new_sandbox_uid() if drop_root else None
    with tempfile.TemporaryDirectory(prefix="flashevolve-probe-") as tmp:
        config = SandboxConfig()
        path = Path(tmp)
        cmd = unshare_command(
            config, path, unshare=unshare, python=python, sandbox_uid=uid, inner=["true"]
        )
        ok, err = _works(cmd.argv, user=uid)
    return ok, "" if ok else f"unshare --user --net does not work here: {err}"


def drop_uid_without_view(python: str) -> int | None:
    """The uid root runs a program as when there is no private filesystem view: a fresh
    sandbox uid if that uid can reach the interpreter, else None (stay root)."""
    if not is_root():
        return None
    paths = [python, *python_roots(python, True)]
    return new_sandbox_uid() if all(world_reachable(p) for p in paths) else None


def detect(config: SandboxConfig | None = None, python: str | None = None) -> Protections:
    """The protections a program started with ``config`` would get here."""
    config = config or SandboxConfig()
    python = python or sys.executable
    abi, landlock_why = landlock_abi()
    use_landlock = config.landlock and abi > 0
    notes = [landlock_why] if landlock_why else []
    if not config.landlock:
        notes.append("Landlock turned off by the config")
    root = is_root()
    kind: Kind = "none"
    if config.isolation in ("auto", "bwrap"):
        ok, why = _probe_bwrap(python)
        if ok:
            kind = "bwrap"
        elif why:
            notes.append(why)
    if kind == "none" and config.isolation in ("auto", "unshare"):
        ok, why = _probe_unshare(python, drop_uid_without_view(python) is not None)
        if ok:
            kind = "unshare"
        elif why:
            notes.append(why)
    if kind == "bwrap":
        unprivileged = True  # setpriv drops root; otherwise we are not root to begin with
    else:
        unprivileged = not root or drop_uid_without_view(python) is not None
        if root and not unprivileged:
            notes.append(
                "running as root and the interpreter is not reachable by an unprivileged uid "
                "without bubblewrap's filesystem view: the program runs as host root (in its "
                "own user namespace under unshare)"
            )
    # RLIMIT_NPROC counts every process of the uid (per user namespace): it is a per-sandbox
    # limit only with a namespace or a fresh uid; host root is exempt from it altogether.
    nproc = unprivileged and (kind != "none" or root)
    if root and not unprivileged:
        notes.append("RLIMIT_NPROC does not apply to host root: no process limit")
    elif not nproc:
        notes.append(
            "no user namespace: RLIMIT_NPROC would count all your processes, so it is not set"
        )
    return Protections(
        isolation=kind,
        user_ns=(kind == "bwrap" and not root) or kind == "unshare",
        net_ns=kind in ("bwrap", "unshare"),
        pid_ns=kind == "bwrap",
        mount_ns=kind == "bwrap",
        ipc_ns=kind in ("bwrap", "unshare"),
        unprivileged_uid=unprivileged,
        nproc_limit=nproc,
        rlimits=RLIMITS if nproc else tuple(r for r in RLIMITS if r != "processes"),
        landlock_abi=abi,
        landlock=use_landlock,
        notes=tuple(notes),
    )
