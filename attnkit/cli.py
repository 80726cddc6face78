"""The ``attnkit`` command line: a thin dispatcher; each subcommand lives in ``attnkit/commands/``.

A command module defines ``register(subparsers)`` that adds its parser and sets
``func(args) -> int`` as the default. Modules are imported only to build the parser.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand modules, in the order `attnkit --help` lists them
COMMANDS = ["explain", "find_heads", "serve", "params", "train_toy"]


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0, with a message that says so."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


class UserError(Exception):
    """A problem with the user's input; the CLI prints the message and exits with code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnkit",
        description="Transformer attention: see which keys answer which queries.",
    )
    from attnkit import __version__

    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"attnkit.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"attnkit.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `attnkit params | head`: the reader left; nothing more to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (keeps interpreter exit quiet)
        return 0
    except (UserError, ValueError, TypeError, FileNotFoundError, PermissionError) as err:
        print(f"attnkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
