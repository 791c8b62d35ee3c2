"""vLLM: attach to a running OpenAI-compatible vLLM server, or launch ``vllm serve`` (GPU only).

vLLM needs a CUDA GPU; the ``vllm`` extra pins ``vllm==0.32.0`` (0.33.0 did not resolve from
PyPI when this was written). Without a GPU, use :func:`flashevolve.backends.llama` or the serving
simulator. The launcher itself is plain process management, tested with a fake executable.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flashevolve.backends.llama import ManagedServerLLM
from flashevolve.backends.openai_compat import OpenAICompatLLM
from flashevolve.backends.process import resolve_port, start_server
from flashevolve.errors import BackendError

Executable = str | Path | Sequence[str]


class VLLMServer(ManagedServerLLM):
    """A ``vllm serve`` subprocess plus its OpenAI-compatible client. Build it with :func:`vllm`."""

    kind = "vllm-managed"

    def __init__(self, server: Any, model: str, *, command: list[str], **client_kwargs: Any):
        super().__init__(server, model, **client_kwargs)
        self.command = command

    def __repr__(self) -> str:
        return f"VLLMServer(model={self.model!r}, endpoint={self.endpoint!r})"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "command": list(self.command)}


def _flag_value(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value)  # vLLM takes JSON for dict-valued options
    return str(value)


def build_vllm_command(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int,
    executable: Executable | None = None,
    **engine_args: Any,
) -> list[str]:
    """``vllm serve MODEL --host H --port P`` plus engine args as flags.

    ``tensor_parallel_size=2`` becomes ``--tensor-parallel-size 2``; ``True`` becomes a bare flag
    (``enforce_eager=True`` -> ``--enforce-eager``); ``False`` and ``None`` are left out (vLLM's
    defaults apply; pass ``no_enable_prefix_caching=True`` for an explicit negative); a list or
    tuple repeats values after one flag; a dict is passed as JSON.
    """
    if executable is None:
        found = shutil.which("vllm")
        if not found:
            raise BackendError(
                "the `vllm` command is not installed; on a machine with a CUDA GPU run "
                "`pip install 'flashevolve[vllm]'`, or attach to a running server with url=..."
            )
        prefix = [found]
    elif isinstance(executable, (str, Path)):
        prefix = [str(executable)]
    else:
        prefix = [str(part) for part in executable]
    cmd = [*prefix, "serve", str(model), "--host", host, "--port", str(port)]
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            cmd.append(flag)
        elif isinstance(value, (list, tuple)):
            cmd += [flag, *(_flag_value(v) for v in value)]
        else:
            cmd += [flag, _flag_value(value)]
    return cmd


def _v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def vllm(
    model: str = "Qwen/Qwen3-0.6B",
    *,
    url: str | None = None,
    port: int | None = None,
    executable: Executable | None = None,
    startup_timeout_s: float = 900,
    api_key_env: str | None = None,
    max_concurrency: int = 64,
    client: dict[str, Any] | None = None,
    **engine_args: Any,
) -> OpenAICompatLLM:
    """A vLLM backend.

    - ``url`` given: attach to that running server (``http://host:8000`` or ``.../v1``); nothing
      is launched and nothing is stopped on close.
    - otherwise: launch ``vllm serve model`` on 127.0.0.1 (``port`` or a free one) with
      ``engine_args`` as flags, wait up to ``startup_timeout_s`` for ``/health`` (weights load and
      CUDA graphs compile, hence the long default), and return a client that owns the process.
    - ``api_key_env``: the env var holding the server's ``--api-key``, if it has one.
    - ``client``: more keyword arguments for :class:`OpenAICompatLLM` (timeout_s, max_retries, ...).
    """
    client_kwargs = {
        "max_concurrency": max_concurrency,
        "api_key_env": api_key_env,
        **(client or {}),
    }
    if url is not None:
        if engine_args or executable is not None or port is not None:
            raise BackendError(
                "vllm(url=...) attaches to a running server; engine args, port and executable "
                "only apply when flashevolve launches the server (drop url= to launch)"
            )
        return OpenAICompatLLM(_v1(url), model, **client_kwargs)
    port = resolve_port(port)
    cmd = build_vllm_command(model, port=port, executable=executable, **engine_args)
    server = start_server(
        cmd,
        port=port,
        name="vllm",
        health_path="/health",
        ready_timeout_s=startup_timeout_s,
        grace_s=15.0,
    )
    try:
        return VLLMServer(server, model, command=cmd, **client_kwargs)
    except BaseException:
        server.stop()
        raise
