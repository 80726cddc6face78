"""``attnkit find-heads``: rank every head of a model by a relation between words.

``attnkit find-heads --relation adjectives --model minilm`` scores each head by how much of each
noun's attention lands on its own adjectives, over the shipped labelled sentences, and prints the
top heads with the baselines.
"""

from __future__ import annotations

import argparse
import json

from attnkit.commands.common import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "find-heads",
        help="rank heads by a relation (e.g. nouns attending to their adjectives)",
        description="Rank every head of a model by a relation between tokens, scored exactly "
                    "from the captured queries, keys and log-sum-exp. 'adjectives': the share "
                    "of each noun's attention on its own adjectives over labelled sentences, "
                    "against what heads nobody trained would score.",
    )
    p.add_argument("--relation", default="adjectives",
                   help="the relation to rank by (known: adjectives)")
    p.add_argument("--model", default="minilm",
                   help="'minilm' (bundled), 'toy', a Hugging Face id or a model directory")
    p.add_argument("--top", type=positive_int, default=10, help="how many heads to print")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnkit.detectors import find_heads

    result = find_heads(model=args.model, relation=args.relation, progress=True)
    if args.json:
        print(json.dumps(result.to_dict(args.top), indent=1))
    else:
        print(result.table(args.top))
    return 0
