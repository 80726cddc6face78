"""The blockwise backend: exact attention over tiles of queries and keys, memory linear in length.

Forward (FlashAttention-2's online softmax, in base 2): each tile of queries visits only the key
tiles the causal/window band lets it see — only the narrow tiles along the band's edges are
masked — keeping a running max, a running sum and an unnormalized output.
When there are too few query tiles to keep every core busy (decoding), the key tiles of a query
tile are split between workers and their partial results are combined.
Backward: from the saved float32 ``out`` and each row's max ``m`` and sum ``l`` (not the rounded
lse: at ``|lse| ~ 1e4`` a float32 lse is off by ~1e-3, and so would every ``P`` be) recompute
each tile's probabilities ``P = exp2(S - m) / l`` and accumulate ``dQ, dK, dV`` (and ``dBias``)
tile by tile; neither pass ever holds an ``Sq x Sk`` tensor. The lse is differentiable too.

Soft-capping (``softcap``) is applied to each tile's scores as they are made (the backward keeps
the tile's ``1 - tanh**2`` for the chain rule); sinks join each row's max and sum once, after the
last key tile (their gradient is a row-vector sum in the backward); dropout regenerates each
tile's mask from its seed (``kernels.dropout``) in both passes. Options left at their defaults
add no work to any tile.

Internally queries are "grouped rows": ``(B, Hkv, Sq*G, D)`` where row ``i*G + g`` is query ``i``
of head ``hkv*G + g``, so grouped-query heads share one key tile in a single matmul.
Work is spread over ``torch.get_num_threads()`` Python threads, each running single-threaded
torch ops on its own tiles (no barrier after every small op, tiles stay in the core's cache).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from attnkit.kernels import dropout
from attnkit.kernels.compiled import Split
from attnkit.kernels.masks import MaskSpec
from attnkit.kernels.reference import reference_attention
from attnkit.runtime import torch_threads, work_dtype

BLOCK_Q = 128  # query positions per tile (rows = BLOCK_Q * G)
BLOCK_K = 768  # keys per tile
MIN_PARALLEL_WORK = 1 << 22  # score entries below which one thread does everything
TILE_BUDGET = 1 << 19  # score entries per tile (2 MB in float32) when the batch can be cut
WORKERS: int | None = None  # worker threads for a large call; None: torch.get_num_threads()
LOG2E = 1.0 / math.log(2.0)  # scores are kept in base 2: exp2 is ~1.7x faster than exp on CPUs
LN2 = math.log(2.0)


def blockwise_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention by tiles. Shapes as in ``attnkit.attention``: q ``(B, Hq, Sq, D)``,
    k ``(B, Hkv, Sk, D)``, v ``(B, Hkv, Sk, Dv)`` → out ``(B, Hq, Sq, Dv)``, lse ``(B, Hq, Sq)``
    (both differentiable)."""
    if spec.hq == 0:  # no query heads (G = 0 has no grouped rows): the plain ops give the
        return reference_attention(q, k, v, spec, scale)  # empty results, autograd links and all
    if spec.mask is not None and spec.mask.device.type != "meta" and bool(spec.mask.all()):
        spec = dataclasses.replace(spec, mask=None)  # e.g. a padding mask of an unpadded batch
    bias_grad = spec.bias is not None and spec.bias.requires_grad
    sinks_grad = spec.sinks is not None and spec.sinks.requires_grad
    needs_grad = q.requires_grad or k.requires_grad or v.requires_grad or bias_grad or sinks_grad
    if torch.is_grad_enabled() and needs_grad:
        return _BlockwiseFunction.apply(q, k, v, spec.bias, spec.sinks, spec, scale)
    out, m, l = _forward(q, k, v, spec, scale)
    return _ungrouped(out, spec.hq).to(q.dtype), _lse(m, l, spec.hq)


# ---- layout ------------------------------------------------------------------------------------


