"""``flashevolve local-server build | info | start``: the embedded llama-server from the shell."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from flashevolve.errors import BackendError

NAME = "local-server"
HELP = "Build, inspect or run the embedded llama.cpp server (CPU, OpenAI-compatible)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build llama-server once and cache it (minutes)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument(
        "--no-model",
        action="store_true",
        help="do not fetch the default model (SmolLM2-135M-Instruct)",
    )
    sub.add_parser("info", help="show the cached binary, the default model and the cache dir")
    start = sub.add_parser("start", help="run the server in the foreground until Ctrl-C")
    start.add_argument("--model", metavar="PATH", help="a .gguf model (default: SmolLM2-135M)")
    start.add_argument("--slots", type=int, default=4, help="parallel sequences (default 4)")
    start.add_argument(
        "--ctx-per-slot", type=int, default=2048, help="context tokens per slot (default 2048)"
    )
    start.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    start.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: all cores but one)"
    )
    start.add_argument("--startup-timeout", type=float, default=180.0, metavar="SECONDS")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return {"build": _build, "info": _info, "start": _start}[args.action](args)


def _build(args: argparse.Namespace) -> int:
    from flashevolve.backends import llama_build as lb

    cached = not args.force and lb.find_llama_server() is not None
    binary = lb.ensure_llama_server(force=args.force)
    if cached:
        print(f"llama-server: {binary} (cached)")
    else:
        info = lb.build_info() or {}
        print(f"llama-server: {binary} (built in {info.get('build_seconds', '?')} s)")
    if not args.no_model:
        print(f"model: {lb.ensure_default_model()}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from flashevolve.backends import llama_build as lb

    try:
        binary = lb.find_llama_server()
    except BackendError as err:
        binary = None
        print(f"warning: {err}", file=sys.stderr)
    print(f"cache dir:    {lb.cache_dir()}")
    print(f"llama-server: {binary or 'not built (run: flashevolve local-server build)'}")
    info = lb.build_info()
    if binary and info:
        print(
            f"built from:   {info.get('source')} in {info.get('build_seconds')} s "
            f"at {info.get('built_at')}"
        )
    model = lb.default_model_path()
    print(f"model:        {model or 'not downloaded (local-server build fetches it)'}")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start(args: argparse.Namespace) -> int:
    from flashevolve.backends.llama import local

    llm = local(
        args.model,
        slots=args.slots,
        ctx_per_slot=args.ctx_per_slot,
        port=args.port,
        threads=args.threads,
        startup_timeout_s=args.startup_timeout,
    )
    # SIGTERM (e.g. from a process manager) should shut down as cleanly as Ctrl-C does.
    # SIGINT too: a launcher that ran us in the background may have set it to "ignore".
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        print(
            f"llama-server ready: {llm.endpoint}  (model {llm.model}, {llm.slots} slots, "
            f"log {llm.server.log_path})",
            flush=True,
        )
        print("OpenAI-compatible: base_url=" + llm.endpoint + "  model=" + llm.model, flush=True)
        print("Ctrl-C to stop.", flush=True)
        while llm.server.alive:
            time.sleep(0.5)  # foreground supervision: notice if the server dies on its own
        raise BackendError(
            f"llama-server exited with code {llm.server.returncode}; last log lines:\n"
            f"{llm.server.log_tail()}"
        )
    except KeyboardInterrupt:
        print("stopping llama-server", file=sys.stderr)
        return 0
    finally:
        llm.close()
