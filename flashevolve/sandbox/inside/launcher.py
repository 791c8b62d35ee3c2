"""Runs inside the sandbox before the untrusted program, in the same process.

Order matters: resource limits, then Landlock (a kernel wall for this process and everything it
starts), then the channel, then every other file descriptor closed, then the program.  After the
program starts nothing here is trusted any more: the parent believes only what the kernel tells
it (exit status, resource usage) and what its own timers and counters say.

Stdlib only (plus the ``landlockpy`` binding when it is available).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import resource
import runpy
import sys
import traceback
from typing import Any

LANDLOCK_REQUIRED_BUT_FAILED = 70


def set_rlimits(limits: dict[str, list[int]]) -> None:
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))


def apply_landlock(spec: dict[str, Any]) -> dict[str, Any]:
    """Deny every filesystem access but reading ``read``, writing under ``write`` and using the
    device nodes; deny TCP (and, on new kernels, UDP); scope signals and abstract sockets to the
    sandbox.  Returns what was applied."""
    if not spec["enabled"]:
        return {"applied": False, "why": "turned off by the config"}
    try:
        import landlockpy as ll
    except ImportError:
        return {"applied": False, "why": "landlockpy is not importable in the sandbox"}
    abi = ll.abi_version()
    if abi < 1:
        return {"applied": False, "why": "the kernel has no Landlock", "abi": 0}
    every = ll.fs_for_abi(abi)
    file_only = every & (
        ll.AccessFS.EXECUTE
        | ll.AccessFS.WRITE_FILE
        | ll.AccessFS.READ_FILE
        | ll.AccessFS.TRUNCATE
        | ll.AccessFS.IOCTL_DEV
    )
    read = ll.AccessFS.EXECUTE | ll.AccessFS.READ_FILE | ll.AccessFS.READ_DIR
    device = ll.AccessFS.READ_FILE | ll.AccessFS.WRITE_FILE | ll.AccessFS.TRUNCATE

    def allow(ruleset: Any, path: str, rights: Any) -> None:
        if os.path.exists(path):
            ruleset.allow_path(path, rights if os.path.isdir(path) else rights & file_only)

    with ll.Ruleset(
        handled_fs=every, handled_net=ll.net_for_abi(abi), scoped=ll.scope_for_abi(abi)
    ) as ruleset:
        for path in spec["read"]:
            allow(ruleset, path, read)
        for path in spec["write"]:
            allow(ruleset, path, every)
        for path in spec["devices"]:
            allow(ruleset, path, device)
        ruleset.restrict()
    return {"applied": True, "abi": abi}


def report_usage(fe_llm: object) -> None:
    """At a normal exit, tell the parent what this process tree used (bubblewrap's outer
    process does not pass its children's usage on, so the parent cannot see it itself)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    with contextlib.suppress(Exception):
        fe_llm._send(  # type: ignore[attr-defined]
            {
                "kind": "usage",
                "cpu_user_s": me.ru_utime + kids.ru_utime,
                "cpu_system_s": me.ru_stime + kids.ru_stime,
                "max_rss_kb": max(me.ru_maxrss, kids.ru_maxrss),
            }
        )


def close_other_fds(keep: set[int]) -> None:
    start = 3
    for fd in sorted(f for f in keep if f >= 3):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def program_sys_path(spec: dict[str, Any], original: list[str]) -> list[str]:
    """The program imports its own files, ``fe_llm`` and the standard library (and the venv's
    packages when allowed); never the launcher's private copy of ``landlockpy``."""
    kept = [
        p
        for p in original
        if p != spec["inside_dir"] and (spec["keep_site_packages"] or "site-packages" not in p)
    ]
    return [spec["src_dir"], spec["inside_dir"], *kept]


def describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:497] + "..."


def call_entry(entry: str, args: Any) -> Any:
    module_name, _, function = entry.partition(":")
    function_obj = getattr(importlib.import_module(module_name), function)
    return function_obj() if args is None else function_obj(args)


def run(spec: dict[str, Any], fe_llm: Any) -> None:
    entry = spec["entry"]
    try:
        if ":" in entry:
            fe_llm.set_result(call_entry(entry, spec["args"]))
        else:
            path = os.path.join(spec["src_dir"], entry)
            sys.argv = [path]
            runpy.run_path(path, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as error:  # report, then fail the way an uncaught exception does
        traceback.print_exc()
        with contextlib.suppress(Exception):
            fe_llm._send({"kind": "error", "error": describe(error)})
        sys.exit(1)


def serve(spec: dict[str, Any], fe_llm: Any) -> None:
    """Session mode: import the module once, then run the calls the parent sends, in order."""
    try:
        module = importlib.import_module(spec["entry"])
    except BaseException as error:
        traceback.print_exc()
        fe_llm._send({"kind": "ready", "ok": False, "error": describe(error)})
        sys.exit(1)
    fe_llm._send({"kind": "ready", "ok": True})
    while True:
        call = fe_llm._next_call()
        if call is None or call.get("kind") != "call":
            return
        ident = call.get("id")
        try:
            value = getattr(module, str(call.get("function")))(*call.get("args", []))
            fe_llm._send({"kind": "return", "id": ident, "value": value})
        except BaseException as error:
            if isinstance(error, SystemExit):
                raise
            tb = traceback.format_exc()[-4000:]
            fe_llm._send({"kind": "raise", "id": ident, "error": describe(error), "traceback": tb})


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    original_path = list(sys.path)
    sys.path[:0] = [spec["inside_dir"]] + ([spec["pkgs_dir"]] if spec["pkgs_dir"] else [])
    set_rlimits(spec["rlimits"])
    landlock = apply_landlock(spec["landlock"])
    if spec["landlock"]["required"] and not landlock["applied"]:
        sys.stderr.write(f"sandbox: Landlock was expected but not applied: {landlock}\n")
        sys.exit(LANDLOCK_REQUIRED_BUT_FAILED)
    # fe_llm sits next to this file and is found on the sys.path set above, not as a package
    import fe_llm  # type: ignore[import-not-found]

    channel = spec["channel"]
    fe_llm._connect(channel["read_fd"], channel["write_fd"], channel["max_bytes"])
    close_other_fds({channel["read_fd"], channel["write_fd"]})
    atexit.register(report_usage, fe_llm)
    sys.path[:] = program_sys_path(spec, original_path)
    os.chdir(spec["work_dir"])
    fe_llm._send({"kind": "hello", "pid": os.getpid(), "uid": os.getuid(), "landlock": landlock})
    if spec["mode"] == "serve":
        serve(spec, fe_llm)
    else:
        run(spec, fe_llm)


if __name__ == "__main__":
    main()