def _grouped(x: torch.Tensor, hkv: int) -> torch.Tensor:
    """``(B, Hq, S, ...)`` → ``(B, Hkv, S*G, ...)`` grouped rows (a copy only when G > 1)."""
    b, hq, s = x.shape[:3]
    g = hq // hkv
    if g == 1:
        return x
    rest = x.shape[3:]
    return x.view(b, hkv, g, s, *rest).transpose(2, 3).reshape(b, hkv, s * g, *rest)


def _ungrouped(x: torch.Tensor, hq: int) -> torch.Tensor:
    """``(B, Hkv, S*G, ...)`` grouped rows → ``(B, Hq, S, ...)``."""
    b, hkv, sg = x.shape[:3]
    g = hq // hkv
    if g == 1:
        return x
    rest = x.shape[3:]
    return x.view(b, hkv, sg // g, g, *rest).transpose(2, 3).reshape(b, hq, sg // g, *rest)


def _prepare(q, k, v, spec: MaskSpec):
    """Inputs in the work dtype (float32; float64 stays): q as grouped rows ``(B, Hkv, Sq*G, D)``.
    No copies for float32 inputs without groups: memory stays linear and small."""
    work = work_dtype(q.dtype)
    return _grouped(q.to(work), spec.hkv), k.to(work), v.to(work)


def _q_factor(spec: MaskSpec, scale: float) -> float:
    """What q is multiplied by before its dot products: ``scale * log2(e)`` (scores in base 2),
    or ``scale / softcap``, whose products go through ``tanh`` and then ``softcap * log2(e)``."""
    return scale * LOG2E if spec.softcap is None else scale / spec.softcap


def _dropout_keys(spec: MaskSpec, batch: int, device: torch.device):
    """``(row keys (B, Hkv, Sq*G, 1), key keys (Sk,))`` of the call's dropout mask in grouped
    rows, or None without dropout."""
    if spec.dropout_p == 0:
        return None
    rows = dropout.row_keys(spec.dropout_seed, batch, spec.hq, spec.sq, device)  # (B, Hq, Sq)
    return _grouped(rows.unsqueeze(-1), spec.hkv), dropout.key_keys(spec.dropout_seed, spec.sk,
                                                                     device)


def _sink_rows(spec: MaskSpec, work: torch.dtype) -> torch.Tensor:
    """``(1, Hkv, Sq*G, 1)``: each grouped row's sink logit in base 2."""
    g = spec.groups
    sinks = spec.sinks.detach().to(work).view(1, spec.hkv, 1, g) * LOG2E
    return sinks.expand(1, spec.hkv, spec.sq, g).reshape(1, spec.hkv, spec.sq * g, 1)


# ---- which tiles, on which thread ----------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One unit of work: batches ``[b0, b1)``, queries ``[q0, q1)``, and the key tiles to visit
    as ``(k0, k1, needs_band_mask)``."""

    b0: int
    b1: int
    q0: int
    q1: int
    keys: tuple[tuple[int, int, bool], ...]


def _plan(spec: MaskSpec, batch: int, workers: int, split_keys: bool) -> list[_Item]:
    """The tiles the band leaves visible, cut into at least ``workers`` items when possible:
    by query tile, then by batch, then (``split_keys``) by splitting one query tile's keys."""
    query_tiles = []
    for q0 in range(0, spec.sq, BLOCK_Q):
        q1 = min(q0 + BLOCK_Q, spec.sq)
        query_tiles.append((q0, q1, _key_tiles(spec, q0, q1)))
    batch_parts = min(batch, workers) if len(query_tiles) < 2 * workers else 1
    # many short sequences: cut the batch too, so one tile of scores stays cache-sized
    tile = batch * spec.hkv * min(spec.sq, BLOCK_Q) * spec.groups * min(spec.sk, BLOCK_K)
    batch_parts = min(batch, max(batch_parts, -(-tile // TILE_BUDGET)))
    short = split_keys and len(query_tiles) * batch_parts < workers
    items = []
    for part in range(batch_parts):
        b0, b1 = batch * part // batch_parts, batch * (part + 1) // batch_parts
        for q0, q1, keys in query_tiles:
            pieces = max(1, min(workers, len(keys))) if short else 1
            for i in range(pieces):
                chunk = keys[len(keys) * i // pieces : len(keys) * (i + 1) // pieces]
                items.append(_Item(b0, b1, q0, q1, chunk))
    # largest first, so the threads finish together
    return sorted(items, key=lambda it: -sum(k1 - k0 for k0, k1, _ in it.keys) * (it.q1 - it.q0))


def _key_tiles(spec: MaskSpec, q0: int, q1: int) -> tuple[tuple[int, int, bool], ...]:
    """Key tiles ``(k0, k1, needs_band_mask)`` of queries ``[q0, q1)``: the visible range is cut
    where the band starts to hide keys, so only the narrow tiles along its edges are masked."""
    lo, hi = spec.key_range(q0, q1)
    inner_lo, inner_hi = spec.inner_range(q0, q1)  # keys every query of the tile sees
    tiles = []
    for start, stop, band in ((lo, inner_lo, True), (inner_lo, inner_hi, False),
                              (inner_hi, hi, True)):
        tiles += [(k0, min(k0 + BLOCK_K, stop), band) for k0 in range(start, stop, BLOCK_K)]
    return tuple(tiles)


def _workers(spec: MaskSpec, batch: int) -> int:
    threads = WORKERS or torch.get_num_threads()
    work = batch * spec.hq * spec.sq * spec.sk
    return threads if threads > 1 and work >= MIN_PARALLEL_WORK else 1


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shared_pool(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool: fresh threads per call would each bring their own allocator arena
    and BLAS buffers (measured: +140 MiB on a 16k-token call), and cost a start-up every time."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="attnkit-blockwise")
        return _pool


def _run(items: list[_Item], work: Callable[[_Item], object], workers: int
         ) -> Iterator[object]:
    """``work(item)`` for each item in order, on ``workers`` threads when there is more than one,
    yielded as they come: the caller stores each result and drops it before the next, so the
    results of a whole call (as large as its output) are never held all at once beside it."""
    def untracked(item: _Item) -> object:
        with torch.no_grad():  # grad mode is per thread; kernels never build autograd graphs
            return work(item)

    if workers <= 1 or len(items) <= 1:
        yield from map(untracked, items)
        return
    with torch_threads(1):  # torch ops run on one thread each while our workers share the cores
        yield from _shared_pool(workers).map(untracked, items)


# ---- scores of one tile ----------------------------------------------------------------------


class _TileScores:
    """Scaled, masked scores of one tile, ``(b, Hkv, tq*G, tk)``; band masks come from a cache."""

    def __init__(self, spec: MaskSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.band_cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def may_hide_rows(self, band: bool) -> bool:
        """Can some query of this tile see no key of it (so its row max is -inf)?"""
        return band or self.spec.mask is not None or self.spec.bias is not None

    def __call__(self, qt: torch.Tensor, kt: torch.Tensor, item: _Item, k0: int, k1: int,
                 band: bool, slope: torch.Tensor | None = None) -> torch.Tensor:
        """The tile's base-2 scores; with softcap, ``slope`` (same shape) receives
        ``1 - tanh**2``, the derivative of each capped score by its uncapped one."""
        spec = self.spec
        b, h, rows, d = qt.shape
        cols = kt.shape[-2]
        s = _scratch("scores", (b, h, rows, cols), qt)  # (b, Hkv, tq*G, tk)
        # every size spelled out: with D = 0 (scores all 0) a -1 would be ambiguous
        torch.bmm(qt.reshape(b * h, rows, d), kt.reshape(b * h, cols, d).transpose(1, 2),
                  out=s.view(b * h, rows, cols))
        # (q carries _q_factor: scale * log2(e), or scale / softcap)
        if spec.softcap is not None:  # before bias and masks, as Gemma 2 caps
            s.tanh_()
            if slope is not None:
                torch.mul(s, s, out=slope).neg_().add_(1.0)
            s.mul_(spec.softcap * LOG2E)
        s5 = s.view(b, h, item.q1 - item.q0, spec.groups, cols)  # (b, Hkv, tq, G, tk)
        rows, keys = slice(item.q0, item.q1), slice(k0, k1)
        if spec.bias is not None:
            s5.add_(_batch(spec.grouped(spec.bias, rows, keys), item), alpha=LOG2E)
        hidden = None
        if band:
            # the band depends only on the tile's shape and its distance from the diagonal
            key = (item.q1 - item.q0, k1 - k0, k0 - item.q0)
            hidden = self.band_cache.get(key)
            if hidden is None:
                seen = spec.band(torch.arange(item.q0, item.q1, device=self.device),
                                 torch.arange(k0, k1, device=self.device))
                hidden = self.band_cache.setdefault(key, ~seen[:, None, :])  # (tq, 1, tk)
        if spec.mask is not None:
            user_hidden = ~_batch(spec.grouped(spec.mask, rows, keys), item)
            hidden = user_hidden if hidden is None else hidden | user_hidden
        if hidden is not None:
            s5.masked_fill_(hidden, float("-inf"))
        return s


_scratch_space = threading.local()


def _scratch(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A per-thread buffer reused for every tile: allocating a fresh tile each time fragments
    the allocator (measured: +170 MiB retained per 16k-token call on two threads)."""
    n = math.prod(shape)
    buffers = _scratch_space.__dict__.setdefault("buffers", {})
    buf = buffers.get(name)
    if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
        buf = buffers[name] = torch.empty(n, dtype=like.dtype, device=like.device)
    return buf[:n].view(shape)


def _batch(t: torch.Tensor, item: _Item) -> torch.Tensor:
    return t if t.shape[0] == 1 else t[item.b0 : item.b1]


# ---- forward --------------------------------------------------------------------------------


def _forward(q, k, v, spec: MaskSpec, scale: float):
    """``(out, m, l)`` in grouped rows and the work dtype: out ``(B, Hkv, Sq*G, Dv)``, and per row
    the max ``m`` of the base-2 scores and ``l = sum(exp2(s - m))``, both ``(B, Hkv, Sq*G, 1)``;
    a row that sees no key has out 0, ``m = -inf`` and ``l = 0``."""
    qg, kw, vw = _prepare(q, k, v, spec)
    b, hkv, _, _ = qg.shape
    g, dv = spec.groups, v.shape[-1]
    scores = _TileScores(spec, q.device)
    q_factor = _q_factor(spec, scale)
    drop = _dropout_keys(spec, b, q.device)

    def attend_tile(item: _Item) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = slice(item.q0 * g, item.q1 * g)
        qt = qg[item.b0 : item.b1, :, rows] * q_factor  # (b, Hkv, tq*G, D)
        # online softmax in base 2: running max m, running sum l, unnormalized output acc
        m_run = l_run = acc = None
        for k0, k1, band in item.keys:
            s = scores(qt, kw[item.b0 : item.b1, :, k0:k1], item, k0, k1, band)
            m_new = s.amax(dim=-1, keepdim=True)  # (b, Hkv, tq*G, 1)
            if m_run is not None:
                m_new = torch.maximum(m_run, m_new)
            base = m_new
            if scores.may_hide_rows(band):
                # a row that has seen no key yet keeps m = -inf (a later tile's scores may all be
                # far below 0); only inside the exponentials does 0 stand in, keeping exp2() at 0
                base = m_new.masked_fill(torch.isneginf(m_new), 0.0)
            p = s.sub_(base).exp2_()  # (b, Hkv, tq*G, tk) unnormalized probabilities
            vt = vw[item.b0 : item.b1, :, k0:k1]
            l_tile = p.sum(dim=-1, keepdim=True)  # the softmax's sum is taken before dropout
            if drop is not None:
                p.masked_fill_(dropout.dropped(drop[0][item.b0 : item.b1, :, rows],
                                               drop[1][k0:k1], spec.dropout_p), 0.0)
            if m_run is None:
                l_run, acc = l_tile, torch.matmul(p, vt)
            else:
                alpha = (m_run - base).exp2_()  # rescales what earlier tiles summed (0 if none)
                l_run = torch.addcmul(l_tile, l_run, alpha)
                acc.mul_(alpha)
                bh = acc.shape[0] * acc.shape[1]  # (no -1: Dv may be 0)
                acc.view(bh, *acc.shape[2:]).baddbmm_(p.view(bh, *p.shape[2:]),
                                                      vt.reshape(bh, k1 - k0, dv))
            m_run = m_new
        if m_run is None:  # the band hides every key from these queries
            rows = qt.shape[:-1]  # (b, Hkv, tq*G)
            return (qt.new_zeros(*rows, dv), qt.new_full((*rows, 1), float("-inf")),
                    qt.new_zeros(*rows, 1))
        # l >= 1 wherever a key was seen (its max term is exp2(0)); 0 where none was
        return acc.div_(torch.where(l_run > 0, l_run, torch.ones_like(l_run))), m_run, l_run

    workers = _workers(spec, b)
    items = _plan(spec, b, workers, split_keys=True)
    out = qg.new_empty(b, hkv, spec.sq * g, dv)
    m, l = qg.new_empty(b, hkv, spec.sq * g, 1), qg.new_empty(b, hkv, spec.sq * g, 1)
    written: set[tuple[int, int]] = set()
    for item, part in zip(items, _run(items, attend_tile, workers)):
        where = (slice(item.b0, item.b1), slice(None), slice(item.q0 * g, item.q1 * g))
        if (item.b0, item.q0) in written:  # another piece of these queries' keys
            part = _combine((out[where], m[where], l[where]), part)
        written.add((item.b0, item.q0))
        out[where], m[where], l[where] = part
    if drop is not None:
        out.mul_(dropout.keep_scale(spec.dropout_p))
    if spec.sinks is not None:
        out, m, l = _with_sinks(out, m, l, _sink_rows(spec, out.dtype))
    return out, m, l


def _with_sinks(out, m, l, sink):
    """``(out, m, l)`` with each row's sink logit ``sink`` (base 2, broadcast to m) joined to its
    max and sum: the keys' share of the sum scales ``out``. A row that saw no key keeps out 0,
    and gets ``m = sink, l = 1``."""
    m_new = torch.maximum(m, sink)  # (B, Hkv, Sq*G, 1)
    base = m_new.masked_fill(torch.isneginf(m_new), 0.0)  # a sink of -inf: as without sinks
    keys = (m - base).exp2_().mul_(l)  # the keys' part of the new sum (0 where none was seen)
    l_new = keys + (sink - base).exp2_()
    out = out * (keys / torch.where(l_new > 0, l_new, torch.ones_like(l_new)))
    return out, m_new, l_new


def _combine(first, second):
    """Two ``(out, m, l)`` results over disjoint keys of the same rows → the one over both."""
    (o1, m1, l1), (o2, m2, l2) = first, second
    m = torch.maximum(m1, m2)  # (b, Hkv, rows, 1)
    base = m.masked_fill(torch.isneginf(m), 0.0)
    w1, w2 = (m1 - base).exp2_().mul_(l1), (m2 - base).exp2_().mul_(l2)  # each side's share of l
    l = w1 + w2
    out = (w1 * o1 + w2 * o2) / torch.where(l > 0, l, torch.ones_like(l))
    return out, m, l


def _lse(m: torch.Tensor, l: torch.Tensor, hq: int) -> torch.Tensor:
    """The public natural-log lse ``(B, Hq, Sq)`` (float32; float64 for float64) from grouped
    ``m, l (B, Hkv, Sq*G, 1)``: summed in float64, so the only error is the final rounding."""
    lse = (m.double() + l.double().log2()).mul_(LN2)  # m = -inf, l = 0 give -inf
    return _ungrouped(lse.squeeze(-1), hq).to(m.dtype)


# ---- backward -------------------------------------------------------------------------------


def _backward(q, k, v, out, m, l, dout, dlse, spec: MaskSpec, scale: float, bias_grad: bool,
              sinks_grad: bool = False):
    """Gradients from the saved grouped float32 ``out (B, Hkv, Sq*G, Dv)`` and ``m, l
    (B, Hkv, Sq*G, 1)``, and the incoming ``dout (B, Hq, Sq, Dv)``, ``dlse (B, Hq, Sq)``.

    With ``P = exp2(S - m) / l`` and ``delta = rowsum(dO * O)``, the score gradient is
    ``dS = P * (dP - delta + dlse)`` (``dlse``: the lse's own gradient, ``d lse / dS = P``).
    The ``1 / l`` of ``P`` is folded into the row vectors ``dO / l`` and ``(delta - dlse) / l``,
    so each tile costs what it did without it. With dropout, ``dP`` is taken through the kept
    cells (the tile's mask regenerated) times ``1 / (1 - p)``, which joins ``dO / l``; with
    softcap the uncapped scores get ``dS * (1 - tanh**2)`` (the bias still gets ``dS``); a sink
    ``sigma`` gets ``sum over its rows of P_sigma * (dlse - delta)``.
    """
    qg, kw, vw = _prepare(q, k, v, spec)
    work, g, b = qg.dtype, spec.groups, q.shape[0]
    dog = _grouped(dout.to(work), spec.hkv)  # (B, Hkv, Sq*G, Dv)
    dlseg = _grouped(dlse.to(work).unsqueeze(-1), spec.hkv)  # (B, Hkv, Sq*G, 1)
    # rows that saw no key have P = 0: exp2(-inf - 0) gives exactly that, and 1/l is taken as 0
    base = m.masked_fill(torch.isneginf(m), 0.0)
    inv_l = torch.where(l > 0, 1.0 / l, torch.zeros_like(l))  # (B, Hkv, Sq*G, 1)
    q_factor = _q_factor(spec, scale)
    drop = _dropout_keys(spec, b, q.device)
    # dO / l is taken times what dropout scales the kept probabilities by
    inv_l_dropped = inv_l if drop is None else inv_l * dropout.keep_scale(spec.dropout_p)

    dq = torch.zeros_like(qg)  # each item owns its rows of dQ
    dk, dv = torch.zeros_like(kw), torch.zeros_like(vw)  # shared: tiles add under the lock
    dbias = torch.zeros(spec.bias.shape, dtype=work, device=q.device) if bias_grad else None
    lock = threading.Lock()
    scores = _TileScores(spec, q.device)

    def grads_of_tile(item: _Item) -> None:
        bs, rows = slice(item.b0, item.b1), slice(item.q0 * g, item.q1 * g)
        qt = qg[bs, :, rows] * q_factor  # (b, Hkv, tq*G, D)
        dot, mt, inv_lt = dog[bs, :, rows], base[bs, :, rows], inv_l[bs, :, rows]
        delta = (dot * out[bs, :, rows]).sum(dim=-1, keepdim=True)  # rowsum(dO * O), (.., 1)
        delta_l = (delta - dlseg[bs, :, rows]).mul_(inv_lt)  # (delta - dlse) / l
        dot_l = dot * inv_l_dropped[bs, :, rows]  # (b, Hkv, tq*G, Dv): dO / l (/ (1 - p))
        dq_t = dq[bs, :, rows]
        for k0, k1, band in item.keys:
            kt, vt = kw[bs, :, k0:k1], vw[bs, :, k0:k1]
            slope = None
            if spec.softcap is not None:  # d capped score / d score, (b, Hkv, rows, tk)
                slope = _scratch("slope", (*qt.shape[:3], k1 - k0), qt)
            p = scores(qt, kt, item, k0, k1, band, slope).sub_(mt).exp2_()  # (b, Hkv, rows, tk)
            p_kept = p  # P * l, where dropout kept it
            if drop is not None:
                gone = dropout.dropped(drop[0][bs, :, rows], drop[1][k0:k1], spec.dropout_p)
                p_kept = p.masked_fill(gone, 0.0)
            dv_t = torch.matmul(p_kept.transpose(-1, -2), dot_l)  # (b, Hkv, tk, Dv)
            dp = _scratch("dp", p.shape, p)  # (b, Hkv, rows, tk): dP / l
            bh = p.shape[0] * p.shape[1]  # (no -1: Dv may be 0)
            torch.bmm(dot_l.reshape(bh, *dot_l.shape[2:]),
                      vt.reshape(bh, *vt.shape[2:]).transpose(1, 2), out=dp.view(bh, *dp.shape[2:]))
            if drop is not None:
                dp.masked_fill_(gone, 0.0)
            ds = dp.sub_(delta_l).mul_(p)  # dS = P * (dP - delta + dlse)
            d_uncapped = ds if slope is None else slope.mul_(ds)  # what q . k * scale gets
            dq_t += torch.matmul(d_uncapped, kt)
            dk_t = torch.matmul(d_uncapped.transpose(-1, -2), qt)  # (b, Hkv, tk, D); rescaled below
            with lock:
                dv[bs, :, k0:k1] += dv_t
                dk[bs, :, k0:k1] += dk_t
                if dbias is not None:
                    _add_bias_grad(dbias, ds, spec, item, k0, k1)

    workers = _workers(spec, b)
    for _ in _run(_plan(spec, b, workers, split_keys=False), grads_of_tile, workers):
        pass  # each tile adds its own gradients
    dq = _ungrouped(dq.mul_(scale), spec.hq)
    # qt carried scale * log2(e) (or scale / softcap); dK wants scale alone
    dk.mul_(LN2 if spec.softcap is None else spec.softcap)
    dsinks = _sinks_grad(out, base, inv_l, dog, dlseg, spec) if sinks_grad else None
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias, dsinks


def _sinks_grad(out, base, inv_l, dog, dlseg, spec: MaskSpec) -> torch.Tensor:
    """``(Hq,)``: each sink's gradient, summed over its rows ``P_sigma * (dlse - delta)``, with
    ``P_sigma = exp2(sigma - m) / l`` the sink's share of the row (1 in a row that saw no key)."""
    p_sink = (_sink_rows(spec, out.dtype) - base).exp2_().mul_(inv_l)  # (B, Hkv, Sq*G, 1)
    delta = (dog * out).sum(dim=-1, keepdim=True)  # rowsum(dO * O)
    rows = p_sink.mul_(dlseg - delta)  # (B, Hkv, Sq*G, 1)
    return rows.view(-1, spec.hkv, spec.sq, spec.groups).sum(dim=(0, 2)).reshape(spec.hq)


def _add_bias_grad(dbias, ds, spec: MaskSpec, item: _Item, k0: int, k1: int) -> None:
    """Add a tile's ``dS (b, Hkv, tq*G, tk)`` into ``dbias (B|1, Hq|1, Sq|1, Sk|1)``."""
    b, h, _, tk = ds.shape
    ds5 = ds.view(b, h, item.q1 - item.q0, spec.groups, tk)  # (b, Hkv, tq, G, tk)
    target = _batch(spec.grouped(dbias, slice(item.q0, item.q1), slice(k0, k1)), item)  # a view
    sums = [d for d in range(5) if target.shape[d] == 1 and ds5.shape[d] != 1]
    target += ds5.sum(dim=sums, keepdim=True) if sums else ds5


class _BlockwiseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, sinks, spec: MaskSpec, scale: float):
        out_work, m, l = _forward(q, k, v, spec, scale)
        out = _ungrouped(out_work, spec.hq).to(q.dtype)
        # the backward's rowsum(dO * O) reads the float32 output, not the one rounded to q's dtype
        ctx.save_for_backward(q, k, v, out_work, m, l)
        ctx.spec, ctx.scale = spec, scale
        ctx.bias_grad = bias is not None and ctx.needs_input_grad[3]
        ctx.sinks_grad = sinks is not None and ctx.needs_input_grad[4]
        return out, _lse(m, l, spec.hq)

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out_work, m, l = ctx.saved_tensors
        dq, dk, dv, dbias, dsinks = _backward(q, k, v, out_work, m, l, dout, dlse, ctx.spec,
                                              ctx.scale, ctx.bias_grad, ctx.sinks_grad)
        if dbias is not None:
            dbias = dbias.to(ctx.spec.bias.dtype)
        if dsinks is not None:
            dsinks = dsinks.to(ctx.spec.sinks.dtype)
        return dq, dk, dv, dbias, dsinks, None, None


# ---- forward and backward apart, for the custom op torch.compile sees (compiled.py) ----------


def _out_is_work(q: torch.Tensor, spec: MaskSpec) -> bool:
    """Is the returned ``out`` the grouped work-dtype output itself (no copy made)?"""
    return work_dtype(q.dtype) == q.dtype and spec.groups == 1


def _split_forward(q, k, v, spec: MaskSpec, scale: float, needs_grad: bool):
    """``(out, lse, residuals)``: the row max and sum, and the grouped work-dtype output when it
    is not ``out`` itself."""
    if spec.hq == 0 or not needs_grad:
        out, lse = blockwise_attention(q, k, v, spec, scale)
        return out, lse, []
    if spec.mask is not None and bool(spec.mask.all()):
        spec = dataclasses.replace(spec, mask=None)
    out_work, m, l = _forward(q, k, v, spec, scale)
    out = _ungrouped(out_work, spec.hq).to(q.dtype)
    residuals = [m, l] if _out_is_work(q, spec) else [out_work, m, l]
    return out, _lse(m, l, spec.hq), residuals


def _split_backward(q, k, v, spec: MaskSpec, scale: float, out, lse, residuals, dout, dlse,
                    bias_grad: bool, sinks_grad: bool):
    if spec.hq == 0 or not residuals:
        zero = [torch.zeros_like(t) for t in (q, k, v)]
        return (*zero, torch.zeros_like(spec.bias) if bias_grad else None,
                torch.zeros_like(spec.sinks) if sinks_grad else None)
    out_work, m, l = residuals if len(residuals) == 3 else (out, *residuals)
    dout = torch.zeros_like(out) if dout is None else dout
    dlse = torch.zeros_like(lse) if dlse is None else dlse
    dq, dk, dv, dbias, dsinks = _backward(q, k, v, out_work, m, l, dout, dlse, spec, scale,
                                          bias_grad, sinks_grad)
    return (dq, dk, dv, None if dbias is None else dbias.to(spec.bias.dtype),
            None if dsinks is None else dsinks.to(spec.sinks.dtype))


def _residuals_like(q, k, v, spec: MaskSpec, needs_grad: bool):
    if spec.hq == 0 or not needs_grad:
        return []
    b, work = q.shape[0], work_dtype(q.dtype)
    rows = (b, spec.hkv, spec.sq * spec.groups)
    stats = [q.new_empty(*rows, 1, dtype=work), q.new_empty(*rows, 1, dtype=work)]
    if _out_is_work(q, spec):
        return stats
    return [q.new_empty(*rows, v.shape[-1], dtype=work), *stats]


SPLIT = Split(_split_forward, _split_backward, _residuals_like)
