"""The blockwise backend: exact attention over tiles of queries and keys, memory linear in length.

Forward (FlashAttention-2's online softmax, in base 2): each tile of queries visits only the key
tiles the causal/window band lets it see — only the narrow tiles along the band's edges are
masked — keeping a running max, a running sum and an unnormalized output.
When there are too few query tiles to keep every core busy (decoding), the key tiles of a query
tile are split between workers and their partial ``(out, lse)`` are combined with ``merge``.
Backward: from the saved ``out`` and ``lse`` recompute each tile's probabilities
``P = exp(S - lse)`` and accumulate ``dQ, dK, dV`` (and ``dBias``) tile by tile; neither pass ever
holds an ``Sq x Sk`` tensor.

Internally queries are "grouped rows": ``(B, Hkv, Sq*G, D)`` where row ``i*G + g`` is query ``i``
of head ``hkv*G + g``, so grouped-query heads share one key tile in a single matmul.
Work is spread over ``torch.get_num_threads()`` Python threads, each running single-threaded
torch ops on its own tiles (no barrier after every small op, tiles stay in the core's cache).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from attnkit.kernels.masks import MaskSpec
from attnkit.kernels.merge import merge

BLOCK_Q = 128  # query positions per tile (rows = BLOCK_Q * G)
BLOCK_K = 768  # keys per tile
MIN_PARALLEL_WORK = 1 << 22  # score entries below which one thread does everything
TILE_BUDGET = 1 << 19  # score entries per tile (2 MB in float32) when the batch can be cut
LOG2E = 1.0 / math.log(2.0)  # scores are kept in base 2: exp2 is ~1.7x faster than exp on CPUs
LN2 = math.log(2.0)


def blockwise_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention by tiles. Shapes as in ``attnkit.attention``: q ``(B, Hq, Sq, D)``,
    k ``(B, Hkv, Sk, D)``, v ``(B, Hkv, Sk, Dv)`` → out ``(B, Hq, Sq, Dv)``, lse ``(B, Hq, Sq)``."""
    if spec.mask is not None and bool(spec.mask.all()):
        spec = dataclasses.replace(spec, mask=None)  # e.g. a padding mask of an unpadded batch
    bias_grad = spec.bias is not None and spec.bias.requires_grad
    needs_grad = q.requires_grad or k.requires_grad or v.requires_grad or bias_grad
    if torch.is_grad_enabled() and needs_grad:
        return _BlockwiseFunction.apply(q, k, v, spec.bias, spec, scale)
    return _forward(q, k, v, spec, scale)


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
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    return _grouped(q.to(work), spec.hkv), k.to(work), v.to(work)


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
    threads = torch.get_num_threads()
    work = batch * spec.hq * spec.sq * spec.sk
    return threads if threads > 1 and work >= MIN_PARALLEL_WORK else 1


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextlib.contextmanager
def _single_threaded_ops() -> Iterator[None]:
    """torch ops run on one thread each while our own worker threads share the cores."""
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


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


def _run(items: list[_Item], work: Callable[[_Item], object], workers: int) -> list[object]:
    """``[work(item) for item in items]``, on ``workers`` threads when there is more than one."""
    def untracked(item: _Item) -> object:
        with torch.no_grad():  # grad mode is per thread; kernels never build autograd graphs
            return work(item)

    if workers <= 1 or len(items) <= 1:
        return [untracked(item) for item in items]
    with _single_threaded_ops():
        return list(_shared_pool(workers).map(untracked, items))


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
                 band: bool) -> torch.Tensor:
        spec = self.spec
        b, h, rows, d = qt.shape
        s = _scratch("scores", (b, h, rows, kt.shape[-2]), qt)  # (b, Hkv, tq*G, tk)
        torch.bmm(qt.reshape(b * h, rows, d), kt.reshape(b * h, -1, d).transpose(1, 2),
                  out=s.view(b * h, rows, -1))
        # (q carries scale * log2(e))
        b, h, _, cols = s.shape
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


