"""Command-line options of the Meta-Harness workflow, for the commands to wire.

``flashevolve run --workflow meta-harness`` needs: the loudly named opt-out for running
generated code where nothing isolates it, the harness bounds, and settings that fit the backend
(a small local model gets a grammar that makes it answer with a hypothesis and one closed code
block, and a prompt budget that fits its context).  The commands call::

    from flashevolve.workflows.meta_harness import cli as mh_cli
    mh_cli.add_arguments(parser)                       # once, when building the parser
    options = mh_cli.evolver_options(args, mode=mode, backend_kind="local")  # per mode

and pass ``options`` to the :class:`~flashevolve.Evolver` (with ``workflow="meta-harness"``)
instead of GEPA's options.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flashevolve.errors import ConfigError

#: The opt-out: generated code runs even on a machine with no namespaces and no Landlock.
UNSANDBOXED_FLAG = "--i-accept-unsandboxed-code"
UNSANDBOXED_WARNING = (
    "WARNING: --i-accept-unsandboxed-code: where this machine offers no isolation, "
    "model-written harness code runs as an ordinary process that can read your files and "
    "reach the network."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("meta-harness (--workflow meta-harness)")
    group.add_argument(
        UNSANDBOXED_FLAG,
        dest="i_accept_unsandboxed_code",
        action="store_true",
        help="run model-written code even where no sandbox protection works here (no "
        "namespaces, no Landlock): it can then read your files and reach the network",
    )
    group.add_argument(
        "--harness-timeout",
        type=float,
        default=None,
        help="seconds one predict() call may take, model calls included (default 60)",
    )
    group.add_argument(
        "--harness-processes",
        type=int,
        default=None,
        help="sandboxed processes evaluating one harness at once (default 2)",
    )
    group.add_argument(
        "--proposer-context",
        type=int,
        default=None,
        help="tokens of history in the proposer's prompt (default 12000; 2500 for --backend local)",
    )


#: The proposer's budget on the embedded server: history in the prompt, and the answer.
LOCAL_CONTEXT_TOKENS = 2500
LOCAL_PROPOSER_MAX_TOKENS = 1500


def local_ctx_per_slot(args: argparse.Namespace) -> int:
    """Context per llama-server slot that holds the proposer's prompt and its answer (the
    server's default of 2048 refuses the prompt; SmolLM2 reads 8192), with room to spare for
    the prompt's estimate of its own length."""
    context = getattr(args, "proposer_context", None) or LOCAL_CONTEXT_TOKENS
    return context + LOCAL_PROPOSER_MAX_TOKENS + 512


def proposal_grammar(max_code_chars: int = 4000) -> str:
    """A llama.cpp GBNF grammar: a ``HYPOTHESIS:`` line, then one closed ```python block.

    A tiny local model rarely follows the answer format; constrained decoding gives it a fair
    chance while :func:`~.harness.parse_proposal` stays the judge.  The code is still the
    model's own (and usually fails the import check on a 135M model).
    """
    return (
        'root ::= "HYPOTHESIS: " hyp "\\n```python\\n" code "\\n```"\n'
        "hyp ::= [^\\n`]{10,200}\n"
        f"code ::= [^`]{{40,{int(max_code_chars)}}}\n"
    )


def evolver_options(
    args: argparse.Namespace, *, mode: str, backend_kind: str, slots: int = 4
) -> dict[str, Any]:
    """Evolver keyword arguments for one mode of ``flashevolve run --workflow meta-harness``."""
    timeout = getattr(args, "harness_timeout", None)
    processes = getattr(args, "harness_processes", None)
    context = getattr(args, "proposer_context", None)
    if timeout is not None and timeout <= 0:
        raise ConfigError("--harness-timeout must be positive")
    if processes is not None and processes < 1:
        raise ConfigError("--harness-processes must be at least 1")
    if context is not None and context < 500:
        raise ConfigError("--proposer-context must be at least 500 tokens")
    options: dict[str, Any] = {"workflow": "meta-harness"}
    if getattr(args, "i_accept_unsandboxed_code", False):
        print(UNSANDBOXED_WARNING, file=sys.stderr)
        options["allow_unsandboxed"] = True
    if timeout is not None:
        options["predict_timeout_s"] = timeout
    if processes is not None:
        options["processes"] = processes
    local = backend_kind == "local"
    if local:
        options["proposer_extra_body"] = {"grammar": proposal_grammar()}
        options["proposer_max_tokens"] = LOCAL_PROPOSER_MAX_TOKENS
    options["context_tokens"] = context or (LOCAL_CONTEXT_TOKENS if local else 12_000)
    if mode == "async":
        options["workers"] = {"propose": 2, "validate": 1, "evaluate": 2}
        options["max_in_flight"] = max(4, slots)
    options["eval_concurrency"] = max(1, slots)
    return options
