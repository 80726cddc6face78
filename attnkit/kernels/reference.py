"""The reference backend: attention with every score materialized, read top to bottom.

It computes in the input dtype (so it also shows what a dtype can do) and, run in float64, is the
oracle every fast backend is tested against. It builds ``Sq x Sk`` tensors: use it for checking
and teaching, not for long sequences.
"""

from __future__ import annotations

import torch

from attnkit.kernels import dropout
from attnkit.kernels.masks import MaskSpec
from attnkit.runtime import work_dtype


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention.

    Args:
        q: ``(B, Hq, Sq, D)`` queries; k: ``(B, Hkv, Sk, D)`` keys; v: ``(B, Hkv, Sk, Dv)`` values.
        spec: validated causal / window / mask / bias options (and softcap, sinks, dropout).
        scale: multiplies the dot products (usually ``1/sqrt(D)``).

    Returns:
        ``out (B, Hq, Sq, Dv)`` in q's dtype and ``lse (B, Hq, Sq)`` (float32; float64 for float64).
    """
    pattern, lse = reference_pattern(q, k, spec, scale)  # (B, Hq, Sq, Sk), (B, Hq, Sq)
    if spec.dropout_p > 0:
        # dropout after the softmax: the same seeded mask the blockwise kernel makes tile by tile
        kept = dropout.keep_mask(spec.dropout_seed, spec.dropout_p, *pattern.shape,
                                 device=q.device)  # (B, Hq, Sq, Sk)
        pattern = pattern * kept * dropout.keep_scale(spec.dropout_p)
    v = v.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, Hq, Sk, Dv)
    out = torch.matmul(pattern, v)  # (B, Hq, Sq, Dv): each query's weighted sum of values
    return out, lse


def reference_pattern(
    q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole attention pattern ``(B, Hq, Sq, Sk)`` in q's dtype, ``[query, key]``, and the
    lse ``(B, Hq, Sq)``; a query that sees no key gets a row of zeros and ``lse = -inf`` (with
    sinks, ``lse = sinks[h]``). Dropout is not applied here: this is the softmax before it."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, Hq, Sk, D): query head h reads kv head h // groups

    # how well each key answers each query: scores[..., i, j] = Q_i . K_j * scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, Hq, Sq, Sk)
    if spec.softcap is not None:  # Gemma 2's soft-capping: after the scale, before bias and mask
        scores = torch.tanh(scores / spec.softcap) * spec.softcap
    if spec.bias is not None:
        scores = scores + spec.bias.to(scores.dtype)

    visible = visibility(spec, q.device)  # (.., Sq, Sk) bool, or None when every key is visible
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    if spec.sinks is not None:
        # one more logit per head in every row's denominator: a column with no value
        sink = spec.sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        scores = torch.cat([scores, sink], dim=-1)  # (B, Hq, Sq, Sk + 1)
    sees_any = None
    if visible is not None or spec.bias is not None or spec.sinks is not None:
        # A query that sees no key (all masked, or a bias of -inf on every key) gets zeros; give
        # its row finite scores so no NaN appears, in the forward pass or any gradient, then
        # zero it below. (A finite sink is seen by every row.)
        sees_any = (scores != float("-inf")).any(dim=-1, keepdim=True)  # (B, Hq, Sq, 1)
        scores = torch.where(sees_any, scores, torch.zeros_like(scores))

    lse = torch.logsumexp(scores.to(work_dtype(scores.dtype)), dim=-1)  # float32 for half types
    pattern = torch.softmax(scores, dim=-1)  # (B, Hq, Sq, Sk), each row sums to 1
    if spec.sinks is not None:
        pattern = pattern[..., :-1]  # the sink's share has no value: rows sum to less than 1
    if sees_any is not None:
        pattern = torch.where(sees_any, pattern, torch.zeros_like(pattern))
        lse = torch.where(sees_any.squeeze(-1), lse, torch.full_like(lse, float("-inf")))
    return pattern, lse


def visibility(spec: MaskSpec, device: torch.device) -> torch.Tensor | None:
    """Boolean ``(B|1, Hq|1, Sq, Sk)``: True where query i may attend key j; None if all may."""
    visible = None
    if spec.has_band:
        rows = torch.arange(spec.sq, device=device)
        cols = torch.arange(spec.sk, device=device)
        visible = spec.band(rows, cols)  # (Sq, Sk)
    if spec.mask is not None:
        visible = spec.mask if visible is None else visible & spec.mask
    if visible is not None:
        visible = visible.expand(*visible.shape[:-2], spec.sq, spec.sk)
    return visible
