"""Backends: where LLM requests go.

Factories (imported lazily so the core never needs a network SDK or a server binary):

- :func:`openai` -- any OpenAI-compatible endpoint (OpenAI, a running vLLM, a running server).
- :func:`local` -- the embedded llama.cpp ``llama-server`` (CPU, no API key).
- :func:`vllm` -- a managed ``vllm serve`` subprocess (GPU only) or an attached URL.
- :func:`simulated` -- the serving *simulator* (a workload model on a virtual clock, not an LLM).
- :func:`router` -- one backend over several endpoints of one model (docs/scale-out.md).
"""

from __future__ import annotations

from typing import Any

from flashevolve.backends.base import LLM, ChatRequest, ChatResult, LLMError


def openai(
    base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY", **kwargs: Any
) -> LLM:
    from flashevolve.backends.openai_compat import OpenAICompatLLM

    return OpenAICompatLLM(base_url, model, api_key_env=api_key_env, **kwargs)


def local(**kwargs: Any) -> LLM:
    from flashevolve.backends.llama import local as _local

    return _local(**kwargs)


def vllm(**kwargs: Any) -> LLM:
    from flashevolve.backends.vllm_launcher import vllm as _vllm

    return _vllm(**kwargs)


def simulated(**kwargs: Any) -> LLM:
    from flashevolve.backends.sim import simulated as _simulated

    return _simulated(**kwargs)


def backend_from_spec(spec: str, seed: int = 0, *, workload: Any = None) -> LLM:
    """A backend named by a string: ``"local"`` or ``"sim"`` / ``"sim:<profile>"`` (the
    simulator answers with ``workload``: the run's workflow's own)."""
    from flashevolve.errors import ConfigError

    name, _, arg = spec.partition(":")
    if name == "local":
        return local()
    if name == "sim":
        return simulated(profile=arg or "vllm-h100-qwen3-8b", seed=seed, workload=workload)
    raise ConfigError(f"unknown backend {spec!r}; use 'local', 'sim[:profile]' or an LLM object")


# The router is imported here, at the end: importing the submodule ``backends.router`` binds the
# package attribute ``router`` to the module, and this import binds it to the function, so
# ``backends.router([...])`` is the factory (``from flashevolve.backends.router import Router``
# still reaches the module).
from flashevolve.backends.router import Router, router  # noqa: E402

__all__ = [
    "LLM",
    "ChatRequest",
    "ChatResult",
    "LLMError",
    "Router",
    "backend_from_spec",
    "local",
    "openai",
    "router",
    "simulated",
    "vllm",
]
