"""Peak resident memory of one attention call above its inputs, measured in this fresh process.

    python benchmarks/peak_memory.py --n 131072 --backend blockwise --causal --backward

Prints one JSON line: {"n":…, "extra_mb":…, "inputs_mb":…, "seconds":…}. The inputs (q, k, v and
the output gradient) are allocated and touched first; then the kernel's peak-RSS mark (VmHWM) is
reset to the current RSS, and the figure is how far the call pushes it above that. (ru_maxrss is
no use here: Linux carries a parent's peak into a child across fork and exec.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import attnkit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True, help="sequence length (Sq = Sk)")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--backend", default="blockwise")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--backward", action="store_true", help="forward + backward")
    args = parser.parse_args()

    torch.manual_seed(0)
    shape = (1, args.heads, args.n, args.dim)
    q, k, v = (torch.randn(shape, requires_grad=args.backward) for _ in range(3))
    grad_out = torch.randn(shape)
    # warm up the code paths at a tiny size so library loading is not counted
    tiny = [t[:, :, :64].detach().clone().requires_grad_(args.backward) for t in (q, k, v)]
    warm = attnkit.attention(*tiny, causal=args.causal, backend=args.backend)
    if args.backward:
        warm.sum().backward()
    del tiny, warm

    Path("/proc/self/clear_refs").write_text("5")  # peak RSS mark := current RSS
    before, peak_before = _status_kb("VmRSS"), _status_kb("VmHWM")
    start = time.perf_counter()
    out = attnkit.attention(q, k, v, causal=args.causal, backend=args.backend)
    if args.backward:
        out.backward(grad_out)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    inputs = 4 * q.numel() * 4
    print(json.dumps({
        "n": args.n, "heads": args.heads, "dim": args.dim, "backend": args.backend,
        "causal": args.causal, "backward": args.backward, "seconds": round(seconds, 2),
        "inputs_mb": round(inputs / 2**20, 1),
        "extra_mb": round((peak - before) / 1024, 1),
        "rss_before_mb": round(before / 1024, 1),
        "peak_mark_before_mb": round(peak_before / 1024, 1),
    }))


def _status_kb(field: str) -> int:
    """A field of /proc/self/status, in kB (VmRSS: resident now; VmHWM: peak since reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


if __name__ == "__main__":
    main()
