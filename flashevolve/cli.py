"""The ``flashevolve`` command line: one sub-module per command in ``flashevolve.commands``.

Each command module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
User mistakes raise :class:`flashevolve.errors.UserError`; they print one clear line and exit 2,
never a traceback wall.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from flashevolve.errors import UserError

#: Command modules, in the order ``--help`` lists them.
COMMANDS = ("run", "bench", "serve_sim", "local_server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashevolve",
        description="Fast asynchronous LLM-based evolution of text artifacts (GEPA and friends).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        try:
            module = importlib.import_module(f"flashevolve.commands.{module_name}")
        except ModuleNotFoundError as err:
            if err.name == f"flashevolve.commands.{module_name}":
                continue  # command not built yet
            raise
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        print(f"flashevolve {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flashevolve {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
