"""Combine two partial attention results computed over disjoint sets of keys.

Used by the blockwise kernel between key tiles, and by split-KV decoding and ring attention.
"""

from __future__ import annotations

import torch


def merge(
    out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``(out1, lse1)`` and ``(out2, lse2)`` into the result over the union of their keys.

    Args:
        out1, out2: ``(..., S, Dv)`` attention outputs, each normalized over its own keys.
        lse1, lse2: ``(..., S)`` log-sum-exp of the scaled scores over those keys; ``-inf`` where
            a query saw no key (that side then contributes nothing).

    Returns:
        ``(out, lse)``: ``lse = logaddexp(lse1, lse2)`` (float32) and
        ``out = exp(lse1 - lse) * out1 + exp(lse2 - lse) * out2``, computed in float32 (float64
        for float64 inputs) and returned in the dtype of ``out1``. A query that saw no key on
        either side gets zeros and ``lse = -inf``, never NaN.
    """
    if out1.shape != out2.shape:
        raise ValueError(f"merge: out1 has shape {tuple(out1.shape)} but out2 has "
                         f"{tuple(out2.shape)}; "
                         "both halves must cover the same queries and value dims")
    if lse1.shape != lse2.shape or lse1.shape != out1.shape[:-1]:
        raise ValueError(f"merge: lse shapes {tuple(lse1.shape)} and {tuple(lse2.shape)} must "
                         "both be "
                         f"out's shape without its last dim, {tuple(out1.shape[:-1])}")
    work = torch.float64 if out1.dtype == torch.float64 else torch.float32
    a, b = lse1.to(work), lse2.to(work)
    lse = torch.logaddexp(a, b)
    # A row with no key on either side has lse = -inf; subtracting 0 instead keeps exp() at 0.
    base = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    w1 = torch.exp(a - base).unsqueeze(-1)
    w2 = torch.exp(b - base).unsqueeze(-1)
    out = w1 * out1.to(work) + w2 * out2.to(work)
    return out.to(out1.dtype), lse.to(torch.float32 if work == torch.float32 else work)
