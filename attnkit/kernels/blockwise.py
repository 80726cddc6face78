"""The blockwise backend: exact attention over tiles of queries and keys, memory linear in length.

Forward: for each tile of queries, visit only the key tiles the causal/window band lets it see;
each tile gives a partial ``(out, lse)`` that ``merge`` folds into the running result (online
softmax). Backward (FlashAttention-2 style): from the saved ``out`` and ``lse`` recompute each
tile's probabilities ``P = exp(S - lse)`` and accumulate ``dQ, dK, dV`` (and ``dBias``) tile by
tile, so neither pass ever holds an ``Sq x Sk`` tensor.

Internally queries are "grouped rows": ``(B, Hkv, Sq*G, D)`` where row ``i*G + g`` is query ``i``
of head ``hkv*G + g``, so grouped-query heads share one key tile in a single matmul.
"""

from __future__ import annotations

import torch

from attnkit.kernels.masks import MaskSpec
from attnkit.kernels.merge import merge

BLOCK_Q = 256  # query positions per tile (rows = BLOCK_Q * G)
BLOCK_K = 512  # keys per tile


def blockwise_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention by tiles. Shapes as in ``attnkit.attention``: q ``(B, Hq, Sq, D)``,
    k ``(B, Hkv, Sk, D)``, v ``(B, Hkv, Sk, Dv)`` → out ``(B, Hq, Sq, Dv)``, lse ``(B, Hq, Sq)``."""
    bias_grad = spec.bias is not None and spec.bias.requires_grad
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad or bias_grad):
        return _BlockwiseFunction.apply(q, k, v, spec.bias, spec, scale)
    return _forward(q, k, v, spec, scale)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grouped(q: torch.Tensor, hkv: int) -> torch.Tensor:
    """``(B, Hq, S, D)`` → ``(B, Hkv, S*G, D)`` grouped rows (a copy only when G > 1)."""
    b, hq, s, d = q.shape
    g = hq // hkv
    if g == 1:
        return q
    return q.view(b, hkv, g, s, d).transpose(2, 3).reshape(b, hkv, s * g, d)


def _ungrouped(x: torch.Tensor, hq: int) -> torch.Tensor:
    """``(B, Hkv, S*G, ...)`` grouped rows → ``(B, Hq, S, ...)``."""
    b, hkv, sg = x.shape[:3]
    g = hq // hkv
    if g == 1:
        return x
    rest = x.shape[3:]
    return x.view(b, hkv, sg // g, g, *rest).transpose(2, 3).reshape(b, hq, sg // g, *rest)


def _tiles(spec: MaskSpec):
    """Yield ``(q0, q1, [(k0, k1, needs_band_mask), ...])`` for every query tile; hidden tiles are absent."""
    for q0 in range(0, spec.sq, BLOCK_Q):
        q1 = min(q0 + BLOCK_Q, spec.sq)
        lo, hi = spec.key_range(q0, q1)
        keys = []
        for k0 in range(lo, hi, BLOCK_K):
            k1 = min(k0 + BLOCK_K, hi)
            keys.append((k0, k1, not spec.band_inside(q0, q1, k0, k1)))
        yield q0, q1, keys


class _TileScores:
    """Scaled, masked scores of one tile, ``(B, Hkv, tq*G, tk)``; masks come from a small cache."""

    def __init__(self, spec: MaskSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.band_cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def __call__(self, qt, kt, q0, q1, k0, k1, band: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        spec = self.spec
        s = torch.matmul(qt, kt.transpose(-1, -2))  # (B, Hkv, tq*G, tk), q already scaled
        b, h, rows, cols = s.shape
        s5 = s.view(b, h, q1 - q0, spec.groups, cols)
        bias = spec.tile_bias(slice(q0, q1), slice(k0, k1))
        if bias is not None:
            s5.add_(bias)
        visible = None
        if band:
            # the band depends only on the tile's shape and its distance from the diagonal
            key = (q1 - q0, k1 - k0, k0 - q0)
            visible = self.band_cache.get(key)
            if visible is None:
                rows_i = torch.arange(q0, q1, device=self.device)
                cols_i = torch.arange(k0, k1, device=self.device)
                visible = spec.band(rows_i, cols_i)[:, None, :]  # (tq, 1, tk)
                self.band_cache[key] = visible
        if spec.mask is not None:
            user = spec.grouped(spec.mask, slice(q0, q1), slice(k0, k1))
            visible = user if visible is None else visible & user
        if visible is not None:
            s5.masked_fill_(~visible, float("-inf"))
        return s, visible


def _prepare(q, k, v, spec: MaskSpec, scale: float):
    work = _work_dtype(q.dtype)
    qg = _grouped(q.to(work) * scale, spec.hkv).contiguous()  # (B, Hkv, Sq*G, D), scaled
    kw = k.to(work).contiguous()  # (B, Hkv, Sk, D)
    vw = v.to(work).contiguous()  # (B, Hkv, Sk, Dv)
    return qg, kw, vw


def _forward(q, k, v, spec: MaskSpec, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    qg, kw, vw = _prepare(q, k, v, spec, scale)
    b, hkv, _, _ = qg.shape
    g, dv = spec.groups, v.shape[-1]
    out = qg.new_zeros(b, hkv, spec.sq * g, dv)
    lse = qg.new_full((b, hkv, spec.sq * g), float("-inf"))
    scores = _TileScores(spec, q.device)
    for q0, q1, keys in _tiles(spec):
        qt = qg[:, :, q0 * g : q1 * g]  # (B, Hkv, tq*G, D)
        acc, acc_lse = out[:, :, q0 * g : q1 * g], lse[:, :, q0 * g : q1 * g]
        for k0, k1, band in keys:
            s, _ = scores(qt, kw[:, :, k0:k1], q0, q1, k0, k1, band)
            m = s.amax(dim=-1, keepdim=True)  # (.., rows, 1)
            m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # rows seeing nothing here
            p = s.sub_(m).exp_()  # unnormalized probabilities, in place of the scores
            total = p.sum(dim=-1, keepdim=True)
            o = torch.matmul(p, vw[:, :, k0:k1]) / total.clamp_min(torch.finfo(p.dtype).tiny)
            tile_lse = (m + total.log()).squeeze(-1)  # -inf where the tile hid every key
            acc, acc_lse = merge(acc, acc_lse, o, tile_lse)
        out[:, :, q0 * g : q1 * g] = acc
        lse[:, :, q0 * g : q1 * g] = acc_lse
    return _ungrouped(out, spec.hq).to(q.dtype), _ungrouped(lse, spec.hq).to(
        torch.float64 if q.dtype == torch.float64 else torch.float32
    )


def _backward(q, k, v, out, lse, dout, spec: MaskSpec, scale: float, bias_grad: bool):
    qg, kw, vw = _prepare(q, k, v, spec, scale)
    work, g = qg.dtype, spec.groups
    og = _grouped(out.to(work), spec.hkv)  # (B, Hkv, Sq*G, Dv)
    dog = _grouped(dout.to(work), spec.hkv).contiguous()
    lseg = _grouped(lse.to(work).unsqueeze(-1), spec.hkv)  # (B, Hkv, Sq*G, 1)
    # rows that saw no key have P = 0: subtracting +inf makes exp() give exactly that
    lseg = torch.where(torch.isneginf(lseg), torch.full_like(lseg, float("inf")), lseg)
    delta = (dog * og).sum(dim=-1, keepdim=True)  # (B, Hkv, Sq*G, 1) = rowsum(dO * O)

    dq = torch.zeros_like(qg)
    dk = torch.zeros_like(kw)
    dv = torch.zeros_like(vw)
    dbias = torch.zeros(spec.bias.shape, dtype=work, device=q.device) if bias_grad else None
    scores = _TileScores(spec, q.device)
    for q0, q1, keys in _tiles(spec):
        rows = slice(q0 * g, q1 * g)
        qt, dot, lt, dt = qg[:, :, rows], dog[:, :, rows], lseg[:, :, rows], delta[:, :, rows]
        for k0, k1, band in keys:
            kt, vt = kw[:, :, k0:k1], vw[:, :, k0:k1]
            s, _ = scores(qt, kt, q0, q1, k0, k1, band)
            p = s.sub_(lt).exp_()  # (B, Hkv, rows, tk) exact probabilities
            dv[:, :, k0:k1] += torch.matmul(p.transpose(-1, -2), dot)
            dp = torch.matmul(dot, vt.transpose(-1, -2))  # (B, Hkv, rows, tk)
            ds = dp.sub_(dt).mul_(p)  # dS = P * (dP - delta)
            dq[:, :, rows] += torch.matmul(ds, kt)
            dk[:, :, k0:k1] += torch.matmul(ds.transpose(-1, -2), qt)  # qt carries the scale
            if dbias is not None:
                _add_bias_grad(dbias, ds, spec, q0, q1, k0, k1)
    dq = _ungrouped(dq * scale, spec.hq)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias


def _add_bias_grad(dbias, ds, spec: MaskSpec, q0, q1, k0, k1):
    """Add a tile's ``dS (B, Hkv, tq*G, tk)`` into ``dbias (B|1, Hq|1, Sq|1, Sk|1)``."""
    b, h, _, tk = ds.shape
    ds5 = ds.view(b, h, q1 - q0, spec.groups, tk)  # (B, Hkv, tq, G, tk)
    target = spec.grouped(dbias, slice(q0, q1), slice(k0, k1))  # a view into dbias
    sums = [d for d in range(5) if target.shape[d] == 1 and ds5.shape[d] != 1]
    target += ds5.sum(dim=sums, keepdim=True) if sums else ds5


class _BlockwiseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, spec: MaskSpec, scale: float):
        out, lse = _forward(q, k, v, spec, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.spec, ctx.scale = spec, scale
        ctx.bias_grad = bias is not None and ctx.needs_input_grad[3]
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv, dbias = _backward(q, k, v, out, lse, dout, ctx.spec, ctx.scale, ctx.bias_grad)
        if dbias is not None:
            dbias = dbias.to(ctx.spec.bias.dtype)
        return dq, dk, dv, dbias, None, None
