"""``attnkit stats``: every head's attention statistics over a file of texts — entropy, weight on
the first token, largest weight, distance profile — resumable, and shared across processes under
``torchrun``.
"""

from __future__ import annotations

import argparse
import os

from attnkit.commands.common import int_list, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stats",
        help="attention statistics of every head over a file of texts",
        description="Run a model over every text of a file and measure every head exactly from "
                    "the captured queries, keys and log-sum-exp (no N x N pattern): entropy, "
                    "weight on the first token, largest weight and the share of attention by "
                    "query-key distance, averaged over every token. Writes stats.json, heads.csv "
                    "and pictures into --out. Each text's result is appended as it is done, so "
                    "rerunning the same command after an interruption skips those texts. Under "
                    "`torchrun --nproc-per-node W attnkit stats ...` each process takes a share "
                    "of the texts and the statistics are summed across processes.",
    )
    p.add_argument("--model", default="minilm",
                   help="'minilm' (bundled), 'toy', 'induction', a Hugging Face id or a model "
                        "directory")
    p.add_argument("--texts", required=True, metavar="FILE",
                   help='one text a line, or .jsonl with a "text" field on each line')
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    p.add_argument("--max-tokens", type=positive_int, metavar="N",
                   help="cut each text to its first N tokens (default: the model's limit)")
    p.add_argument("--layers", type=int_list, metavar="LIST",
                   help="measure only these layers, e.g. 0,2,4-5 (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="texts run together (default 8)")
    p.add_argument("--force", action="store_true",
                   help="start over in a folder that holds results of another run")
    p.add_argument("--top", type=positive_int, default=10,
                   help="how many heads to print (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnkit.corpus import corpus_stats

    with _process_group():
        result = corpus_stats(args.model, args.texts, out=args.out, max_tokens=args.max_tokens,
                              layers=args.layers, batch_size=args.batch_size,
                              overwrite=args.force, allow="add --force",
                              progress=not args.quiet)
        if not result.files:  # a rank other than 0 under torchrun: rank 0 reports
            return 0
    print(result.table(args.top))
    print()
    for path in result.files:
        print(f"wrote {path}")
    return 0


class _process_group:
    """Under torchrun (WORLD_SIZE > 1): a gloo process group for the run, taken down after."""

    def __enter__(self) -> None:
        self.started = False
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import datetime

            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=30))
                self.started = True

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()
