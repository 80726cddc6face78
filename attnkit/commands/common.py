"""What every command shares: argparse types whose messages say what a value must be."""

from __future__ import annotations

import argparse

from attnkit.errors import AttnkitError
from attnkit.runtime import check_positive_int

__all__ = ["positive_int", "seed", "port", "int_list"]

MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit seed


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0."""
    try:
        return check_positive_int("the value", int(text))
    except (ValueError, AttnkitError):
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None


def seed(text: str) -> int:
    """argparse type: a random seed, a whole number in 0 .. 2**63 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must lie in 0 .. 2**63 - 1; got {text}")
    return value


def port(text: str) -> int:
    """argparse type: a TCP port, 1 .. 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number; got {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port number; use 1..65535, e.g. "
                                         "8765")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: whole numbers >= 0 separated by commas, ranges allowed: "0,2,4-6"."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be numbers like 0,2,4-6; got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"must be numbers >= 0 like 0,2,4-6; got {text!r}")
    return sorted(set(out))


def add_training_options(p: argparse.ArgumentParser, out: str) -> None:
    """The options every training command takes: ``--out`` (default ``out``), ``--force``,
    ``--seed``, ``--steps`` (defaults: the shipped model's) and ``--quiet``."""
    p.add_argument("--out", default=out,
                   help="where to write the weights (.safetensors; the config goes beside it as "
                        f".json); default ./{out}")
    p.add_argument("--force", action="store_true",
                   help="replace the weights (and the .json beside them) if they exist")
    p.add_argument("--seed", type=seed, default=None,
                   help="random seed, 0 .. 2**63-1 (default: the shipped one)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="optimizer steps (default: the shipped model's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
