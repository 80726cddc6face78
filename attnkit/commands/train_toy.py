"""``attnkit train-toy``: train the toy adjective model from scratch (about a minute on a CPU) and
report how much of each noun's attention lands on its adjectives in held-out sentences.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from attnkit.cli import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-toy",
        help="train the toy adjective model (seeded, about a minute)",
        description="Train the toy model of the notes' example (one attnkit attention layer) on "
                    "its grammar, save the weights, and measure the noun → adjective attention "
                    "on held-out sentences. The defaults reproduce the shipped weights.",
    )
    p.add_argument("--out", default="toy_adjectives.safetensors",
                   help="where to write the weights (.safetensors; the config goes beside it as "
                        ".json); default ./toy_adjectives.safetensors")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the shipped one)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="optimizer steps (default: the shipped model's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnkit.experiments.adjectives import TrainConfig, measure, train_toy

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must name a .safetensors file (the config is written beside it); "
                         f"got {args.out!r}, e.g. --out {out.with_suffix('.safetensors')}")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"--out {args.out!r}: {out.parent} is not a directory")
    seed = TrainConfig().seed if args.seed is None else args.seed
    start = time.perf_counter()
    model, tokenizer = train_toy(out=out, seed=seed, steps=args.steps, progress=not args.quiet)
    seconds = time.perf_counter() - start
    print(f"trained in {seconds:.0f} s (seed {seed}); weights: {out}, config: "
          f"{out.with_suffix('.json')}")
    print(measure(model, tokenizer))
    print(f"load it with attnkit.experiments.adjectives.load_toy({str(out)!r})")
    return 0
