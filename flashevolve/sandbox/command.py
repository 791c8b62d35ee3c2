"""The command lines that start a sandboxed program, one builder per isolation kind.

Nothing here enforces anything itself: bubblewrap (namespaces and the filesystem view), util-linux
``unshare``/``setpriv`` (namespaces, dropping root) and, inside, the kernel's rlimits and Landlock
do.  This module only decides which paths the program sees and writes the flags for them.

Inside bubblewrap the program sees a tiny filesystem: the system (``/usr`` and its symlinks, two
files of ``/etc``, four device nodes), the Python it runs on (read-only), ``/fe`` (the launcher
and the channel helper, read-only) and ``/sandbox``: a size-capped tmpfs that is its working
and only writable directory, with its own source files read-only in ``/sandbox/src``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flashevolve.sandbox.config import SandboxConfig

INSIDE_DIR = Path(__file__).resolve().parent / "inside"
#: The system directories (or merged-/usr symlinks) every program needs.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the launcher, the program and its scratch space are, as seen from inside."""

    launcher: str
    launch_json: str
    inside_dir: str
    pkgs_dir: str | None  # where ``landlockpy`` is imported from (None: not installed)
    src_dir: str
    work_dir: str
    read_paths: list[str] = field(default_factory=list)  # for Landlock, inside paths
    write_paths: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Command:
    argv: list[str]
    env: dict[str, str] | None  # None: bubblewrap sets the environment itself
    user: int | None  # drop to this uid/gid before exec (root without bubblewrap)
    layout: Layout


def python_flags(config: SandboxConfig) -> list[str]:
    # -I: no PYTHON* variables, no user site, no cwd on sys.path; -B: no .pyc writes;
    # -u: unbuffered, so output written just before a kill is still captured.
    return ["-I", "-B", "-u"] + ([] if config.site_packages else ["-S"])


def python_roots(python: str, site_packages: bool) -> list[str]:
    """Host directories the interpreter needs: its installation (and the venv, if used)."""
    roots = {os.path.realpath(sys.base_prefix)}
    if site_packages or os.path.realpath(python).startswith(os.path.realpath(sys.prefix)):
        roots.add(os.path.realpath(sys.prefix))
    if not python.startswith(tuple(roots)):
        roots.add(os.path.dirname(os.path.abspath(python)))
        roots.add(os.path.dirname(os.path.realpath(python)))
    return sorted(roots)


def landlock_pkgs_dir() -> str | None:
    """The directory that holds the ``landlockpy`` package, if it is installed."""
    try:
        import landlockpy
    except ImportError:
        return None
    return str(Path(landlockpy.__file__).resolve().parent.parent)


def sandbox_env(config: SandboxConfig, work_dir: str) -> dict[str, str]:
    """A minimal environment: nothing of the parent's (no API keys, no HOME of the user)."""
    base = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": work_dir,
        "TMPDIR": work_dir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    return base | dict(config.env)


def launch_spec(
    config: SandboxConfig,
    layout: Layout,
    *,
    mode: str,
    entry: str,
    args: Any,
    channel_fds: tuple[int, int],
    landlock_required: bool,
    limit_processes: bool,
) -> dict[str, Any]:
    """What the launcher reads before it runs the program (written to ``launch.json``)."""
    mib = 1024 * 1024
    nproc = {"RLIMIT_NPROC": [config.max_processes] * 2} if limit_processes else {}
    return {
        "mode": mode,
        "entry": entry,
        "args": args,
        "src_dir": layout.src_dir,
        "work_dir": layout.work_dir,
        "inside_dir": layout.inside_dir,
        "pkgs_dir": layout.pkgs_dir,
        "keep_site_packages": config.site_packages,
        "rlimits": {
            # soft < hard: the kernel sends SIGXCPU at the soft limit (a recognisable death),
            # and SIGKILL one second later if the program ignores it.
            "RLIMIT_CPU": [config.cpu_s, config.cpu_s + 1],
            "RLIMIT_AS": [config.memory_mb * mib] * 2,
            **nproc,
            "RLIMIT_FSIZE": [config.max_file_mb * mib] * 2,
            "RLIMIT_NOFILE": [config.max_open_files] * 2,
            "RLIMIT_CORE": [0, 0],
        },
        "landlock": {
            "enabled": config.landlock,
            "required": landlock_required,
            "read": layout.read_paths,
            "write": layout.write_paths,
            "devices": list(DEVICES),
        },
        "channel": {
            "read_fd": channel_fds[0],
            "write_fd": channel_fds[1],
            "max_bytes": config.max_message_bytes,
        },
    }


def write_launch(host_dir: Path, spec: dict[str, Any]) -> Path:
    path = host_dir / "launch.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- bubblewrap


