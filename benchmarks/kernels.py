"""Kernel speed, side by side in one process: attnkit blockwise vs torch SDPA vs naive eager.

    python benchmarks/kernels.py --out bench-out/kernels.json            # the full table
    python benchmarks/kernels.py --sizes 1024 --repeats 5 --no-memory   # a quick look

For every (N, dtype, causal, pass) the three contenders run interleaved, after a warm-up, and the
median of ``--repeats`` runs is reported with GFLOP/s, the fraction of this machine's matmul rate
(float32, measured in the same run: attnkit computes half-precision tiles in float32 too) and
the ratio ``peer time / attnkit time``. FLOPs are
``4·B·H·N²·D`` (half when causal); forward+backward counts 3.5× the forward. Naive eager is
skipped where its N×N buffers would not fit (it says so). Peak memory runs in fresh processes
(benchmarks/peak_memory.py).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import describe as describe_machine

import attnkit

B, H, D = 1, 8, 64
NAIVE_LIMIT_BYTES = 6 * 2**30  # naive fwd+bwd holds ~3 N×N buffers per head


def naive(q, k, v, causal):
    """Eager attention as people write it: the whole score matrix, softmax, then values."""
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, N, N)
    if causal:
        n = q.shape[-2]
        hidden = torch.ones(n, n, dtype=torch.bool).triu_(1)
        s = s.masked_fill(hidden, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def contenders(causal: bool):
    return {
        "attnkit": lambda q, k, v: attnkit.attention(q, k, v, causal=causal, backend="blockwise"),
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "naive": lambda q, k, v: naive(q, k, v, causal),
    }


def timed(fn, q, k, v, grad_out, backward: bool) -> float:
    if backward:
        for t in (q, k, v):
            t.grad = None
        start = time.perf_counter()
        fn(q, k, v).backward(grad_out)
    else:
        with torch.no_grad():
            start = time.perf_counter()
            fn(q, k, v)
    return time.perf_counter() - start


def matmul_rate(dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of an n³ matmul in ``dtype``: the machine's ceiling for this run (n = 2048 for
    float32; 512 for half types, whose matmul can be very slow on CPUs without native support)."""
    n = 2048 if dtype == torch.float32 else 512
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def bench(n: int, dtype: torch.dtype, causal: bool, backward: bool, repeats: int,
          ceiling: float) -> dict:
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype).requires_grad_(backward)
               for _ in range(3))
    grad_out = torch.randn(B, H, n, D, generator=g).to(dtype)
    fns = contenders(causal)
    naive_bytes = B * H * n * n * 4 * (3 if backward else 2)
    naive_seconds = 4 * B * H * n * n * D * (3.5 if backward else 1) / (ceiling * 1e9)
    skip_naive = None
    if naive_bytes > NAIVE_LIMIT_BYTES:
        skip_naive = f"skipped: needs ~{naive_bytes / 2**30:.0f} GiB of N×N buffers"
    elif naive_seconds > 20:
        skip_naive = (f"skipped: its {dtype} matmuls would take ~{naive_seconds:.0f} s a run "
                      f"at this CPU's {ceiling:.1f} GFLOP/s")
    if skip_naive:
        fns.pop("naive")
    for fn in fns.values():  # warm-up
        timed(fn, q, k, v, grad_out, backward)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit everyone alike
        for name, fn in fns.items():
            times[name].append(timed(fn, q, k, v, grad_out, backward))
    flops = 4 * B * H * n * n * D * (0.5 if causal else 1) * (3.5 if backward else 1)
    row = {"n": n, "dtype": str(dtype).replace("torch.", ""), "causal": causal,
           "pass": "fwd+bwd" if backward else "fwd", "flops": flops}
    for name, ts in times.items():
        row[f"{name}_s"] = statistics.median(ts)
        row[f"{name}_gflops"] = flops / statistics.median(ts) / 1e9
    for peer in ("sdpa", "naive"):
        if f"{peer}_s" in row:
            row[f"{peer}_over_attnkit"] = row[f"{peer}_s"] / row["attnkit_s"]
    if skip_naive:
        row["naive_note"] = skip_naive
    return row


def peak_memory(n: int, backend: str) -> dict:
    script = Path(__file__).with_name("peak_memory.py")
    done = subprocess.run([sys.executable, str(script), "--n", str(n), "--causal", "--backward",
                           "--backend", backend], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], ceilings: dict[str, float], memory: list[dict]) -> str:
    lines = ["| N | dtype | causal | pass | attnkit ms | SDPA ms | naive ms | SDPA / attnkit "
             "| naive / attnkit | attnkit GFLOP/s | % of fp32 matmul |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        naive_ms = f"{r['naive_s'] * 1e3:.0f}" if "naive_s" in r else "—"
        naive_ratio = f"{r['naive_over_attnkit']:.2f}" if "naive_s" in r else "—"
        share = 100 * r["attnkit_gflops"] / ceilings["float32"]  # tiles run in float32
        lines.append(f"| {r['n']} | {r['dtype']} | {'yes' if r['causal'] else 'no'} | {r['pass']} "
                     f"| {r['attnkit_s'] * 1e3:.0f} | {r['sdpa_s'] * 1e3:.0f} | {naive_ms} "
                     f"| **{r['sdpa_over_attnkit']:.2f}** | {naive_ratio} "
                     f"| {r['attnkit_gflops']:.0f} | {share:.0f}% |")
    lines.append("")
    notes = sorted({r["naive_note"] for r in rows if "naive_note" in r})
    lines += [f"- naive {note}" for note in notes]
    lines.append("")
    lines.append("Matmul ceiling (same run; 2048³ float32, 512³ half types): " + ", ".join(
        f"{k} {v:.0f} GFLOP/s" for k, v in ceilings.items()))
    if memory:
        lines += ["", "| N | heads | D | pass | backend | peak extra MB | inputs MB | seconds | "
                  "one N×N float32 buffer |", "|---|---|---|---|---|---|---|---|---|"]
        for m in memory:
            lines.append(f"| {m['n']} | {m['heads']} | {m['dim']} | causal fwd+bwd "
                         f"| {m['backend']} "
                         f"| {m['extra_mb']} | {m['inputs_mb']} | {m['seconds']} "
                         f"| {m['n'] ** 2 * 4 / 2**30:.0f} GiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"])
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[65536, 131072])
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()

    machine = describe_machine()
    print(f"# attnkit kernels vs torch SDPA vs naive eager — B={B}, H={H}, D={D}; {machine}")
    ceilings = {name: matmul_rate(getattr(torch, name), args.repeats)
                for name in dict.fromkeys(["float32", *args.dtypes])}
    rows = []
    for n in args.sizes:
        for name in args.dtypes:
            for causal in (True, False):
                for pass_ in args.passes:
                    row = bench(n, getattr(torch, name), causal, pass_ == "fwd+bwd", args.repeats,
                                ceilings[name])
                    rows.append(row)
                    print(f"N={n} {name} causal={causal} {pass_}: attnkit {row['attnkit_s']:.3f}s "
                          f"sdpa {row['sdpa_s']:.3f}s  sdpa/attnkit {row['sdpa_over_attnkit']:.2f}",
                          flush=True)
    memory = [] if args.no_memory else [peak_memory(n, "blockwise") for n in args.memory_sizes]
    table = markdown(rows, ceilings, memory)
    print()
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "ceilings_gflops": ceilings,
                                        "rows": rows, "memory": memory}, indent=2))


if __name__ == "__main__":
    main()
