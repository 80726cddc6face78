"""A long input through a random Llama-style model on attnkit with every layer captured, in a
process of its own: prints one JSON line with the time, the peak resident memory (VmHWM, reset
just before the forward pass), what the capture holds, and the exactness of every head's last
pattern row against the float64 reference.

    python benchmarks/long_capture.py 16384

Run by ``benchmarks/models.py`` (the table in BENCHMARKS.md) and by ``tests/test_hf_long.py``
(which asserts what it reports).
"""

import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaModel

import attnkit
import attnkit.hf  # noqa: F401  (registers "attnkit")
from attnkit.kernels.api import attention, pattern


def status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak since the last reset) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def last_row_errors(cap) -> list[dict]:
    """Every head's last pattern row against the float64 reference (and the float32 one)."""
    errors = []
    for layer in cap.layers:
        q, k = cap.queries(layer), cap.keys(layer)  # (1, 8, S, 8), (1, 2, S, 8)
        scale = cap.options(layer)["scale"]
        group = q.shape[1] // k.shape[1]
        for head in cap.heads:
            ours = cap.pattern(layer, head, rows=slice(-1, None))  # (1, S): the last query's row
            q_last = q[:, head:head + 1, -1:]
            k_head = k[:, head // group:head // group + 1]
            rows = {}
            for name, dtype in (("truth", torch.float64), ("reference_f32", torch.float32)):
                qq, kk = q_last.to(dtype), k_head.to(dtype)
                lse = attention(qq, kk, kk, causal=True, scale=scale, return_lse=True,
                                backend="reference")[1]
                rows[name] = pattern(qq, kk, lse, causal=True, scale=scale)[0, 0].double()
            errors.append({
                "ours": (ours.double() - rows["truth"]).abs().max().item(),
                "reference_f32": (rows["reference_f32"] - rows["truth"]).abs().max().item(),
                "row_sum": ours.sum().item()})
    return errors


def main(length: int) -> dict:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=length)
    model = LlamaModel(config).eval()
    model.set_attn_implementation("attnkit")
    ids = torch.randint(0, 64, (1, length))
    # reset the peak mark: ru_maxrss would carry the parent's peak across fork and exec
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_mib("VmRSS")
    t0 = time.perf_counter()
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(input_ids=ids)
    seconds = time.perf_counter() - t0
    peak = status_mib("VmHWM")
    t0 = time.perf_counter()
    row = cap.pattern(1, 7, rows=slice(-1, None))
    row_seconds = time.perf_counter() - t0
    stored = sum(cap.queries(lay).numel() + cap.keys(lay).numel() + cap.lse(lay).numel()
                 for lay in cap.layers) * 4 / 2**20
    return {"seconds": seconds, "rss_before_mib": before, "peak_mib": peak,
            "captured_mib": stored, "last_row_seconds": row_seconds,
            "row_sum": row.sum().item(), "layers": cap.layers, "heads": cap.heads,
            "seq_len": cap.seq_len(), "errors": last_row_errors(cap)}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
