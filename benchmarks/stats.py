"""Attention statistics of every head, side by side with the peer way of getting them: eager
``output_attentions`` (every N × N pattern) and the same statistics in PyTorch on those patterns.

    python benchmarks/stats.py [--rounds 5] [--lengths 1024 4096] [--long 16384]
                               [--memory-lengths 1024 2048 4096] [--out bench-out/stats.json]

Model: a random Llama-style config, 2 layers, 8 query heads / 2 key-value heads, hidden 64
(as ``benchmarks/long_capture.py``), one sequence. Three parts:

1. time, interleaved in this process after a warm-up, median of ``--rounds``: attnkit (forward
   with capture + ``attnkit.attention_stats``) against the peer (eager forward with
   ``output_attentions=True`` + the statistics from the patterns), at each of ``--lengths``; the
   largest difference between the two results is reported next to the times;
2. peak memory of each way at each of ``--memory-lengths``, each in a fresh process (VmHWM reset
   just before the forward pass; the figure is its growth over the model and inputs), and the
   length at which the peer would run out of this machine's memory, from a fit ``a·N² + b·N + c``
   to the measured peaks (nothing is run at that length);
3. at ``--long`` tokens in a fresh process: the capture's own peak, then how much
   ``attention_stats`` of every head adds above the capture (VmHWM reset after the capture).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

STATS = ("entropy", "sink", "max_weight", "distance", "received")


def status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak since the last reset) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def reset_peak() -> None:
    """Peak-RSS mark := current RSS (ru_maxrss would carry the parent's peak across exec)."""
    Path("/proc/self/clear_refs").write_text("5")


def llama(length: int):
    from transformers import LlamaConfig, LlamaModel

    import attnkit.hf  # noqa: F401  (registers "attnkit")

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=length)
    model = LlamaModel(config).eval()
    ids = torch.randint(0, 64, (1, length), generator=torch.Generator().manual_seed(1))
    return model, ids


def ours(model, ids) -> dict[str, torch.Tensor]:
    """attnkit: run with capture, then every statistic from q, k and lse, tile by tile."""
    import attnkit

    model.set_attn_implementation("attnkit")
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(input_ids=ids)
    stats = attnkit.attention_stats(cap)
    return {name: getattr(stats, name) for name in STATS}


def peer(model, ids) -> dict[str, torch.Tensor]:
    """The peer: eager attention returns every pattern ``(1, H, S, S)`` per layer; the same
    statistics computed on them with plain PyTorch (float32, one layer at a time)."""
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(input_ids=ids, output_attentions=True).attentions
    S = ids.shape[1]
    n_bins = max(S - 1, 0).bit_length() + 1
    i = torch.arange(S)
    d = (i[:, None] - i[None]).abs()  # (S, S) |query - key|
    bins = torch.where(d == 0, 0, torch.floor(torch.log2(d.clamp_min(1).float())).long() + 1)
    out = {name: [] for name in STATS}
    for a in attentions:  # (1, H, S, S)
        p = a[0]  # (H, S, S)
        out["entropy"].append(-torch.xlogy(p, p).sum(-1).mean(-1).double())
        out["sink"].append(p[..., 0].mean(-1).double())
        out["max_weight"].append(p.amax(-1).mean(-1).double())
        dist = torch.zeros(p.shape[0], n_bins).index_add_(1, bins.flatten(),
                                                          p.reshape(p.shape[0], -1))
        out["distance"].append(dist.double() / S)
        out["received"].append(p.sum(-2)[:, None].double())  # (H, 1, S)
    return {name: torch.stack(values) for name, values in out.items()}


def side_by_side(lengths: list[int], rounds: int) -> list[dict]:
    rows = []
    for length in lengths:
        model, ids = llama(length)
        ways = {"attnkit": lambda m=model, x=ids: ours(m, x),
                "eager + PyTorch": lambda m=model, x=ids: peer(m, x)}
        results = {name: fn() for name, fn in ways.items()}  # warm-up, and the answers
        error = max((results["attnkit"][n] - results["eager + PyTorch"][n]).abs().max().item()
                    for n in STATS)
        del results
        times: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        for r in range(rounds):
            for name in names[r % 2:] + names[:r % 2]:  # alternate who goes first
                t0 = time.perf_counter()
                ways[name]()
                times[name].append(time.perf_counter() - t0)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        rows.append({"length": length, "median_s": medians,
                     "peer_over_attnkit": medians["eager + PyTorch"] / medians["attnkit"],
                     "max_abs_difference": error})
        print(f"N={length}: attnkit {medians['attnkit']:.3f} s, eager + PyTorch "
              f"{medians['eager + PyTorch']:.3f} s, ratio {rows[-1]['peer_over_attnkit']:.2f}, "
              f"max |difference| {error:.1e}", flush=True)
    return rows


