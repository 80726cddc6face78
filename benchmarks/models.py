"""Real models on attnkit, side by side: MiniLM at batch 16 x 128 tokens on "attnkit" (with and
without capture of every layer) vs "sdpa" vs "eager" (with and without output_attentions),
interleaved, median of N after warm-up; then a 16,384-token Llama-style forward with capture,
peak memory measured in a fresh process next to eager's estimate.

    python benchmarks/models.py [--rounds 21] [--long-len 16384] [--no-long] [--out models.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import describe as describe_machine


def minilm_inputs(tokenizer, batch: int, length: int) -> dict[str, torch.Tensor]:
    """``batch`` random sequences of exactly ``length`` tokens: [CLS] words... [SEP]."""
    g = torch.Generator().manual_seed(0)
    special = set(tokenizer.all_special_ids)
    words = torch.tensor([i for i in range(1000, tokenizer.vocab_size) if i not in special])
    ids = words[torch.randint(len(words), (batch, length), generator=g)]
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids)}


def bench_minilm(rounds: int, batch: int, length: int) -> dict:
    import attnkit
    from attnkit.models import load_model

    model, tokenizer = load_model("minilm")
    inputs = minilm_inputs(tokenizer, batch, length)

    def run(implementation: str, output_attentions: bool = False, capture: bool = False):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            if capture:
                with attnkit.capture(model) as cap:
                    out = model(**inputs)
                return out.last_hidden_state, cap
            out = model(**inputs, output_attentions=output_attentions)
            return out.last_hidden_state, out.attentions

    configs = {
        "sdpa": lambda: run("sdpa"),
        "eager": lambda: run("eager"),
        "eager + output_attentions": lambda: run("eager", output_attentions=True),
        "attnkit": lambda: run("attnkit"),
        "attnkit + capture (all layers)": lambda: run("attnkit", capture=True),
    }
    for fn in configs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in configs}
    faults: dict[str, list[int]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            f0, t0 = minor_faults(), time.perf_counter()
            result = configs[name]()
            times[name].append(time.perf_counter() - t0)  # the call; freeing its results is not
            faults[name].append(minor_faults() - f0)
            del result
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    # each round's own ratio to "sdpa" (timed within seconds of it): the machine's slow drifts
    # cancel in these, so their spread says how far to trust the ratio of the medians
    paired = {name: sorted(s / t for s, t in zip(times["sdpa"], ts)) for name, ts in times.items()}
    quartiles = {name: statistics.quantiles(rs, n=4) for name, rs in paired.items()}

    sdpa_out, _ = run("sdpa")
    ours, _ = run("attnkit")
    captured, cap = run("attnkit", capture=True)
    _, eager_attn = run("eager", output_attentions=True)
    pattern_err = max((cap.pattern(layer, head) - eager_attn[layer][0, head]).abs().max().item()
                      for layer in range(6) for head in range(12))
    attnkit_time = medians["attnkit"]
    return {
        "model": "all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads), bundled",
        "batch": batch, "length": length, "rounds": rounds,
        "median_s": medians,
        "speed_vs_attnkit": {name: t / attnkit_time for name, t in medians.items()},
        "round_ratio_sdpa_over_quartiles": quartiles,
        "median_page_faults": {name: statistics.median(fs) for name, fs in faults.items()},
        "max_abs_diff_attnkit_vs_sdpa": (ours - sdpa_out).abs().max().item(),
        "max_abs_diff_captured_vs_sdpa": (captured - sdpa_out).abs().max().item(),
        "max_abs_diff_capture_pattern_vs_eager": pattern_err,
    }


def minor_faults() -> int:
    """Pages this process has touched for the first time so far (minor page faults): memory the
    allocator handed back to the system and asked for again costs ~1.5 us a page here."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


LONG = Path(__file__).with_name("long_capture.py")
"""The 16k-token script, run in a fresh process (so its peak memory is its own)."""


def bench_long(length: int) -> dict:
    done = subprocess.run([sys.executable, str(LONG), str(length)], capture_output=True,
                          text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    heads, layers = 8, 2
    eager_per_layer_gib = heads * length * length * 4 / 2**30  # the float32 weights alone
    return {
        "model": f"random Llama-style, {layers} layers, {heads} query heads / 2 kv heads, "
                 "hidden 64",
        "length": length,
        "forward_with_capture_s": result["seconds"],
        "peak_growth_mib": result["peak_mib"] - result["rss_before_mib"],
        "captured_q_k_lse_mib": result["captured_mib"],
        "last_row_pattern_s": result["last_row_seconds"],
        "max_error_vs_float64": max(e["ours"] for e in result["errors"]),
        "eager_weights_per_layer_gib_estimate": eager_per_layer_gib,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--long-len", type=int, default=16_384)
    parser.add_argument("--no-long", action="store_true", help="skip the long-context run")
    parser.add_argument("--no-minilm", action="store_true", help="skip the MiniLM run")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    results = {"machine": describe_machine(), "load_average": os.getloadavg()[0]}
    print(f"# machine: {results['machine']}; load average {results['load_average']:.1f}")
    if not args.no_minilm:
        results["minilm"] = m = bench_minilm(args.rounds, args.batch, args.length)
        print(f"MiniLM, batch {m['batch']} x {m['length']} tokens, median of {m['rounds']} "
              "(interleaved, after warm-up)")
        print(f"{'implementation':34s} {'median ms':>10s} {'time / attnkit':>15s} "
              f"{'page faults':>12s}")
        for name, t in m["median_s"].items():
            print(f"{name:34s} {t * 1e3:10.1f} {m['speed_vs_attnkit'][name]:15.2f} "
                  f"{m['median_page_faults'][name]:12.0f}")
        capture = m["median_s"]["sdpa"] / m["median_s"]["attnkit + capture (all layers)"]
        print(f"attnkit speed vs sdpa: {m['speed_vs_attnkit']['sdpa']:.2f}x, with capture of "
              f"every layer {capture:.2f}x (sdpa time / attnkit time); max |attnkit - sdpa| = "
              f"{m['max_abs_diff_attnkit_vs_sdpa']:.1e}, captured pattern vs eager = "
              f"{m['max_abs_diff_capture_pattern_vs_eager']:.1e}")
        for name in ("attnkit", "attnkit + capture (all layers)"):
            low, mid, high = m["round_ratio_sdpa_over_quartiles"][name]
            print(f"round by round, sdpa time / {name} time: median {mid:.2f}x, "
                  f"quartiles {low:.2f}-{high:.2f}")
    if not args.no_long:
        results["long"] = bench_long(args.long_len)
        lg = results["long"]
        print(f"\nLong context: {lg['model']}, {lg['length']} tokens, capture on every layer")
        print(f"forward + capture {lg['forward_with_capture_s']:.1f} s; peak memory growth "
              f"{lg['peak_growth_mib']:.0f} MiB (captured q, k, lse "
              f"{lg['captured_q_k_lse_mib']:.0f} MiB); last query's row in "
              f"{lg['last_row_pattern_s'] * 1e3:.1f} ms; eager would "
              f"need ~{lg['eager_weights_per_layer_gib_estimate']:.0f} GiB per layer for the "
              "weights alone")
    results["peak_rss_mib_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.out:
        import pathlib

        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
