"""``attnkit train-induction``: train the two-layer attention-only model on repeating random
tokens (a few minutes on a CPU) and report its accuracy on the repeats and what its heads do.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from attnkit.commands.common import add_training_options


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-induction",
        help="train the induction model, ground truth for head detectors (seeded, a few minutes)",
        description="Train a two-layer attention-only transformer (one attnkit head per layer) "
                    "on random token sequences that repeat, save the weights, and check on "
                    "held-out sequences that layer 0 became a previous-token head and layer 1 an "
                    "induction head. The defaults reproduce the shipped weights.",
    )
    add_training_options(p, "induction.safetensors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnkit.errors import AttnkitError
    from attnkit.experiments.induction import (
        TrainConfig,
        head_scores,
        repeat_accuracy,
        train_induction,
    )
    from attnkit.models.induction import induction_paths
    from attnkit.runtime import check_writable

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise AttnkitError(f"--out must name a .safetensors file (the config is written beside "
                           f"it); got {args.out!r}, e.g. --out {out.with_suffix('.safetensors')}")
    # before minutes of training: the files must be writable, and new unless --force
    check_writable(induction_paths(out), overwrite=args.force, allow="add --force")
    chosen = TrainConfig().seed if args.seed is None else args.seed
    start = time.perf_counter()
    model, _ = train_induction(out=out, seed=chosen, steps=args.steps, progress=not args.quiet,
                               overwrite=args.force)
    seconds = time.perf_counter() - start
    print(f"trained in {seconds:.0f} s (seed {chosen}); weights: {out}, config: "
          f"{out.with_suffix('.json')}")
    print(repeat_accuracy(model))
    for line in head_scores(model):
        print(line)
    print(f"load it with attnkit.models.induction.load_induction({str(out)!r})")
    return 0