# ---- fresh processes ----------------------------------------------------------------------------


def child(way: str, length: int) -> dict:
    """In a fresh process: the peak memory of one way at one length, over model and inputs."""
    model, ids = llama(length)
    import attnkit  # noqa: F401  (load everything before the mark)

    run = ours if way == "attnkit" else peer
    small, small_ids = llama(64)
    run(small, small_ids)  # warm the code paths at a tiny size
    del small, small_ids
    reset_peak()
    before = status_mib("VmRSS")
    t0 = time.perf_counter()
    run(model, ids)
    seconds = time.perf_counter() - t0
    return {"way": way, "length": length, "seconds": seconds,
            "peak_growth_mib": status_mib("VmHWM") - before}


def child_long(length: int) -> dict:
    """In a fresh process: the capture's peak, then what attention_stats adds above it."""
    import attnkit

    model, ids = llama(length)
    model.set_attn_implementation("attnkit")
    small, small_ids = llama(64)
    ours(small, small_ids)
    del small, small_ids
    reset_peak()
    before = status_mib("VmRSS")
    t0 = time.perf_counter()
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(input_ids=ids)
    capture_s = time.perf_counter() - t0
    capture_peak = status_mib("VmHWM") - before
    reset_peak()
    after_capture = status_mib("VmRSS")
    t0 = time.perf_counter()
    stats = attnkit.attention_stats(cap)
    stats_s = time.perf_counter() - t0
    stats_peak = status_mib("VmHWM") - after_capture
    held = sum(cap.queries(lay).numel() + cap.keys(lay).numel() + cap.lse(lay).numel()
               for lay in cap.layers) * 4 / 2**20
    return {"length": length, "layers": len(cap.layers), "heads": len(cap.heads),
            "capture_s": capture_s, "capture_peak_growth_mib": capture_peak,
            "captured_mib": held, "stats_s": stats_s, "stats_peak_over_capture_mib": stats_peak,
            "received_mib": stats.received.numel() * 8 / 2**20,
            "distance_row_sum_min": float(stats.distance.sum(-1).min()),
            "one_pattern_gib": length * length * 4 / 2**30}


def in_fresh_process(*args: str) -> dict:
    run = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, timeout=1800,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def oom_length(points: list[dict], memory_mib: float) -> dict:
    """Fit peak ≈ a·N² + b·N + c to the peer's measured peaks; the N where it reaches
    ``memory_mib``."""
    n = torch.tensor([p["length"] for p in points], dtype=torch.float64)
    y = torch.tensor([p["peak_growth_mib"] for p in points], dtype=torch.float64)
    A = torch.stack([n * n, n, torch.ones_like(n)], dim=1)
    a, b, c = torch.linalg.lstsq(A, y[:, None]).solution.flatten().tolist()
    root = (-b + (b * b - 4 * a * (c - memory_mib)) ** 0.5) / (2 * a)
    return {"fit_mib": {"a_per_n2": a, "b_per_n": b, "c": c}, "memory_mib": memory_mib,
            "length": int(root)}


def machine() -> str:
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo")
               if line.startswith("MemTotal")) / 2**20
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{mem:.0f} GiB, torch {torch.__version__}, capability "
            f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--memory-lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--long", type=int, default=16384)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, length = args.child[0], int(args.child[1])
        print(json.dumps(child_long(length) if kind == "long" else child(kind, length)))
        return

    print(machine(), flush=True)
    timing = side_by_side(args.lengths, args.rounds)
    memory = []
    for length in args.memory_lengths:
        for way in ("attnkit", "peer"):
            memory.append(in_fresh_process(way, str(length)))
            print(f"peak N={length} {way}: {memory[-1]['peak_growth_mib']:.0f} MiB", flush=True)
    total_mib = next(int(line.split()[1]) for line in open("/proc/meminfo")
                     if line.startswith("MemTotal")) / 1024
    oom = oom_length([m for m in memory if m["way"] == "peer"], total_mib)
    print(f"peer runs out of memory ({total_mib / 1024:.1f} GiB) at about N = {oom['length']}",
          flush=True)
    long = in_fresh_process("long", str(args.long))
    print(f"N={args.long}: capture {long['capture_s']:.1f} s, "
          f"+{long['capture_peak_growth_mib']:.0f} MiB; attention_stats of {long['layers']} x "
          f"{long['heads']} heads "
          f"{long['stats_s']:.1f} s, +{long['stats_peak_over_capture_mib']:.0f} MiB over the "
          f"capture (one {args.long}² pattern: {long['one_pattern_gib']:.0f} GiB)", flush=True)
    result = {"machine": machine(), "timing": timing, "memory": memory, "peer_oom": oom,
              "long": long}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
