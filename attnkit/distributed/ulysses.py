"""Ulysses (DeepSpeed-Ulysses) attention: an all-to-all turns "every rank has all heads of part of
the sequence" into "every rank has the whole sequence for H / W of the heads"; each rank runs
ordinary attention on its heads, and a second all-to-all turns the result back.

Needs the query heads to be a multiple of W. Grouped key/value heads that do not divide by W are
repeated just enough (to ``lcm(Hkv, W)`` heads) so each rank gets the key heads its query heads
read.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from attnkit.distributed.comm import failing
from attnkit.distributed.groups import Group
from attnkit.distributed.layouts import chunks, gather_whole
from attnkit.distributed.plan import Band
from attnkit.distributed.tiles import Local
from attnkit.kernels.api import attention

__all__ = ["ulysses_attention"]


def _order(layout: str, size: int, n_local: int, device) -> torch.Tensor:
    """``(N,)``: for each global position, its index in the rank-major concatenation of shards."""
    index = torch.empty(size * n_local, dtype=torch.long)
    for rank in range(size):
        for g0, g1, l0 in chunks(layout, rank, size, n_local):
            index[g0:g1] = torch.arange(rank * n_local + l0, rank * n_local + l0 + g1 - g0)
    return index.to(device)


def _all_to_all(x: torch.Tensor, group: Group, what: str) -> torch.Tensor:
    """``x (W, ...)``: piece ``w`` goes to rank ``w``; returns the pieces received, ``(W, ...)``."""
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        with failing(group, what):
            dist.all_to_all_single(out, x, group=group.pg)
    return out


def _seq_to_heads(x: torch.Tensor, group: Group, layout: str) -> torch.Tensor:
    """``(B, H, n, D)`` (all heads, this rank's positions) → ``(B, H/W, N, D)`` (this rank's heads,
    every position, global order)."""
    b, h, n, d = x.shape
    w = group.size
    send = x.reshape(b, w, h // w, n, d).transpose(0, 1)  # (W, B, H/W, n, D): head group w → rank w
    got = _all_to_all(send, group, "moving the sequence to head shards")  # (W, B, H/W, n, D)
    rank_major = got.permute(1, 2, 0, 3, 4).reshape(b, h // w, w * n, d)
    return rank_major.index_select(2, _order(layout, w, n, x.device))


def _heads_to_seq(y: torch.Tensor, group: Group, layout: str) -> torch.Tensor:
    """The inverse: ``(B, H/W, N, D)`` → ``(B, H, n, D)``."""
    b, hw, big_n, d = y.shape
    w = group.size
    n = big_n // w
    order = _order(layout, w, n, y.device)
    rank_major = torch.empty_like(y).index_copy_(2, order, y)  # undo the global ordering
    send = rank_major.view(b, hw, w, n, d).permute(2, 0, 1, 3, 4)  # (W, B, H/W, n, D)
    got = _all_to_all(send, group, "moving head shards back to the sequence")
    return got.transpose(0, 1).reshape(b, w * hw, n, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group: Group, layout: str):
        ctx.group, ctx.layout = group, layout
        return _seq_to_heads(x, group, layout)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_seq(grad, ctx.group, ctx.layout), None, None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, group: Group, layout: str):
        ctx.group, ctx.layout = group, layout
        return _heads_to_seq(y, group, layout)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_heads(grad, ctx.group, ctx.layout), None, None


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      key_mask: torch.Tensor | None, band: Band, layout: str, group: Group,
                      local: Local) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Sq, Dv)``, ``lse (B, Hq, Sq)`` of this rank's queries over all keys, computed
    head-parallel. Requires ``Hq % W == 0`` (checked before any transfer)."""
    w = group.size
    hkv = k.shape[1]
    if hkv % w:
        # each rank needs the key heads its query heads read: lcm(Hkv, W) divides Hq
        repeat = math.lcm(hkv, w) // hkv
        k = k.repeat_interleave(repeat, dim=1)  # (B, Hkv * repeat, Sk, D)
        v = v.repeat_interleave(repeat, dim=1)
    qh = _SeqToHeads.apply(q, group, layout)  # (B, Hq/W, Nq, D)
    kh = _SeqToHeads.apply(k, group, layout)  # (B, Hkv'/W, Nk, D)
    vh = _SeqToHeads.apply(v, group, layout)  # (B, Hkv'/W, Nk, Dv)
    mask = None
    if key_mask is not None:
        mask = gather_whole(key_mask, group, layout, 1, "the key masks")[:, None, None, :]
    causal = band.right == 0 and band.left is None
    window = None if causal or (band.left is None and band.right is None) else (band.left,
                                                                                band.right)
    # the whole sequence, H/W heads
    out, lse = attention(qh, kh, vh, causal=causal, window=window, mask=mask, scale=local.scale,
                         softcap=local.softcap, return_lse=True, backend=local.backend)
    out = _HeadsToSeq.apply(out, group, layout)  # (B, Hq, Sq, Dv)
    lse = _HeadsToSeq.apply(lse.unsqueeze(-1), group, layout).squeeze(-1)  # (B, Hq, Sq)
    return out, lse
