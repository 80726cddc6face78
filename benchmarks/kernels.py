"""Kernel speed, side by side in one process: attnkit (its automatic choice, returning the lse)
vs its blockwise kernel vs torch SDPA vs naive eager; a sliding window vs SDPA given the same
boolean mask.

    python benchmarks/kernels.py --out bench-out/kernels.json            # the full table
    python benchmarks/kernels.py --sizes 1024 --repeats 5 --no-memory   # a quick look
    python benchmarks/kernels.py --sizes 4096 --causal yes --no-naive --no-memory  # make bench

For every (N, dtype, causal, pass) the contenders run interleaved, after a warm-up, and the
median of ``--repeats`` runs is reported with GFLOP/s, the fraction of this machine's float32
matmul rate (measured in the same run, as are the half-precision rates: the kernels compute
half-precision tiles in float32) and the ratio ``peer time / attnkit time``. "attnkit" is
``attention(q, k, v, causal=..., return_lse=True)`` with no backend named: on the CPU that is
the fused backend (docs/backends.md). FLOPs are ``4·B·H·N²·D`` (half when causal);
forward+backward counts 3.5× the forward. Naive eager is skipped where its N×N buffers would
not fit (it says so). Peak memory runs in fresh processes (benchmarks/peak_memory.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
    """Each returns the output (the lse, where returned, is computed but not part of the loss)."""
    return {
        "attnkit": lambda q, k, v: attnkit.attention(q, k, v, causal=causal, return_lse=True)[0],
        "blockwise": lambda q, k, v: attnkit.attention(q, k, v, causal=causal, return_lse=True,
                                                       backend="blockwise")[0],
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
    """GFLOP/s of an n³ matmul in ``dtype``, the best of ``repeats``: the machine's ceiling for
    this run (a ceiling is what it reaches undisturbed; a median let one noisy moment put attention
    above it). n = 2048 for float32; 512 for half types, whose matmul can be very slow on CPUs
    without native support."""
    n = 2048 if dtype == torch.float32 else 512
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def bench(n: int, dtype: torch.dtype, causal: bool, backward: bool, repeats: int,
          ceiling: float, naive_too: bool = True) -> dict:
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype).requires_grad_(backward)
               for _ in range(3))
    grad_out = torch.randn(B, H, n, D, generator=g).to(dtype)
    fns = contenders(causal)
    naive_bytes = B * H * n * n * 4 * (3 if backward else 2)
    naive_seconds = 4 * B * H * n * n * D * (3.5 if backward else 1) / (ceiling * 1e9)
    skip_naive = None
    if not naive_too:
        skip_naive = "not run (--no-naive)"
    elif naive_bytes > NAIVE_LIMIT_BYTES:
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
    for peer in ("sdpa", "blockwise", "naive"):
        if f"{peer}_s" in row:
            row[f"{peer}_over_attnkit"] = row[f"{peer}_s"] / row["attnkit_s"]
    row["backend"] = chosen_backend(q, k, v, causal=causal)
    if skip_naive:
        row["naive_note"] = skip_naive
    return row


def chosen_backend(q, k, v, **opts) -> str:
    """The backend attention() picks for these inputs (with autograd when they need it)."""
    from attnkit.kernels.api import _choose, validate

    return _choose(None, validate(q, k, v, **opts)[0], True, q).name


def bench_window(n: int, left: int, backward: bool, repeats: int) -> dict:
    """A causal sliding window (``left`` keys back): attnkit computes only the band's tiles;
    SDPA is given the same window as a boolean ``N×N`` mask and computes every tile."""
    g = torch.Generator().manual_seed(n + left)
    q, k, v = (torch.randn(B, H, n, D, generator=g).requires_grad_(backward) for _ in range(3))
    grad_out = torch.randn(B, H, n, D, generator=g)
    i = torch.arange(n)
    band = (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - left)  # (N, N), True = seen
    fns = {
        "attnkit": lambda q, k, v: attnkit.attention(q, k, v, window=(left, 0),
                                                     return_lse=True)[0],
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=band),
    }
    for fn in fns.values():  # warm-up
        timed(fn, q, k, v, grad_out, backward)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, q, k, v, grad_out, backward))
    row = {"n": n, "window": (left, 0), "pass": "fwd+bwd" if backward else "fwd",
           "backend": chosen_backend(q, k, v, window=(left, 0))}
    for name, ts in times.items():
        row[f"{name}_s"] = statistics.median(ts)
    row["sdpa_over_attnkit"] = row["sdpa_s"] / row["attnkit_s"]
    return row


def peak_memory(n: int, backend: str) -> dict:
    script = Path(__file__).with_name("peak_memory.py")
    done = subprocess.run([sys.executable, str(script), "--n", str(n), "--causal", "--backward",
                           "--backend", backend], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], ceilings: dict[str, float], memory: list[dict],
             windows: list[dict] | None = None) -> str:
    lines = ["| N | dtype | causal | pass | attnkit (backend) ms | blockwise ms | SDPA ms "
             "| naive ms | SDPA / attnkit | blockwise / attnkit | naive / attnkit "
             "| attnkit GFLOP/s | % of fp32 matmul |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        naive_ms = f"{r['naive_s'] * 1e3:.0f}" if "naive_s" in r else "—"
        naive_ratio = f"{r['naive_over_attnkit']:.2f}" if "naive_s" in r else "—"
        share = 100 * r["attnkit_gflops"] / ceilings["float32"]  # tiles run in float32
        lines.append(f"| {r['n']} | {r['dtype']} | {'yes' if r['causal'] else 'no'} | {r['pass']} "
                     f"| {r['attnkit_s'] * 1e3:.0f} ({r['backend']}) "
                     f"| {r['blockwise_s'] * 1e3:.0f} | {r['sdpa_s'] * 1e3:.0f} | {naive_ms} "
                     f"| **{r['sdpa_over_attnkit']:.2f}** | {r['blockwise_over_attnkit']:.2f} "
                     f"| {naive_ratio} | {r['attnkit_gflops']:.0f} | {share:.0f}% |")
    lines.append("")
    notes = sorted({r["naive_note"] for r in rows if "naive_note" in r})
    lines += [f"- naive {note}" for note in notes]
    lines.append("")
    lines.append("Matmul rates (same run; 2048³ float32, 512³ half types): " + ", ".join(
        f"{k} {v:.1f} GFLOP/s" for k, v in ceilings.items()))
    if windows:
        lines += ["", "| N | window | pass | attnkit (backend) ms | SDPA + boolean mask ms "
                  "| SDPA / attnkit |", "|---|---|---|---|---|---|"]
        for w in windows:
            lines.append(f"| {w['n']} | {tuple(w['window'])} | {w['pass']} "
                         f"| {w['attnkit_s'] * 1e3:.0f} ({w['backend']}) "
                         f"| {w['sdpa_s'] * 1e3:.0f} | **{w['sdpa_over_attnkit']:.1f}** |")
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
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096, 16384])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"])
    parser.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--no-naive", action="store_true", help="skip naive eager attention")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[65536, 131072])
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--window-sizes", type=int, nargs="*", default=[8192],
                        help="sequence lengths of the sliding-window rows (window left 512)")
    parser.add_argument("--window-left", type=int, default=512)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()

    machine = describe_machine()
    print(f"# attnkit kernels vs torch SDPA vs naive eager — B={B}, H={H}, D={D}; {machine}; "
          f"load average {os.getloadavg()[0]:.1f}")
    ceilings = {name: matmul_rate(getattr(torch, name), args.repeats)
                for name in dict.fromkeys(["float32", *args.dtypes])}
    rows = []
    for n in args.sizes:
        for name in args.dtypes:
            for causal in {"both": (True, False), "yes": (True,), "no": (False,)}[args.causal]:
                for pass_ in args.passes:
                    row = bench(n, getattr(torch, name), causal, pass_ == "fwd+bwd", args.repeats,
                                ceilings[name], naive_too=not args.no_naive)
                    rows.append(row)
                    print(f"N={n} {name} causal={causal} {pass_}: attnkit ({row['backend']}) "
                          f"{row['attnkit_s']:.3f}s blockwise {row['blockwise_s']:.3f}s "
                          f"sdpa {row['sdpa_s']:.3f}s  sdpa/attnkit {row['sdpa_over_attnkit']:.2f}",
                          flush=True)
    windows = []
    for n in args.window_sizes:
        for pass_ in args.passes:
            w = bench_window(n, args.window_left, pass_ == "fwd+bwd", args.repeats)
            windows.append(w)
            print(f"N={n} window ({args.window_left}, 0) {pass_}: attnkit ({w['backend']}) "
                  f"{w['attnkit_s']:.3f}s sdpa+mask {w['sdpa_s']:.3f}s  "
                  f"sdpa/attnkit {w['sdpa_over_attnkit']:.1f}", flush=True)
    memory = [] if args.no_memory else [peak_memory(n, backend) for n in args.memory_sizes
                                        for backend in ("fused", "blockwise")]
    table = markdown(rows, ceilings, memory, windows)
    print()
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "ceilings_gflops": ceilings,
                                        "rows": rows, "windows": windows, "memory": memory},
                                       indent=2))


if __name__ == "__main__":
    main()
