"""CPU stand-ins for torch's CUDA attention ops, written from their documented contracts, so the
CUDA backends' own code (layouts, padding, windows, grouped heads, masks as a bias, rows that
see no key, the lse's gradient) can be checked against the float64 oracle without a GPU.

What they encode (torch 2.13's schemas; FlashAttention-2's and xformers' documentation; torch's
``flash_api.cpp``): inputs ``(B, S, H, D)`` with a contiguous last dim; FlashAttention-2 takes
fp16/bf16, head dims that are multiples of 8 up to 256 and one head dim for q, k, v, reads
grouped heads directly, aligns windows bottom-right (-1: unbounded; ``is_causal`` sets the
right one to 0), gives a row that sees no key out 0 and lse +inf; the memory-efficient kernel
wants equal head counts, a bias whose dtype is q's and whose rows are 16-element aligned,
``custom_mask_type`` 0 (none), 1 (causal top-left), 2 (causal bottom-right), pads its lse to a
multiple of 32, and here gives a row that sees no key NaN and -inf (the worst it could do: the
backend must not pass either on). Each backward computes ``dS = P (dP - rowsum(dO * O))`` from
the ``out`` and ``lse`` it is given, as the real kernels do. This is not a GPU test: it cannot
catch a wrong belief about the kernels, only code that does not do what the beliefs say —
``benchmarks/gpu_check.py`` runs the real thing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

import attnkit.kernels.fused_cuda as fused_cuda


def _visible(sq, sk, left, right, device):
    """Boolean ``(Sq, Sk)``: query i sees key j when ``i + Sk - Sq - left <= j <= ... + right``
    (-1: unbounded)."""
    i = torch.arange(sq, device=device)[:, None] + (sk - sq)
    j = torch.arange(sk, device=device)[None, :]
    seen = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if right >= 0:
        seen &= j <= i + right
    if left >= 0:
        seen &= j >= i - left
    return seen


def _check_layout(*ts):
    for t in ts:
        assert t.dim() == 4 and t.stride(-1) == 1, "inputs are (B, S, H, D), contiguous last dim"


def _scores(q, k, scale):
    """float32 scores ``(B, H, Sq, Sk)`` from ``(B, S, H, D)`` inputs, kv heads repeated."""
    g = q.shape[2] // k.shape[2]
    qh = q.transpose(1, 2).float()
    kh = k.transpose(1, 2).float().repeat_interleave(g, dim=1)
    return qh @ kh.transpose(-1, -2) * scale


def flash_forward(q, k, v, cum_q, cum_k, max_q, max_k, dropout_p, is_causal, return_debug_mask,
                  *, scale=None, window_size_left=None, window_size_right=None, seqused_k=None,
                  alibi_slopes=None, block_table=None, num_splits=None):
    _check_layout(q, k, v)
    assert cum_q is None and cum_k is None and dropout_p == 0.0
    assert q.dtype in (torch.float16, torch.bfloat16) and k.dtype == v.dtype == q.dtype
    d = q.shape[-1]
    assert d % 8 == 0 and d <= 256 and k.shape[-1] == v.shape[-1] == d, "one head dim, x8"
    assert q.shape[2] % k.shape[2] == 0
    s = _flash_scores(q, k, scale, is_causal, window_size_left, window_size_right)
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Sq); -inf where a row sees none
    empty = torch.isneginf(lse)
    p = torch.exp(s - lse.masked_fill(empty, 0.0)[..., None])
    g = q.shape[2] // k.shape[2]
    out = p @ v.transpose(1, 2).float().repeat_interleave(g, dim=1)  # (B, H, Sq, D)
    lse = lse.masked_fill(empty, float("inf"))
    rng = torch.zeros(2, dtype=torch.uint64)
    return (out.transpose(1, 2).to(q.dtype).contiguous(), lse, rng,
            torch.zeros((), dtype=torch.uint64), torch.empty(0, dtype=q.dtype))


def _flash_scores(q, k, scale, is_causal, window_size_left, window_size_right):
    """Scores ``(B, H, Sq, Sk)`` with -inf where FlashAttention's window (or causal, which
    closes the right side) hides a key; a side of None or >= Sk is unbounded."""
    sq, sk = q.shape[1], k.shape[1]
    left = -1 if window_size_left is None or window_size_left >= sk else window_size_left
    right = -1 if window_size_right is None or window_size_right >= sk else window_size_right
    if is_causal:
        right = 0
    return _scores(q, k, scale).masked_fill(~_visible(sq, sk, left, right, q.device),
                                            float("-inf"))


def _backward_core(dout, q, k, v, out, lse, s, scale):
    """dq, dk, dv (float32, (B, S, H, D) layouts) from masked scores ``s`` and the given out,
    lse: ``P = exp(s - lse)``, ``dS = P (dP - rowsum(dO * O))``."""
    g = q.shape[2] // k.shape[2]
    p = torch.exp(s - lse[..., None])  # 0 where s = -inf or lse = +inf
    do = dout.transpose(1, 2).float()  # (B, H, Sq, Dv)
    vv = v.transpose(1, 2).float().repeat_interleave(g, dim=1)
    delta = (do * out.transpose(1, 2).float()).sum(-1, keepdim=True)
    ds = p * (do @ vv.transpose(-1, -2) - delta)
    qh = q.transpose(1, 2).float()
    kh = k.transpose(1, 2).float().repeat_interleave(g, dim=1)
    dq = ds @ kh * scale
    dk = ds.transpose(-1, -2) @ qh * scale
    dv = p.transpose(-1, -2) @ do

    def fold(x):  # (B, Hq, Sk, e) → (B, Sk, Hkv, e)
        b, hq, sk, e = x.shape
        return x.view(b, hq // g, g, sk, e).sum(2).transpose(1, 2)

    return dq.transpose(1, 2), fold(dk), fold(dv), ds


def flash_backward(dout, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, dropout_p, is_causal,
                   rng_state, unused, *, scale=None, window_size_left=None,
                   window_size_right=None):
    _check_layout(dout, q, k, v, out)
    assert lse.dtype == torch.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    s = _flash_scores(q, k, scale, is_causal, window_size_left, window_size_right)
    dq, dk, dv, _ = _backward_core(dout, q, k, v, out, lse, s, scale)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _efficient_masked(q, k, bias, custom_mask_type, scale):
    assert q.shape[2] == k.shape[2], "the memory-efficient kernel has no grouped heads"
    s = _scores(q, k, scale)
    if bias is not None:
        assert bias.dtype == q.dtype and bias.shape == s.shape
        assert all(st % 16 == 0 for st in bias.stride()[:3]), "bias rows 16-element aligned"
        s = s + bias.float()
    sq, sk = q.shape[1], k.shape[1]
    if custom_mask_type == 1:
        s = s.masked_fill(~torch.ones(sq, sk, dtype=torch.bool).tril(), float("-inf"))
    elif custom_mask_type == 2:
        s = s.masked_fill(~_visible(sq, sk, -1, 0, q.device), float("-inf"))
    return s


def efficient_forward(q, k, v, bias, cu_q, cu_k, max_q, max_k, dropout_p, custom_mask_type,
                      compute_log_sumexp=False, *, scale=None, seqlen_k=None, window_size=None):
    _check_layout(q, k, v)
    assert cu_q is None and dropout_p == 0.0 and window_size is None and compute_log_sumexp
    for t in (q, k, v):
        assert t.shape[-1] % 8 == 0
    s = _efficient_masked(q, k, bias, custom_mask_type, scale)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.softmax(s, dim=-1) @ v.transpose(1, 2).float()  # NaN rows where none is seen
    b, h, sq = lse.shape
    padded = torch.full((b, h, -(-sq // 32) * 32), 7.0)  # garbage beyond Sq, as in the kernel
    padded[..., :sq] = lse
    return (out.transpose(1, 2).to(q.dtype).contiguous(), padded, torch.tensor(0),
            torch.tensor(0), sq, k.shape[1])


def efficient_backward(dout, q, k, v, bias, out, cu_q, cu_k, max_q, max_k, lse, dropout_p,
                       seed, offset, custom_mask_type, bias_requires_grad, *, scale=None,
                       num_splits_key=None, window_size=None, shared_storage_dqdkdv=False):
    _check_layout(dout, q, k, v, out)
    sq = q.shape[1]
    assert lse.shape[-1] % 32 == 0 and lse.shape[-1] >= sq
    s = _efficient_masked(q, k, bias, custom_mask_type, scale)
    dq, dk, dv, ds = _backward_core(dout, q, k, v, out, lse[..., :sq], s, scale)
    dbias = ds.to(bias.dtype) if bias is not None and bias_requires_grad else torch.empty(())
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias


@contextlib.contextmanager
def emulated_cuda_ops() -> Iterator[None]:
    """The CUDA backends' ops replaced by the stand-ins above (CPU tensors then work)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fused_cuda, "_FLASH", (flash_forward, flash_backward))
        patch.setattr(fused_cuda, "_EFFICIENT", (efficient_forward, efficient_backward))
        yield
