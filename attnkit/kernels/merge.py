"""Combine two partial attention results computed over disjoint sets of keys.

Used by split-KV decoding and ring attention; differentiable in all four inputs, so gradients
reach q and k through each part's lse.
"""

from __future__ import annotations

import torch

from attnkit.errors import AttnkitError, InputTypeError
from attnkit.runtime import work_dtype


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
        either side gets zeros and ``lse = -inf``, never NaN — nor NaN gradients.

    Sinks (``attention(..., sinks=)``) belong to a whole row, not to a set of keys: pass them to
    exactly one of the partial calls (any one, even one whose queries see no key there: it then
    gives out 0 and ``lse = sinks[h]``), and the merged result counts them once. Dropout masks
    follow each call's own key positions, so merged parts do not repeat one whole call's mask.
    """
    _check(out1, lse1, out2, lse2)
    work = work_dtype(out1.dtype)
    a, b = lse1.to(work), lse2.to(work)  # (..., S)
    # Any finite base gives the same result; the larger lse keeps exp() <= 1. It is detached:
    # its gradients cancel exactly, and the -inf rows would only bring 0 * inf.
    top = torch.maximum(a, b).detach()
    base = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
    w1, w2 = torch.exp(a - base), torch.exp(b - base)  # each side's share, unnormalized
    total = w1 + w2  # >= 1 where some key was seen, 0 where none was
    seen = total > 0
    total = torch.where(seen, total, torch.ones_like(total))  # no log(0) or 0/0, even in backward
    lse = torch.where(seen, base + torch.log(total), torch.full_like(total, float("-inf")))
    out = (w1.unsqueeze(-1) * out1.to(work) + w2.unsqueeze(-1) * out2.to(work)) / total[..., None]
    return out.to(out1.dtype), lse


def _check(out1, lse1, out2, lse2) -> None:
    for name, t in (("out1", out1), ("lse1", lse1), ("out2", out2), ("lse2", lse2)):
        if not isinstance(t, torch.Tensor):
            raise InputTypeError(f"merge: {name} must be a torch.Tensor, got {type(t).__name__}; "
                                 "pass the (out, lse) pairs from attention(..., return_lse=True)")
        if not t.is_floating_point():
            raise InputTypeError(f"merge: {name} must be floating point; got {t.dtype}")
        if t.device != out1.device:
            raise AttnkitError(f"merge: {name} is on {t.device} but out1 is on {out1.device}; "
                               "move both halves to one device with .to(device)")
    if out1.shape != out2.shape:
        raise AttnkitError(f"merge: out1 has shape {tuple(out1.shape)} but out2 has "
                           f"{tuple(out2.shape)}; "
                           "both halves must cover the same queries and value dims")
    if lse1.shape != lse2.shape or lse1.shape != out1.shape[:-1]:
        raise AttnkitError(f"merge: lse shapes {tuple(lse1.shape)} and {tuple(lse2.shape)} must "
                           "both be "
                           f"out's shape without its last dim, {tuple(out1.shape[:-1])}")
