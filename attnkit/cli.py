"""The ``attnkit`` command line: a thin dispatcher; each subcommand lives in ``attnkit/commands/``.

A command module defines ``register(subparsers)`` that adds its parser and sets
``func(args) -> int`` as the default. Command modules import only argparse-level things at the
top, so ``attnkit --help`` loads none of the optional packages; a command imports what it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from attnkit.errors import AttnkitError

# subcommand modules, in the order `attnkit --help` lists them
COMMANDS = ["explain", "capture", "find_heads", "stats", "serve", "params", "train_toy",
            "train_induction"]

# file-system errors a command can expect from the user's paths: a message, not a traceback
EXPECTED_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                      NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnkit",
        description="Transformer attention: see which keys answer which queries.",
    )
    from attnkit import __version__

    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"attnkit.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # a bar for every model load is noise in a command that loads in a second
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `attnkit params | head`: the reader left; nothing more to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (keeps interpreter exit quiet)
        return 0
    except (AttnkitError, *EXPECTED_OS_ERRORS) as err:
        print(f"attnkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
