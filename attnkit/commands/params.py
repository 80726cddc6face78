"""``attnkit params``: count attention parameters per matrix, head, layer and in all.

``attnkit params --preset gpt3`` prints the lesson's GPT-3 figures; ``--d-model/--d-key/--heads/
--kv-heads/--layers`` give custom sizes or override a preset's; ``--json`` prints machine output.
"""

from __future__ import annotations

import argparse
import json

from attnkit.commands.common import positive_int
from attnkit.core.params import PRESETS, count_attention_params, count_preset
from attnkit.errors import AttnkitError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "params",
        help="count attention parameters (per matrix, head, layer, total)",
        description="Count the parameters of attention, per matrix (W_Q, W_K, value↓, value↑), "
                    "per head, per layer and in all, as the lesson does for GPT-3. Without "
                    "sizes, shows the gpt3 preset.",
    )
    p.add_argument("--preset", choices=list(PRESETS),
                   help="a known model's sizes (custom sizes given too override it)")
    p.add_argument("--d-model", type=positive_int, help="embedding size")
    p.add_argument("--d-key", type=positive_int,
                   help="per-head query/key size (default d_model / heads)")
    p.add_argument("--d-value", type=positive_int, help="per-head value↓ size (default d_key)")
    p.add_argument("--heads", type=positive_int, help="query heads per layer")
    p.add_argument("--kv-heads", type=positive_int,
                   help="key/value heads per layer (grouped-query)")
    p.add_argument("--layers", type=positive_int, help="number of layers")
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="count bias vectors b_Q, b_K, b_V, b_O")
    p.add_argument("--model-params", type=positive_int,
                   help="the whole model's parameter count, to show attention's share")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sizes = {"d_model": args.d_model, "d_key": args.d_key, "n_heads": args.heads,
             "n_kv_heads": args.kv_heads, "n_layers": args.layers, "bias": args.bias}
    custom = any(v is not None for v in sizes.values()) or args.d_value is not None
    if args.preset is None and not custom:
        args.preset = "gpt3"
    if args.preset is not None:
        if args.d_value is not None:
            sizes["d_value"] = args.d_value
        counted = count_preset(args.preset, **sizes)
        if args.model_params is not None:
            counted = _with_model_params(counted, args.model_params)
    else:
        missing = [flag for flag, v in (("--d-model", args.d_model), ("--heads", args.heads),
                                        ("--layers", args.layers)) if v is None]
        if missing:
            raise AttnkitError(f"custom sizes need {', '.join(missing)} (or use --preset "
                               f"{'|'.join(PRESETS)}); e.g. attnkit params --d-model 768 "
                               "--heads 12 --layers 12")
        if args.d_key is None and args.d_model % args.heads:
            raise AttnkitError(f"--d-model {args.d_model} is not divisible by --heads "
                               f"{args.heads}; give the per-head size with --d-key")
        counted = count_attention_params(
            args.d_model, d_key=args.d_key, n_heads=args.heads, n_layers=args.layers,
            n_kv_heads=args.kv_heads, d_value=args.d_value, bias=bool(args.bias),
            model_params=args.model_params)
    print(json.dumps(counted.to_dict(), indent=2) if args.json else counted.table())
    return 0


def _with_model_params(counted, model_params: int):
    return count_attention_params(
        counted.d_model, d_key=counted.d_key, n_heads=counted.n_heads, n_layers=counted.n_layers,
        n_kv_heads=counted.n_kv_heads, d_value=counted.d_value, bias=counted.bias,
        model_params=model_params, title=counted.title)
