"""The CUDA checks and benchmarks in one call, for a machine with an NVIDIA GPU.

    python benchmarks/gpu_check.py --out bench-out/gpu.json     # everything (~6 minutes)
    python benchmarks/gpu_check.py --no-tests --sizes 8192      # a quick look

1. Exactness: ``pytest tests/kernels/test_cuda.py`` — every CUDA backend (flash, efficient, flex
   and the automatic choice) against the float64 oracle computed on the GPU, rows that see no
   key, SDPA-flash as a peer, pattern()/capture/a Hugging Face model on CUDA tensors, compile.
2. Kernels: bfloat16 causal attention, forward and forward+backward, at 8k/16k/32k tokens with
   head dim 64 and 128: attnkit's automatic choice (returning the lse) against SDPA restricted
   to its FlashAttention backend, side by side, interleaved, after a warm-up, median of
   ``--repeats``; TFLOP/s (4·B·H·N²·D, half for causal, ×3.5 with the backward).
3. A Llama-style model built from a config (random weights) at 16k tokens, bfloat16: a forward
   pass on "sdpa", on "attnkit", and on "attnkit" capturing q, k and the lse of every layer.

Without a CUDA GPU it says so and exits 0. Prints tables (Markdown) and, with ``--out``, JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model-len", type=int, default=16384)
    parser.add_argument("--no-tests", action="store_true", help="skip the exactness tests")
    parser.add_argument("--no-model", action="store_true", help="skip the model timing")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "nothing to check. Run it where an NVIDIA GPU is available.")
        return 0
    results: dict = {"machine": describe_gpu()}
    print(f"# {results['machine']}")
    status = 0
    if not args.no_tests:
        results["tests"] = run_tests()
        status = results["tests"]["returncode"]
    results["kernels"] = [bench_kernel(n, d, args.heads, backward, args.repeats)
                          for d in args.dims for n in args.sizes for backward in (False, True)]
    print(kernel_table(results["kernels"]))
    if not args.no_model:
        results["model"] = bench_model(args.model_len, args.repeats)
        print(model_table(results["model"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return status


def describe_gpu() -> str:
    props = torch.cuda.get_device_properties(0)
    return (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
            f"{props.major}.{props.minor}, torch {torch.__version__}, CUDA {torch.version.cuda}")


def run_tests() -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/kernels/test_cuda.py"]
    print("$ " + " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1:] or [done.stderr.strip()[-500:]]
    print(done.stdout[-3000:] if done.returncode else tail[0], flush=True)
    return {"command": " ".join(command[1:]), "returncode": done.returncode, "summary": tail[0]}


def cuda_time(fn) -> float:
    """Seconds of one call, by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def bench_kernel(n: int, d: int, heads: int, backward: bool, repeats: int) -> dict:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import attnkit
    from attnkit.kernels.api import _choose, validate

    g = torch.Generator(device="cuda").manual_seed(n + d)
    q, k, v = (torch.randn(1, heads, n, d, device="cuda", dtype=torch.bfloat16, generator=g)
               .requires_grad_(backward) for _ in range(3))
    grad_out = torch.randn_like(q)

    def ours():
        out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
        if backward:
            out.backward(grad_out)

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if backward:
            out.backward(grad_out)

    contenders = {"attnkit": ours, "sdpa_flash": sdpa}
    for fn in contenders.values():  # warm-up
        cuda_time(fn)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            for t in (q, k, v):
                t.grad = None
            times[name].append(cuda_time(fn))
    flops = 4 * heads * n * n * d * 0.5 * (3.5 if backward else 1)
    row = {"n": n, "d": d, "heads": heads, "pass": "fwd+bwd" if backward else "fwd",
           "backend": _choose(None, validate(q, k, v, causal=True)[0], True, q).name}
    for name, ts in times.items():
        row[f"{name}_ms"] = statistics.median(ts) * 1e3
        row[f"{name}_tflops"] = flops / statistics.median(ts) / 1e12
    row["sdpa_over_attnkit"] = row["sdpa_flash_ms"] / row["attnkit_ms"]
    print(f"N={n} D={d} {row['pass']}: attnkit ({row['backend']}) {row['attnkit_ms']:.2f} ms, "
          f"SDPA-flash {row['sdpa_flash_ms']:.2f} ms, ratio {row['sdpa_over_attnkit']:.3f}",
          flush=True)
    return row


def kernel_table(rows: list[dict]) -> str:
    lines = ["", "| N | D | pass | attnkit backend | attnkit ms (with lse) | SDPA-flash ms | "
             "SDPA / attnkit | attnkit TFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['d']} | {r['pass']} | {r['backend']} "
                     f"| {r['attnkit_ms']:.2f} | {r['sdpa_flash_ms']:.2f} "
                     f"| **{r['sdpa_over_attnkit']:.3f}** | {r['attnkit_tflops']:.0f} |")
    return "\n".join(lines)


def bench_model(length: int, repeats: int) -> dict:
    import transformers

    import attnkit
    import attnkit.hf  # noqa: F401  (registers "attnkit")

    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                                      num_hidden_layers=8, num_attention_heads=16,
                                      num_key_value_heads=4, max_position_embeddings=length)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(0, 32000, (1, length), device="cuda")

    def forward(implementation: str, capture: bool = False):
        def run():
            model.set_attn_implementation(implementation)
            with torch.no_grad():
                if capture:
                    with attnkit.capture(model):
                        model.model(ids)
                else:
                    model.model(ids)
        return run

    configs = {"sdpa": forward("sdpa"), "attnkit": forward("attnkit"),
               "attnkit + capture (all layers)": forward("attnkit", capture=True)}
    for fn in configs.values():
        cuda_time(fn)
    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            times[name].append(cuda_time(configs[name]))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return {"model": "Llama-style from a config: 8 layers, hidden 1024, 16 query / 4 kv heads, "
                     "bfloat16, random weights", "length": length,
            "median_ms": {name: t * 1e3 for name, t in medians.items()},
            "capture_over_plain": medians["attnkit + capture (all layers)"] / medians["attnkit"],
            "sdpa_over_attnkit": medians["sdpa"] / medians["attnkit"]}


def model_table(result: dict) -> str:
    lines = ["", f"{result['model']}, {result['length']} tokens, forward (no logits):", "",
             "| implementation | median ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in result["median_ms"].items()]
    lines += ["", f"capture / plain attnkit forward: {result['capture_over_plain']:.3f}; "
              f"sdpa / attnkit: {result['sdpa_over_attnkit']:.3f}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
