"""Pieces shared by the commands: backend options, worker specs, tables, preflight."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

from flashevolve.backends.base import LLM, ChatRequest, LLMError
from flashevolve.errors import BackendError, ConfigError


def dumps_readable(obj: Any) -> str:
    """JSON indented for reading, except that a list of plain values stays on one line: a
    score-over-time series is hundreds of short lists, and one value per line made a bench
    result file ten times longer than its content."""
    flat: list[str] = []

    def fold(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fold(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            if x and all(not isinstance(v, dict | list | tuple) for v in x):
                flat.append(json.dumps(list(x), default=str))
                return f"\x00{len(flat) - 1}\x00"
            return [fold(v) for v in x]
        return x

    text = json.dumps(fold(obj), indent=2, default=str)
    return re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: flat[int(m.group(1))], text)


def given_options(args: argparse.Namespace, options: dict[str, str]) -> dict[str, Any]:
    """``options``: attribute -> keyword; the keywords of the options the user gave."""
    return {
        key: getattr(args, name) for name, key in options.items() if getattr(args, name) is not None
    }


def require_at_least_one(args: argparse.Namespace, options: dict[str, str]) -> None:
    """``options``: attribute -> flag; an option given below 1 is a one-line error."""
    for name, flag in options.items():
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("backend")
    g.add_argument(
        "--backend",
        default="local",
        help="local (embedded llama-server), openai (any OpenAI-compatible URL), "
        "vllm (launch or attach), or sim[:profile] (the serving simulator)",
    )
    g.add_argument(
        "--model",
        default=None,
        help="local: path to a GGUF file; openai/vllm: the served model name",
    )
    g.add_argument(
        "--base-url",
        default=None,
        help="openai/vllm: the endpoint, e.g. http://127.0.0.1:8000/v1; openai: several "
        "comma-separated URLs of one model go through the router (docs/scale-out.md)",
    )
    g.add_argument(
        "--endpoints",
        default=None,
        metavar="FILE",
        help="openai: a file listing the endpoints of one model (one URL per line, or the "
        "format in docs/scale-out.md), served through the router",
    )
    g.add_argument(
        "--api-key-env",
        default=None,
        help="environment variable holding the API key (never written anywhere)",
    )
    g.add_argument("--slots", type=int, default=4, help="local: parallel llama-server slots")
    g.add_argument(
        "--ctx-per-slot",
        type=int,
        default=None,
        help="local: context tokens per slot, prompt + answer (default 2048)",
    )
    g.add_argument("--port", type=int, default=None, help="local/vllm: port (default: free)")
    g.add_argument(
        "--concurrency", type=int, default=None, help="max requests in flight to the endpoint"
    )
    g.add_argument(
        "--client-queue",
        choices=("priority", "fifo"),
        default="priority",
        help="local/openai: order of requests waiting for --concurrency (or a local slot): "
        "later pipeline stages first (priority, default: more accepted proposals, fewer "
        "proposals; docs/benchmarks.md section 6) or first come, first served (fifo)",
    )
    g.add_argument(
        "--stream",
        action="store_true",
        help="local/openai: stream answers (SSE), so the tokens of cancelled requests are "
        "counted as wasted work",
    )


def make_backend(args: argparse.Namespace) -> LLM:
    from flashevolve import backends

    kind, _, arg = args.backend.partition(":")
    if kind == "local":
        kwargs: dict[str, Any] = {"slots": args.slots}
        if args.model:
            kwargs["model"] = args.model
        if args.port:
            kwargs["port"] = args.port
        if getattr(args, "ctx_per_slot", None) is not None:
            kwargs["ctx_per_slot"] = args.ctx_per_slot
        if getattr(args, "stream", False):
            kwargs["stream"] = True
        kwargs["queue"] = getattr(args, "client_queue", "priority")
        return backends.local(**kwargs)
    if kind == "openai":
        routed = _router(args)
        if routed is not None:
            return routed
        if not args.base_url or not args.model:
            raise ConfigError("--backend openai needs --base-url URL and --model NAME")
        return backends.openai(
            args.base_url,
            args.model,
            api_key_env=args.api_key_env,
            max_concurrency=args.concurrency or 16,
            stream=getattr(args, "stream", False),
            queue=getattr(args, "client_queue", "priority"),
        )
    if kind == "vllm":
        if not args.model:
            raise ConfigError("--backend vllm needs --model NAME (and --base-url to attach)")
        return backends.vllm(model=args.model, url=args.base_url, port=args.port)
    if kind == "sim":
        from flashevolve.workflows.base import sim_workload_of

        workload = sim_workload_of(getattr(args, "workflow", "gepa"))
        return backends.simulated(
            profile=arg or "vllm-h100-qwen3-8b", seed=args.seed, workload=workload
        )
    raise ConfigError(
        f"unknown --backend {args.backend!r}; use local, openai, vllm or sim[:profile]"
    )


def _router(args: argparse.Namespace) -> LLM | None:
    """Several endpoints of one model (``--endpoints FILE`` or ``--base-url URL1,URL2``)."""
    from flashevolve.backends.router import router_from_options

    endpoints = getattr(args, "endpoints", None)
    if endpoints is None and "," not in (args.base_url or ""):
        return None
    return router_from_options(
        args.base_url,
        endpoints,
        args.model,
        api_key_env=args.api_key_env,
        max_concurrency=args.concurrency,
        stream=getattr(args, "stream", False) or None,
        queue=getattr(args, "client_queue", None),
    )


async def preflight(llm: LLM) -> None:
    """One tiny request, so a wrong URL or model name fails now with one clear line."""
    try:
        await llm.complete(
            ChatRequest(
                messages=[{"role": "user", "content": "Say OK."}], max_tokens=2, stage="preflight"
            )
        )
    except LLMError as err:
        hint = ""
        if err.status == 404:
            hint = " (is the model name right? list them at <base-url>/models)"
        elif err.status in (401, 403):
            hint = " (check the API key in the variable named by --api-key-env)"
        raise BackendError(
            f"the backend {llm.endpoint} did not answer a test request: {err}{hint}"
        ) from None


def run_preflight(llm: LLM) -> None:
    asyncio.run(preflight(llm))


def parse_workers(spec: str | None) -> dict[str, int]:
    """``rollout=8,propose=4,evaluate=8`` -> dict."""
    out: dict[str, int] = {}
    if not spec:
        return out
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise ConfigError(
                f"--workers expects stage=N pairs like rollout=8,propose=4, got {part!r}"
            )
        out[name.strip()] = int(value)
    return out


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; ``columns`` = (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            value = row.get(key)
            line.append("-" if value is None else format(value, fmt) if fmt else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for n, r in enumerate(cells):
        out.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
