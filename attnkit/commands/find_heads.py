"""``attnkit find-heads``: rank every head of a model by a relation between tokens.

``attnkit find-heads --relation adjectives --model minilm`` scores each head by how much of each
noun's attention lands on its own adjectives, over the shipped labelled sentences;
``--relation induction --model induction --length 128`` by how much each repeated token attends
to the token after its earlier copy, on generated sequences of 128 tokens. Each prints the top
heads with the baselines and the inputs used.
"""

from __future__ import annotations

import argparse
import json

from attnkit.commands.common import positive_int

RELATIONS = ("adjectives", "previous-token", "duplicate-token", "induction", "sink")
"""The relations attnkit registers (named here so `--help` imports none of them)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "find-heads",
        help="rank heads by a relation (adjectives, previous-token, induction, ...)",
        description="Rank every head of a model by a relation between tokens, scored exactly "
                    "from the captured queries, keys and log-sum-exp, against what heads nobody "
                    "trained would score (uniform over the keys each query may see, and "
                    "controls). 'adjectives': each noun's attention on its own adjectives over "
                    "labelled sentences; 'previous-token', 'sink': each token's attention on the "
                    "one before / the first token, over the shipped sentences (random tokens for "
                    "a model that cannot read English, or with --length); 'duplicate-token', "
                    "'induction': each repeated token's attention on its earlier copies / the "
                    "token after them, over random tokens repeated twice.",
    )
    p.add_argument("--relation", default="adjectives",
                   help=f"the relation to rank by: {', '.join(RELATIONS)} (default adjectives)")
    p.add_argument("--model", default="minilm",
                   help="'minilm' (bundled), 'toy', 'induction', a Hugging Face id or a model "
                        "directory")
    p.add_argument("--length", type=positive_int, metavar="N",
                   help="score on generated inputs of N tokens (all but 'adjectives')")
    p.add_argument("--top", type=positive_int, default=10, help="how many heads to print")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnkit.detectors import find_heads
    from attnkit.errors import AttnkitError

    if args.length is not None and args.relation == "adjectives":
        raise AttnkitError("--length makes generated inputs, but 'adjectives' is scored on "
                           "labelled sentences; drop --length, or choose a relation such as "
                           "--relation induction")
    result = find_heads(model=args.model, relation=args.relation, length=args.length,
                        progress=True)
    if args.json:
        print(json.dumps(result.to_dict(args.top), indent=1))
    else:
        print(result.table(args.top))
    return 0
