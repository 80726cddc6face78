"""``attnkit explain TEXT``: see one sentence's attention as the notes draw it.

A thin layer over ``attnkit.explain`` (and ``explain_capture`` for ``--capture FILE``): prints
the grid and writes the pictures and the page.
"""

from __future__ import annotations

import argparse
import sys

from attnkit.viz.layout import ORIENTATIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="see a sentence's attention: terminal grid, pictures, an offline page",
        description="Run a model on TEXT and show which keys answer which queries for one head: "
                    "a shaded grid in the terminal (keys down, queries across, as the notes draw "
                    "it), and with --out: grid.png/.svg, heads.png (every layer x head) and a "
                    "self-contained page.html.")
    parser.add_argument("text", nargs="?", help='the sentence, e.g. "a fluffy blue creature '
                                                'roamed the verdant forest" (or --capture)')
    parser.add_argument("--model", default=None,
                        help="minilm (bundled, default), toy, a Hugging Face id or a local path")
    parser.add_argument("--capture", metavar="FILE",
                        help="draw a capture file (from attnkit capture) instead of running a "
                             "model on TEXT")
    parser.add_argument("--layer", type=int, help="layer to show (with --head)")
    parser.add_argument("--head", type=int, help="head to show (with --layer)")
    parser.add_argument("--find", choices=["adjectives"],
                        help="choose the head where nouns look most at their adjectives "
                             "(the default when the text has an adjective before a noun)")
    parser.add_argument("--out", metavar="DIR",
                        help="write grid.png, grid.svg, heads.png and page.html into DIR")
    parser.add_argument("--force", action="store_true",
                        help="replace grid.png, grid.svg, heads.png and page.html if DIR has them")
    parser.add_argument("--orientation", choices=ORIENTATIONS, default="notes",
                        help="notes: keys as rows, queries as columns (default); query-key: the "
                             "transpose, the [query, key] tensor layout")
    parser.add_argument("--no-special", action="store_true",
                        help="leave out [CLS]/[SEP]-style special tokens and renormalize each "
                             "query's weights over the words shown")
    parser.add_argument("--words", action="store_true",
                        help="merge word pieces into words: a query word's row is the mean of "
                             "its pieces' rows, a key word's weight the sum of its pieces'")
    parser.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                        help="shade the terminal grid with colours (default: when a terminal)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnkit.errors import AttnkitError
    from attnkit.explainer import check_out_dir, explain, explain_capture

    if args.find and args.layer is not None:
        raise AttnkitError("give either --find or --layer/--head, not both")
    if (args.layer is None) != (args.head is None):
        raise AttnkitError("give both --layer and --head, or neither to let attnkit choose")
    if args.capture is not None:
        if args.text is not None or args.model is not None or args.find:
            raise AttnkitError("--capture draws a capture file as it was recorded: give no "
                               "TEXT, --model or --find with it")
    elif args.text is None:
        raise AttnkitError('give the text to explain, e.g. attnkit explain "a fluffy blue '
                           'creature", or --capture FILE')
    if args.out:
        check_out_dir(args.out, overwrite=args.force, allow="add --force")
    if args.capture is not None:
        exp = explain_capture(args.capture, args.layer, args.head,
                              special_tokens=not args.no_special, words=args.words)
    else:
        exp = explain(args.text, args.model or "minilm", args.layer, args.head, find=args.find,
                      special_tokens=not args.no_special, words=args.words)
    color = sys.stdout.isatty() if args.color is None else args.color
    print(exp.terminal(orientation=args.orientation, color=color))
    if args.out:
        written = exp.save(args.out, orientation=args.orientation, overwrite=args.force)
        print()
        for name, path in written.items():
            print(f"wrote {path}" + ("   (open it in a browser)" if name == "page.html" else ""))
    return 0
