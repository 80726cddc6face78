"""``attnkit train-toy``: train the toy adjective model from scratch (about a minute on a CPU) and
report how much of each noun's attention lands on its adjectives in held-out sentences.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from attnkit.commands.common import add_training_options


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-toy",
        help="train the toy adjective model (seeded, about a minute)",
        description="Train the toy model of the notes' example (one attnkit attention layer) on "
                    "its grammar, save the weights, and measure the noun → adjective attention "
                    "on held-out sentences. The defaults reproduce the shipped weights.",
    )
    add_training_options(p, "toy_adjectives.safetensors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnkit.errors import AttnkitError
    from attnkit.experiments.adjectives import TrainConfig, measure, train_toy
    from attnkit.models.toy import toy_paths
    from attnkit.runtime import check_writable

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise AttnkitError(f"--out must name a .safetensors file (the config is written beside "
                           f"it); got {args.out!r}, e.g. --out {out.with_suffix('.safetensors')}")
    # before a minute of training: the files must be writable, and new unless --force
    check_writable(toy_paths(out), overwrite=args.force, allow="add --force")
    chosen = TrainConfig().seed if args.seed is None else args.seed
    start = time.perf_counter()
    model, tokenizer = train_toy(out=out, seed=chosen, steps=args.steps, progress=not args.quiet,
                                 overwrite=args.force)
    seconds = time.perf_counter() - start
    print(f"trained in {seconds:.0f} s (seed {chosen}); weights: {out}, config: "
          f"{out.with_suffix('.json')}")
    print(measure(model, tokenizer))
    print(f"load it with attnkit.experiments.adjectives.load_toy({str(out)!r})")
    return 0