def _forward(q, k, v, spec: MaskSpec, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    qg, kw, vw = _prepare(q, k, v, spec)
    b, hkv, _, _ = qg.shape
    g, dv = spec.groups, v.shape[-1]
    scores = _TileScores(spec, q.device)

    def attend_tile(item: _Item) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(item.q0 * g, item.q1 * g)
        qt = qg[item.b0 : item.b1, :, rows] * (scale * LOG2E)  # (b, Hkv, tq*G, D)
        # online softmax in base 2: running max m, running sum l, unnormalized output acc
        m_run = l_run = acc = None
        may_be_empty = False
        for k0, k1, band in item.keys:
            s = scores(qt, kw[item.b0 : item.b1, :, k0:k1], item, k0, k1, band)
            m_new = s.amax(dim=-1, keepdim=True)  # (b, Hkv, tq*G, 1)
            if m_run is not None:
                m_new = torch.maximum(m_run, m_new)
            if scores.may_hide_rows(band):  # a row that has seen no key yet keeps exp() at 0
                may_be_empty = True
                m_new = m_new.masked_fill(torch.isneginf(m_new), 0.0)
            p = s.sub_(m_new).exp2_()  # (b, Hkv, tq*G, tk) unnormalized probabilities
            vt = vw[item.b0 : item.b1, :, k0:k1]
            if m_run is None:
                l_run, acc = p.sum(dim=-1, keepdim=True), torch.matmul(p, vt)
            else:
                alpha = (m_run - m_new).exp2_()  # rescales what earlier tiles summed
                l_run = torch.addcmul(p.sum(dim=-1, keepdim=True), l_run, alpha)
                acc.mul_(alpha)
                acc.view(-1, *acc.shape[2:]).baddbmm_(p.view(-1, *p.shape[2:]),
                                                      vt.reshape(-1, k1 - k0, dv))
            m_run = m_new
        if m_run is None:  # the band hides every key from these queries
            rows = qt.shape[:-1]
            return qt.new_zeros(*rows, dv), qt.new_full(rows, float("-inf"))
        if not may_be_empty:
            return acc.div_(l_run), (m_run + l_run.log2()).mul_(LN2).squeeze(-1)
        seen = l_run > 0
        out = acc.div_(torch.where(seen, l_run, torch.ones_like(l_run)))
        lse = torch.where(seen, (m_run + l_run.log2()).mul_(LN2),
                          torch.full_like(l_run, float("-inf")))
        return out, lse.squeeze(-1)

    workers = _workers(spec, b)
    items = _plan(spec, b, workers, split_keys=True)
    out = qg.new_empty(b, hkv, spec.sq * g, dv)
    lse = qg.new_empty(b, hkv, spec.sq * g)
    written: set[tuple[int, int]] = set()
    for item, (o, l) in zip(items, _run(items, attend_tile, workers)):
        where = (slice(item.b0, item.b1), slice(None), slice(item.q0 * g, item.q1 * g))
        if (item.b0, item.q0) in written:  # another piece of these queries' keys
            o, l = merge(out[where], lse[where], o, l)
        written.add((item.b0, item.q0))
        out[where], lse[where] = o, l
    return _ungrouped(out, spec.hq).to(q.dtype), _ungrouped(lse, spec.hq).to(
        torch.float64 if q.dtype == torch.float64 else torch.float32
    )


# ---- backward -------------------------------------------------------------------------------


def _backward(q, k, v, out, lse, dout, spec: MaskSpec, scale: float, bias_grad: bool):
    qg, kw, vw = _prepare(q, k, v, spec)
    work, g, b = qg.dtype, spec.groups, q.shape[0]
    og = _grouped(out.to(work), spec.hkv)  # (B, Hkv, Sq*G, Dv)
    dog = _grouped(dout.to(work), spec.hkv)
    lseg = _grouped(lse.to(work).unsqueeze(-1) * LOG2E, spec.hkv)  # (B, Hkv, Sq*G, 1), base 2
    # rows that saw no key have P = 0: subtracting +inf makes exp() give exactly that
    lseg = torch.where(torch.isneginf(lseg), torch.full_like(lseg, float("inf")), lseg)

    dq = torch.zeros_like(qg)  # each item owns its rows of dQ
    dk, dv = torch.zeros_like(kw), torch.zeros_like(vw)  # shared: tiles add under the lock
    dbias = torch.zeros(spec.bias.shape, dtype=work, device=q.device) if bias_grad else None
    lock = threading.Lock()
    scores = _TileScores(spec, q.device)

    def grads_of_tile(item: _Item) -> None:
        bs, rows = slice(item.b0, item.b1), slice(item.q0 * g, item.q1 * g)
        qt = qg[bs, :, rows] * (scale * LOG2E)  # (b, Hkv, tq*G, D)
        dot, lt = dog[bs, :, rows], lseg[bs, :, rows]
        delta = (dot * og[bs, :, rows]).sum(dim=-1, keepdim=True)  # rowsum(dO * O), (.., 1)
        dq_t = dq[bs, :, rows]
        for k0, k1, band in item.keys:
            kt, vt = kw[bs, :, k0:k1], vw[bs, :, k0:k1]
            p = scores(qt, kt, item, k0, k1, band).sub_(lt).exp2_()  # (b, Hkv, rows, tk) exact P
            dv_t = torch.matmul(p.transpose(-1, -2), dot)  # (b, Hkv, tk, Dv)
            dp = _scratch("dp", p.shape, p)  # (b, Hkv, rows, tk)
            torch.bmm(dot.reshape(-1, *dot.shape[2:]),
                      vt.reshape(-1, *vt.shape[2:]).transpose(1, 2), out=dp.view(-1, *dp.shape[2:]))
            ds = dp.sub_(delta).mul_(p)  # dS = P * (dP - delta)
            dq_t += torch.matmul(ds, kt)
            dk_t = torch.matmul(ds.transpose(-1, -2), qt)  # (b, Hkv, tk, D); times ln2 below
            with lock:
                dv[bs, :, k0:k1] += dv_t
                dk[bs, :, k0:k1] += dk_t
                if dbias is not None:
                    _add_bias_grad(dbias, ds, spec, item, k0, k1)

    workers = _workers(spec, b)
    _run(_plan(spec, b, workers, split_keys=False), grads_of_tile, workers)
    dq = _ungrouped(dq.mul_(scale), spec.hq)
    dk.mul_(LN2)  # qt carried scale * log2(e); dK wants scale alone
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias


def _add_bias_grad(dbias, ds, spec: MaskSpec, item: _Item, k0: int, k1: int) -> None:
    """Add a tile's ``dS (b, Hkv, tq*G, tk)`` into ``dbias (B|1, Hq|1, Sq|1, Sk|1)``."""
    b, h, _, tk = ds.shape
    ds5 = ds.view(b, h, item.q1 - item.q0, spec.groups, tk)  # (b, Hkv, tq, G, tk)
    target = _batch(spec.grouped(dbias, slice(item.q0, item.q1), slice(k0, k1)), item)  # a view
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