class _BwrapArgs:
    """Accumulates bwrap flags, creating each missing parent directory world-traversable (bwrap
    would create it 0700, which an unprivileged sandbox uid cannot enter)."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self._made: set[str] = {"/"}
        self._bound: list[str] = []

    def covered(self, path: str) -> bool:
        return any(path == b or path.startswith(b.rstrip("/") + "/") for b in self._bound)

    def _parents(self, dest: str) -> None:
        parts = Path(dest).parts[1:-1]
        current = ""
        for part in parts:
            current += "/" + part
            if current not in self._made and not self.covered(current):
                self.args += ["--perms", "0755", "--dir", current]
                self._made.add(current)

    def bind(self, flag: str, src: str, dest: str) -> None:
        if self.covered(dest):
            return
        self._parents(dest)
        self.args += [flag, src, dest]
        self._bound.append(dest)
        self._made.add(dest)

    def add(self, *items: str) -> None:
        self.args += list(items)


def bwrap_command(
    config: SandboxConfig,
    host_dir: Path,
    *,
    bwrap: str,
    python: str,
    sandbox_uid: int | None,
    inner: list[str] | None = None,
) -> Command:
    """bubblewrap: new pid, net, ipc, uts (and cgroup) namespaces, a private filesystem view,
    a new session, killed with its parent.  As root it creates no user namespace (that would map
    the program to host root); instead ``setpriv`` drops to ``sandbox_uid`` with no capabilities.
    ``inner`` replaces the launcher command (used by the capability probe)."""
    pkgs = landlock_pkgs_dir()
    layout = Layout(
        launcher="/fe/inside/launcher.py",
        launch_json="/fe/launch.json",
        inside_dir="/fe/inside",
        pkgs_dir="/fe/pkgs" if pkgs else None,
        src_dir="/sandbox/src",
        work_dir="/sandbox",
        write_paths=["/sandbox"],
    )
    b = _BwrapArgs()
    b.add("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts")
    b.add("--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv")
    if sandbox_uid is None:  # not root: a user namespace maps us to ourselves, no nesting
        b.add("--unshare-user", "--disable-userns")
    read: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            b.add("--symlink", os.readlink(path), path)
        elif os.path.isdir(path):
            b.bind("--ro-bind", path, path)
            read.append(path)
    for path in SYSTEM_FILES:
        if os.path.exists(path):
            b.bind("--ro-bind", path, path)
            read.append(path)
    b.add("--perms", "0755", "--dir", "/dev")
    for dev in DEVICES:
        b.add("--dev-bind-try", dev, dev)
    b.add("--proc", "/proc")
    for root in python_roots(python, config.site_packages) + [
        os.path.realpath(p) for p in config.read_paths
    ]:
        b.bind("--ro-bind", root, root)
        read.append(root)
    b.bind("--ro-bind", str(INSIDE_DIR), layout.inside_dir)
    if pkgs:
        b.bind("--ro-bind", os.path.join(pkgs, "landlockpy"), "/fe/pkgs/landlockpy")
    b.bind("--ro-bind", str(host_dir / "launch.json"), layout.launch_json)
    b.add("--perms", "1777", "--size", str(config.scratch_mb * 1024 * 1024), "--tmpfs", "/sandbox")
    b.add("--ro-bind", str(host_dir / "src"), layout.src_dir, "--chdir", layout.work_dir)
    for key, value in sandbox_env(config, layout.work_dir).items():
        b.add("--setenv", key, value)
    read += ["/fe", layout.src_dir]
    drop = [] if sandbox_uid is None else setpriv_prefix(sandbox_uid)
    program = inner or [python, *python_flags(config), layout.launcher, layout.launch_json]
    argv = [bwrap, *b.args, "--", *drop, *program]
    return Command(argv, None, None, _with_paths(layout, read))


def setpriv_prefix(uid: int) -> list[str]:
    """util-linux ``setpriv``: become ``uid``/``uid`` with no groups, no capabilities (not even in
    the bounding set) and no_new_privs, so nothing it execs can gain privileges back."""
    setpriv = shutil.which("setpriv") or "setpriv"
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--no-new-privs",
    ]


def _with_paths(layout: Layout, read: list[str]) -> Layout:
    return Layout(
        launcher=layout.launcher,
        launch_json=layout.launch_json,
        inside_dir=layout.inside_dir,
        pkgs_dir=layout.pkgs_dir,
        src_dir=layout.src_dir,
        work_dir=layout.work_dir,
        read_paths=read,
        write_paths=layout.write_paths,
    )


# ---------------------------------------------------------------------------- unshare and none


def host_layout(config: SandboxConfig, host_dir: Path, python: str) -> Layout:
    """Without a filesystem view the program sees the host; Landlock (if any) narrows it."""
    pkgs = landlock_pkgs_dir()
    read = [p for p in SYSTEM_DIRS if os.path.isdir(p) and not os.path.islink(p)]
    read += [p for p in SYSTEM_FILES if os.path.exists(p)]
    read += python_roots(python, config.site_packages)
    read += [os.path.realpath(p) for p in config.read_paths]
    read += [str(INSIDE_DIR), str(host_dir / "src"), str(host_dir / "launch.json")]
    if pkgs:
        read.append(os.path.join(pkgs, "landlockpy"))
    return Layout(
        launcher=str(INSIDE_DIR / "launcher.py"),
        launch_json=str(host_dir / "launch.json"),
        inside_dir=str(INSIDE_DIR),
        pkgs_dir=pkgs,
        src_dir=str(host_dir / "src"),
        work_dir=str(host_dir / "work"),
        read_paths=read,
        write_paths=[str(host_dir / "work")],
    )


def unshare_command(
    config: SandboxConfig,
    host_dir: Path,
    *,
    unshare: str,
    python: str,
    sandbox_uid: int | None,
    inner: list[str] | None = None,
) -> Command:
    """util-linux ``unshare``: new user, net, ipc and uts namespaces (no pid namespace: with
    ``--fork`` the program would be pid 1, which ignores its own signals and hides how it died)."""
    layout = host_layout(config, host_dir, python)
    program = inner or [python, *python_flags(config), layout.launcher, layout.launch_json]
    argv = [unshare, "--user", "--map-root-user", "--net", "--ipc", "--uts", "--", *program]
    return Command(argv, sandbox_env(config, layout.work_dir), sandbox_uid, layout)


def plain_command(
    config: SandboxConfig, host_dir: Path, *, python: str, sandbox_uid: int | None
) -> Command:
    """No namespaces: a child process with rlimits, its own session and (if any) Landlock."""
    layout = host_layout(config, host_dir, python)
    argv = [python, *python_flags(config), layout.launcher, layout.launch_json]
    return Command(argv, sandbox_env(config, layout.work_dir), sandbox_uid, layout)
