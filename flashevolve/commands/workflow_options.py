"""``flashevolve run``'s options per workflow: which flags exist and what each mode passes on.

Each workflow owns its options; this module only says, for the command line, which flags belong
to which workflow and turns them into ``Evolver`` keyword arguments for one mode.  A flag given
for a workflow that does not read it is a one-line error rather than silently ignored.
"""

from __future__ import annotations

import argparse
from typing import Any

from flashevolve.commands.common import given_options
from flashevolve.errors import ConfigError
from flashevolve.workflows.base import available_workflows
from flashevolve.workflows.meta_harness import cli as mh_cli

#: attribute -> (flag, the workflows that read it)
_OWNED_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "minibatch_size": ("--minibatch-size", ("gepa",)),
    "skip_perfect": ("--skip-perfect", ("gepa",)),
    "combee": ("--combee", ("gepa",)),
    "merge": ("--merge", ("gepa",)),
    "max_merge_invocations": ("--max-merge-invocations", ("gepa",)),
    "curator_batch": ("--curator-batch", ("ace",)),
    "eval_steps": ("--eval-steps", ("ace",)),
    "json_mode": ("--json-mode", ("ace",)),
    "harness_timeout": ("--harness-timeout", ("meta-harness",)),
    "harness_processes": ("--harness-processes", ("meta-harness",)),
    "proposer_context": ("--proposer-context", ("meta-harness",)),
}


def add_workflow_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workflow",
        default="gepa",
        choices=available_workflows(),
        help="what evolves: gepa (a prompt), ace (a context playbook of bullets, by delta "
        "operations) or meta-harness (harness code, run in the sandbox)",
    )
    gepa = p.add_argument_group("gepa (--workflow gepa, the default)")
    gepa.add_argument(
        "--minibatch-size", type=int, default=None, help="train examples per proposal (default 3)"
    )
    gepa.add_argument(
        "--skip-perfect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip reflection when the parent is perfect on the minibatch (default on)",
    )
    gepa.add_argument(
        "--combee",
        type=int,
        default=None,
        metavar="K",
        help="Combee reflection: a minibatch of K examples reflected on in parallel shards, "
        "then reduced into one proposal (sets the minibatch size to K)",
    )
    gepa.add_argument(
        "--merge",
        action="store_true",
        default=None,
        help="also propose merges of two pool members (gepa's merge)",
    )
    gepa.add_argument(
        "--max-merge-invocations",
        type=int,
        default=None,
        help="with --merge: at most this many merges per run (default 5)",
    )
    ace = p.add_argument_group("ace (--workflow ace)")
    ace.add_argument(
        "--curator-batch", type=int, default=None, help="reflections per curator call (default 8)"
    )
    ace.add_argument(
        "--eval-steps",
        type=int,
        default=None,
        help="accepted updates between validation sweeps (default 1)",
    )
    ace.add_argument(
        "--json-mode",
        choices=("object", "schema", "off"),
        default=None,
        help="constrain the roles' JSON answers: object, schema (each role's JSON schema; the "
        "default for --backend local, whose small model rarely writes valid JSON) or off",
    )
    mh_cli.add_arguments(p)


def check_workflow_arguments(args: argparse.Namespace) -> None:
    """Flags of another workflow are a mistake worth a line, not something to ignore."""
    for attr, (flag, owners) in _OWNED_FLAGS.items():
        if getattr(args, attr, None) not in (None, False) and args.workflow not in owners:
            raise ConfigError(
                f"{flag} is a {'/'.join(owners)} option; it does nothing with "
                f"--workflow {args.workflow} (drop it, or add --workflow {owners[0]})"
            )
    for attr in ("combee", "curator_batch", "eval_steps", "max_merge_invocations"):
        value = getattr(args, attr, None)
        if value is not None and value < (0 if attr == "max_merge_invocations" else 1):
            raise ConfigError(f"{_OWNED_FLAGS[attr][0]} must be at least 1, got {value}")
    if args.max_merge_invocations is not None and not args.merge:
        raise ConfigError("--max-merge-invocations needs --merge")
    if args.combee is not None and args.minibatch_size not in (None, args.combee):
        raise ConfigError(
            f"--combee {args.combee} sets the minibatch to {args.combee} examples; drop "
            f"--minibatch-size {args.minibatch_size}"
        )


def apply_backend_defaults(args: argparse.Namespace) -> None:
    """Server settings a workflow needs from the embedded server, unless the user gave them."""
    local = args.backend.partition(":")[0] == "local"
    if args.workflow == "meta-harness" and local and args.ctx_per_slot is None:
        args.ctx_per_slot = mh_cli.local_ctx_per_slot(args)


def workflow_kwargs(args: argparse.Namespace, mode: str, backend_kind: str) -> dict[str, Any]:
    """``Evolver`` keyword arguments of the chosen workflow for one mode."""
    if args.workflow == "meta-harness":
        options = mh_cli.evolver_options(
            args, mode=mode, backend_kind=backend_kind, slots=args.slots
        )
        # the command line's own --workers/--max-in-flight win over the workflow's suggestion
        for key in ("workers", "max_in_flight"):
            if getattr(args, key, None):
                options.pop(key, None)
        return options
    if args.workflow == "ace":
        return {"workflow": "ace", **_ace_kwargs(args, backend_kind)}
    return {"workflow": "gepa", **_gepa_kwargs(args, backend_kind)}


def _gepa_kwargs(args: argparse.Namespace, backend_kind: str) -> dict[str, Any]:
    kwargs = given_options(
        args,
        {
            "minibatch_size": "minibatch_size",
            "skip_perfect": "skip_perfect",
            "reflection_max_tokens": "reflection_max_tokens",
            "combee": "combee",
            "max_merge_invocations": "max_merge_invocations",
        },
    )
    if args.merge:
        kwargs["use_merge"] = True
    grammar = args.reflection_grammar
    if grammar == "on" or (grammar == "auto" and backend_kind == "local"):
        from flashevolve.workflows.gepa.reflection import fenced_block_grammar

        kwargs["reflection_extra_body"] = {"grammar": fenced_block_grammar()}
    return kwargs


def _ace_kwargs(args: argparse.Namespace, backend_kind: str) -> dict[str, Any]:
    kwargs = given_options(
        args,
        {
            "curator_batch": "curator_batch",
            "eval_steps": "eval_steps",
            "reflection_max_tokens": "reflection_max_tokens",
        },
    )
    json_mode = args.json_mode or ("schema" if backend_kind == "local" else "off")
    if json_mode != "off":
        kwargs["json_mode"] = json_mode
    if args.task_max_tokens is not None:
        kwargs["generator_max_tokens"] = args.task_max_tokens
    return kwargs
