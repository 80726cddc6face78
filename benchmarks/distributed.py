"""Sequence-parallel attention on W processes (gloo) against one process: time, the share spent
communicating, and peak memory per rank.

    torchrun --nproc-per-node W benchmarks/distributed.py --out bench-out/distributed-W.json
    torchrun --nproc-per-node W benchmarks/distributed.py --memory --modes ring --sizes 65536

Timing (W = 1, 2, 4): with W = 1 it times one process's ``attnkit.attention`` on the whole
sequence (the baseline, all cores); with W > 1 each rank gets ``cores / W`` threads and the modes
``ring``, ``allgather`` and ``ulysses`` run interleaved, after a warm-up, median of ``--rounds``;
zigzag layout, causal, float32, B = 1, H = 4, D = 64. A call's time is its slowest rank's. "Comm"
times the same transfers with no compute (ring: the blocks each step sends, as the plan says;
allgather: the gathers; ulysses: the all-to-alls), so its share of the call bounds what overlap
leaves exposed.

Memory (``--memory``, one mode and one size per fresh process): after a warm-up at a tiny size,
each rank's VmHWM is reset to its current RSS (``/proc/self/clear_refs``) and one call runs; the
figure is how far the call pushes the peak (its output, and with ``--backward`` the gradients,
included), max over ranks. glibc's mmap threshold is pinned at 1 MiB first (``--glibc-default``
leaves it dynamic), so the figure is the most the call holds at once rather than what the heap
kept from blocks freed earlier in the call.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from machine import describe as describe_machine

import attnkit
import attnkit.distributed as akd
from attnkit.distributed.comm import Transfers, all_gather
from attnkit.distributed.groups import resolve
from attnkit.distributed.layouts import scatter_sum
from attnkit.distributed.plan import Band, RingPlan
from attnkit.distributed.ulysses import _heads_to_seq, _seq_to_heads
from attnkit.runtime import torch_threads

B, H, D = 1, 4, 64
LAYOUT = "zigzag"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _call(mode: str | None, q, k, v, backward: bool):
    """One timed call; returns (seconds, peak MB above the RSS at its start)."""
    for t in (q, k, v):
        t.grad = None
    dist.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS mark := current RSS
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        if mode is None:
            out = attnkit.attention(q, k, v, causal=True)
        else:
            out = akd.attention(q, k, v, layout=LAYOUT, mode=mode, causal=True)
        if backward:
            out.backward(torch.ones_like(out))
    seconds = time.perf_counter() - start
    peak_mb = (_status_kb("VmHWM") - before) / 1024
    del out
    return seconds, peak_mb


def _comm_only(mode: str, q, k, v, backward: bool) -> float:
    """The call's transfers without its compute, in seconds. Backward adds: ring, the blocks
    going around again and their dK/dV accumulators (the same size again); allgather, the
    reduce-scatter of dK, dV; ulysses, the all-to-alls in reverse."""
    group = resolve(None)
    q, k, v = (t.detach() for t in (q, k, v))
    dist.barrier()
    start = time.perf_counter()
    if mode == "ring":
        n = q.shape[2]
        plan = RingPlan.build(Band.of(True, None, group.size * n, group.size * n), LAYOUT,
                              group.rank, group.size, n, n)
        block = [k.contiguous(), v.contiguous()]
        for _ in range(3 if backward else 1):
            for t in range(plan.steps):
                moves = Transfers(group, "benchmark blocks")
                if plan.holds(t) and t + 1 <= plan.reach[plan.source(t)]:
                    moves.send(block, to=group.rank + 1, tag=t + 1)
                if t + 1 < plan.steps and t + 1 <= plan.reach[plan.source(t + 1)]:
                    moves.recv(block, frm=group.rank - 1, tag=t + 1)
                moves.wait()
    elif mode == "allgather":
        k_all = all_gather(k, group, "benchmark keys")
        v_all = all_gather(v, group, "benchmark values")
        if backward:
            for parts in (k_all, v_all):
                whole = torch.cat(parts, dim=2)
                scatter_sum(whole, group, LAYOUT, 2)
    else:
        heads = [_seq_to_heads(t, group, LAYOUT) for t in (q, k, v)]
        _heads_to_seq(heads[0], group, LAYOUT)
        if backward:
            _seq_to_heads(q, group, LAYOUT)
            for t in heads:
                _heads_to_seq(t, group, LAYOUT)
    seconds = time.perf_counter() - start
    slowest = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return float(slowest)


def _slowest(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _inputs(n: int, backward: bool):
    world, rank = dist.get_world_size(), dist.get_rank()
    gen = torch.Generator().manual_seed(rank)
    shape = (B, H, n // world, D)  # this rank's part
    return [torch.randn(shape, generator=gen).requires_grad_(backward) for _ in range(3)]


def _warm_up(modes, q, k, v, backward: bool) -> None:
    small = [t[:, :, : 2 * dist.get_world_size()].detach().clone().requires_grad_(backward)
             for t in (q, k, v)]
    for mode in modes:  # code paths, thread pools, the first transfers
        _call(mode, *small, backward)


def run(n: int, modes: list, backward: bool, rounds: int) -> list[dict]:
    world = dist.get_world_size()
    q, k, v = _inputs(n, backward)
    _warm_up(modes, q, k, v, backward)
    for mode in modes:
        _call(mode, q, k, v, backward)
    times: dict[str | None, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):  # interleaved
        for mode in modes:
            times[mode].append(_call(mode, q, k, v, backward)[0])
    rows = []
    for mode in modes:
        slow = _slowest(times[mode])
        comm = (statistics.median(_comm_only(mode, q, k, v, backward) for _ in range(3))
                if mode else 0.0)
        seconds = statistics.median(slow)
        rows.append({"n": n, "world": world, "mode": mode or "one process",
                     "pass": "fwd+bwd" if backward else "fwd", "ms": round(1000 * seconds),
                     "comm_ms": round(1000 * comm) if mode else None,
                     "comm_share": round(comm / seconds, 3) if mode else None,
                     "times_ms": [round(1000 * s) for s in slow]})
    return rows


def _pin_mmap_threshold() -> None:
    """glibc raises its mmap threshold each time a large block is freed, after which blocks of
    that size come from the heap and stay resident once freed; pinned at 1 MiB, every large
    block is returned when freed, so RSS follows the tensors the call holds."""
    import ctypes

    m_mmap_threshold = -3
    ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, 1 << 20)


def memory(n: int, mode, backward: bool, pin: bool) -> dict:
    """Peak memory of one call in this fresh process (see the module docstring)."""
    if pin:
        _pin_mmap_threshold()
    q, k, v = _inputs(n, backward)
    _warm_up([mode], q, k, v, backward)
    seconds, peak = _call(mode, q, k, v, backward)
    return {"n": n, "world": dist.get_world_size(), "mode": mode or "one process",
            "pass": "fwd+bwd" if backward else "fwd",
            "peak_extra_mb_per_rank": round(max(_slowest([peak])), 1),
            "inputs_mb_per_rank": round(3 * q.numel() * 4 / 2**20, 1),
            "ms": round(1000 * max(_slowest([seconds]))), "pinned_mmap_threshold": pin}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--backward-sizes", type=int, nargs="*", default=[16384],
                        help="sizes also timed forward+backward")
    parser.add_argument("--modes", nargs="+", choices=akd.MODES, default=list(akd.MODES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory", action="store_true",
                        help="peak memory of one call instead (one mode, one size)")
    parser.add_argument("--backward", action="store_true", help="with --memory: fwd+bwd")
    parser.add_argument("--glibc-default", action="store_true",
                        help="with --memory: leave glibc's mmap threshold dynamic")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=30))
    world, rank = dist.get_world_size(), dist.get_rank()
    threads = max(1, (os.cpu_count() or 1) // world)
    modes = [None] if world == 1 else args.modes
    if args.memory and (len(modes) != 1 or len(args.sizes) != 1):
        parser.error("--memory measures one call in a fresh process: give one mode and one size")
    rows = []
    with torch_threads(threads):
        machine = describe_machine()
        for n in args.sizes:
            if args.memory:
                rows.append(memory(n, modes[0], args.backward, not args.glibc_default))
            else:
                rows += run(n, modes, backward=False, rounds=args.rounds)
                if n in args.backward_sizes:
                    rows += run(n, modes, backward=True, rounds=args.rounds)
            if rank == 0:
                for row in rows:
                    if row["n"] == n:
                        print(json.dumps(row), flush=True)
    if rank == 0:
        load = os.getloadavg()
        report = {"world": world, "threads_per_rank": threads, "machine": machine,
                  "load_average": [round(x, 2) for x in load], "python": platform.python_version(),
                  "command": " ".join(sys.argv), "rows": rows}
        print(f"W={world}, {threads} thread(s) per rank; {machine}; load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
