"""``attnkit capture TEXT --out run.safetensors``: run a model once, keep its attention in a file.

Capture where the model runs (say, a long document on the machine with the GPU), then explore the
file anywhere: ``attnkit serve --open run.safetensors`` or ``attnkit explain --capture
run.safetensors``, with no model loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

LONG = 256  # inputs of at least this many tokens show their progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "capture", help="run a model on a text and save its attention to a capture file",
        description="Run a model on TEXT (or the text of --file) once and write what every "
                    "attention layer computed — queries, keys (after rotary embeddings), "
                    "log-sum-exp, masks, tokens — to one .safetensors file, linear in the text's "
                    "length. Explore it anywhere without the model: attnkit serve --open FILE, "
                    "attnkit explain --capture FILE.")
    parser.add_argument("text", nargs="?", help="the text (or give --file)")
    parser.add_argument("--file", metavar="F", help="read the text from this UTF-8 file")
    parser.add_argument("--model", default="minilm",
                        help="minilm (bundled, default), toy, a Hugging Face id or a local path")
    parser.add_argument("--layers", type=int, nargs="+", metavar="L",
                        help="keep only these layers (default: all)")
    parser.add_argument("--heads", type=int, nargs="+", metavar="H",
                        help="keep only these heads of each layer (default: all)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the capture file to write, e.g. run.safetensors")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.add_argument("--device", default=None,
                        help="run the model there, e.g. cuda (default: where it loads, the CPU)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="run the model in this precision (default: as it loads)")
    parser.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    parser.set_defaults(func=run)


def _read_text(args: argparse.Namespace) -> str:
    from pathlib import Path

    from attnkit.errors import AttnkitError

    if (args.text is None) == (args.file is None):
        raise AttnkitError("give the text, or --file F to read it from a file (not both)")
    if args.file is None:
        return args.text
    path = Path(args.file)
    if path.is_dir():
        raise AttnkitError(f"--file {path} is a directory; give a text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise AttnkitError(f"--file {path} is not UTF-8 text (byte {err.start}); save it as "
                           "UTF-8") from None


@contextlib.contextmanager
def _quiet_loading(quiet: bool) -> Iterator[None]:
    """Inside, transformers draws no loading bar when ``quiet`` (restored on the way out)."""
    hf_logging = None
    if quiet:
        with contextlib.suppress(ImportError):
            from transformers.utils import logging as hf_logging
    was = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    if was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _check_selection(flag: str, values: list[int] | None, size: int, what: str) -> None:
    from attnkit.errors import AttnkitError

    bad = [v for v in values or [] if not 0 <= v < size]
    if bad:
        raise AttnkitError(f"{flag} {' '.join(map(str, bad))}: the model has {size} {what} "
                           f"(0..{size - 1})")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from attnkit.inspect.capture import capture
    from attnkit.inspect.families import describe, family_of
    from attnkit.inspect.running import check_text, encode
    from attnkit.models import load_model
    from attnkit.runtime import check_writable

    # before loading anything: the destination is writable and new unless --force
    (out,) = check_writable([args.out], overwrite=args.force, allow="add --force")
    text = check_text(_read_text(args))

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr)

    say(f"loading {args.model}…")
    with _quiet_loading(args.quiet):
        model, tokenizer = load_model(args.model)
    if args.device is not None or args.dtype is not None:
        dtype = None if args.dtype is None else getattr(torch, args.dtype)
        model = model.to(device=args.device, dtype=dtype)
    info = describe(model)
    _check_selection("--layers", args.layers, info.n_layers, "attention layers")
    _check_selection("--heads", args.heads, info.n_heads, "heads per layer")
    inputs, tokens = encode(model, tokenizer, text)
    n = len(tokens)
    show = not args.quiet and n >= LONG
    table = family_of(model).attention_layers(model)
    wanted = [m for m in model.modules() if id(m) in table
              and (args.layers is None or table[id(m)] in args.layers)]
    if show:
        say(f"running {args.model} on {n:,} tokens ({next(model.parameters()).device})")
    with tqdm(total=len(wanted), desc="attention layers", unit="layer", file=sys.stderr,
              disable=not show, leave=True) as bar:
        def done(*_: object) -> None:  # a forward hook that returns None keeps the output
            bar.update(1)

        hooks = [m.register_forward_hook(done) for m in wanted]
        try:
            with torch.no_grad(), capture(model, layers=args.layers, heads=args.heads,
                                          tokenizer=tokenizer) as cap:
                model(**inputs)
        finally:
            for hook in hooks:
                hook.remove()
    if show:
        say(f"writing {out}…")
    cap.save(out, model_name=args.model, overwrite=args.force)
    size = out.stat().st_size
    print(f"wrote {out}: {args.model}, {len(cap.layers)} layers x {len(cap.heads)} heads, "
          f"{cap.seq_len():,} tokens, {size / 1e6:.1f} MB")
    print(f"explore it: attnkit serve --open {out}   or   attnkit explain --capture {out}")
    return 0
