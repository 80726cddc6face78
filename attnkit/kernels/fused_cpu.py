"""The fused backend on the CPU: torch's own flash-attention kernel, the one behind SDPA, which
returns the log-sum-exp — called only on the tiles the causal/window band leaves visible.

``aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, *, attn_mask,
scale) -> (out, lse)`` and its ``_backward`` (private ops, so they are feature-detected) do the
arithmetic. What they cannot say themselves is arranged around them:

- **bottom-right causal, windows, Sq != Sk**: the op's causal is top-left. A sliding window
  (a left bound) is cut into blocks of queries (``BLOCK_Q``), each given only the keys its band
  reaches, with the band as a small additive mask (one cached tile serves every interior
  block). Interior blocks are alike (same size, same keys relative to their queries), so they
  go to the op in one call, stacked along the batch dimension: one call's fixed cost, not one
  per block. Without a left bound the queries see every key up to their diagonal: a piece without
  a mask, then one that starts on the diagonal, where the bottom-right band *is* the op's
  top-left causal; the two are combined with the merge rule (DESIGN.md). Keys the band hides
  are never passed to the op.
- **rows that see no key**: the op returns ``lse = 0`` there (it would corrupt any merge); they
  get ``-inf`` here, and zeros.
- **the lse's gradient**: the op's backward takes only ``dO``. It computes
  ``dS = P * (dP - rowsum(dO * O))`` and reads ``O`` nowhere else, so ``dlse`` rides in on one
  extra head-dim column: ``q, k, v`` get a zero column, ``O`` a column of ones and ``dO`` the
  column ``-dlse``; then ``rowsum(dO * O)`` is ``rowsum(dO * O) - dlse`` and nothing else moves.
- **per-piece backward**: each piece's gradients come from the op's backward given the block's
  merged ``(O, lse)``: ``P = exp(S - lse)`` is then the global probability.
- **half precision**: inputs are computed in float32 (this CPU's bf16/fp16 matmuls are ~100x
  slower than float32 through torch 2.13), outputs rounded once to the input dtype; the float32
  output is what the backward's ``rowsum(dO * O)`` reads.
- ``Dv != D``: the op wants one head size; q, k (or v) get zero columns, which change no score.

Bias without a gradient is passed as the op's float ``attn_mask``; a bias that needs a gradient
is refused (the op gives ``attn_mask`` none) with the name of the backend that does it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from attnkit.kernels.compiled import Split
from attnkit.kernels.masks import MaskSpec
from attnkit.kernels.merge import merge
from attnkit.runtime import work_dtype

# Queries per block when a window's left bound moves along the sequence: a quarter of the
# window's width, within these bounds. A block computes its length in keys beyond the band per
# row (smaller is less waste); the op's own tiles want a few dozen rows to run at speed.
BLOCK_Q = (64, 256)
# Half-precision dtypes whose forward pass (without autograd) runs the op in that dtype: it
# accumulates in float32 and returns a float32 lse, rounding only the probabilities to the dtype
# before they multiply v, and skips three conversions. With autograd the call runs in float32:
# the op's half-precision backward is ~5x slower on this CPU (BENCHMARKS.md).
NATIVE_FORWARD = (torch.bfloat16, torch.float16)
OP_NAMES = ("_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_flash_attention_for_cpu_backward")


def find_ops(aten=None) -> tuple | None:
    """The private forward and backward ops in ``aten`` (default ``torch.ops.aten``), or None
    when this torch does not have them."""
    aten = torch.ops.aten if aten is None else aten
    ops = tuple(getattr(aten, name, None) for name in OP_NAMES)
    return ops if all(op is not None for op in ops) else None


_OPS = find_ops()


def fused_cpu_unsupported(spec: MaskSpec, return_lse: bool, q: torch.Tensor) -> str | None:
    """Why the fused CPU kernel cannot compute this call exactly, or None when it can."""
    if _OPS is None:
        return (f"this torch ({torch.__version__}): it has no "
                f"aten.{OP_NAMES[0]}, the fused CPU kernel")
    if q.device.type != "cpu":
        return f"tensors on {q.device} (the fused backend runs on the CPU)"
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        return f"dtype {q.dtype}"
    if q.shape[-1] == 0:
        return "head_dim 0 (the fused kernel divides by it)"
    if spec.bias is not None and spec.bias.requires_grad:
        return "a bias that requires grad (the fused kernel gives its mask no gradient)"
    return None


def fused_cpu_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention on torch's fused CPU kernel. Shapes as in ``attnkit.attention``:
    q ``(B, Hq, Sq, D)``, k ``(B, Hkv, Sk, D)``, v ``(B, Hkv, Sk, Dv)`` → out ``(B, Hq, Sq, Dv)``
    in q's dtype, lse ``(B, Hq, Sq)`` float32 (float64 for float64), both differentiable."""
    needs_grad = q.requires_grad or k.requires_grad or v.requires_grad
    if torch.is_grad_enabled() and needs_grad:
        return _FusedCPUFunction.apply(q, k, v, spec, scale)
    native = q.dtype in NATIVE_FORWARD and (spec.bias is None or spec.bias.dtype == q.dtype)
    out, lse = _forward(q, k, v, spec, scale, native=native)
    return out.to(q.dtype), lse


# ---- which keys each block of queries sees -------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """Keys ``[k0, k1)`` of a block. ``kind``: "full" (every query of the block sees them all),
    "causal" (query ``a`` of the block sees the piece's keys ``0..a``: the op's top-left causal)
    or "band" (the band's own mask, a cached tile)."""

    k0: int
    k1: int
    kind: str


@dataclass(frozen=True)
class Block:
    """Queries ``[q0, q1)`` and the key pieces they see, in key order."""

    q0: int
    q1: int
    pieces: tuple[Piece, ...]


def plan(spec: MaskSpec, block_q: int | None = None) -> list[Block]:
    """The blocks and pieces of a call. Queries outside the blocks see no key at all."""
    sq, sk, off = spec.sq, spec.sk, spec.offset
    left, right = spec.left, spec.right
    # a bound that cannot bind is no bound: fewer, larger blocks
    if left is not None and left >= sk - 1:
        left = None
    if right is not None and off + right >= sk - 1:
        right = None
    # queries that see some key: i + off + right >= 0 and i + off - left <= sk - 1
    first = 0 if right is None else max(0, -off - right)
    last = sq if left is None else min(sq, sk - off + left)
    if sk == 0 or first >= last:
        return []
    if block_q is None and left is not None:
        width = left + (right if right is not None else left) + 1
        block_q = min(max(width // 4, BLOCK_Q[0]), BLOCK_Q[1])
    size = block_q if left is not None else last - first
    blocks = []
    for q0 in range(first, last, size):
        q1 = min(q0 + size, last)
        blocks.append(Block(q0, q1, _pieces(q0, q1, sk, off, left, right)))
    return blocks


def _pieces(q0: int, q1: int, sk: int, off: int, left: int | None,
            right: int | None) -> tuple[Piece, ...]:
    """Query ``a`` sees keys ``[a + off - left, a + off + right]``. With a left bound the block
    is one piece ``[lo, hi)`` under the band's cached mask: that costs the block's length in
    keys a row beyond the band, and saves merging pieces (a merge is several passes over the
    block's output; measured slower, and far slower on a busy machine). Without one, every
    query sees the keys up to the block's diagonal and a top-left causal piece follows."""
    lo = 0 if left is None else max(0, q0 + off - left)
    hi = sk if right is None else min(sk, q1 + off + right)
    if lo >= hi:
        return ()
    if left is not None:
        every = right is None or q0 + off + right >= hi - 1  # no right edge inside [lo, hi)
        return (Piece(lo, hi, "full" if every and q1 - 1 + off - left <= lo else "band"),)
    if right is None:
        return (Piece(lo, hi, "full"),)
    start = min(hi, q0 + off + right)  # query q0's last key: where the top-left causal starts
    pieces = [Piece(lo, start, "full"), Piece(start, hi, "causal" if hi - start > 1 else "full")]
    merged: list[Piece] = []
    for piece in pieces:
        if piece.k1 <= piece.k0:
            continue
        if merged and merged[-1].kind == piece.kind == "full":
            merged[-1] = Piece(merged[-1].k0, piece.k1, "full")
        else:
            merged.append(piece)
    return tuple(merged)


# ---- masks of one piece --------------------------------------------------------------------


_band_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_band_lock = threading.Lock()


def _band_tile(spec: MaskSpec, block: Block, piece: Piece, dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The band's additive mask of a piece ``(rows, cols)`` (0 or -inf) and the rows it hides
    every key from ``(rows,)``. The band depends only on the tile's shape and its distance from
    the diagonal, so interior blocks share one cached tile."""
    key = (block.q1 - block.q0, piece.k1 - piece.k0, piece.k0 - block.q0 - spec.offset,
           spec.left, spec.right, dtype, device)
    with _band_lock:
        found = _band_cache.get(key)
    if found is None:
        rows = torch.arange(block.q0, block.q1, device=device)
        cols = torch.arange(piece.k0, piece.k1, device=device)
        seen = spec.band(rows, cols)  # (rows, cols)
        tile = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(~seen,
                                                                              float("-inf"))
        found = (tile, ~seen.any(dim=-1))
        with _band_lock:
            if len(_band_cache) > 256:  # long-lived processes see many shapes
                _band_cache.clear()
            _band_cache[key] = found
    return found


def _piece_mask(spec: MaskSpec, block: Block, piece: Piece, work: torch.dtype,
                device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The op's additive ``attn_mask`` for a piece, broadcastable to ``(B, Hq, rows, cols)``,
    and the rows that see no key of the piece, broadcastable to ``(B, Hq, rows)`` (None: none).
    """
    rows, cols = slice(block.q0, block.q1), slice(piece.k0, piece.k1)
    band = tile_empty = None
    if piece.kind == "band":
        band, tile_empty = _band_tile(spec, block, piece, work, device)
    if spec.mask is None and spec.bias is None:
        return band, tile_empty
    additive = torch.zeros((), dtype=work, device=device)
    if spec.bias is not None:
        additive = _tile(spec.bias, rows, cols).to(work)  # (B|1, Hq|1, rows|1, cols|1)
    if band is not None:
        additive = additive + band
    hidden = torch.isneginf(additive)
    if spec.mask is not None:
        hidden = hidden | ~_tile(spec.mask, rows, cols)
    if piece.kind == "causal":  # (the op applies it; the empty rows must know it too)
        n_rows, n_cols = block.q1 - block.q0, piece.k1 - piece.k0
        hidden = hidden | torch.ones(n_rows, n_cols, dtype=torch.bool,
                                     device=device).triu_(1)
    additive = torch.where(hidden, torch.full((), float("-inf"), dtype=work, device=device),
                           additive)  # (B|1, Hq|1, rows|1, cols|1)
    return additive, hidden.all(dim=-1)  # (B|1, Hq|1, rows|1)


def _tile(t: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """A 4-D ``(B|1, Hq|1, Sq|1, Sk|1)`` tensor cut to a tile; broadcast dims stay size 1."""
    if t.shape[2] != 1:
        t = t[:, :, rows]
    return t if t.shape[3] == 1 else t[:, :, :, cols]


# ---- forward -------------------------------------------------------------------------------


def _padded(q, k, v, extra: int = 0, native: bool = False):
    """q, k, v in the work dtype (``native``: their own) with one head size
    ``E = max(D, Dv) + extra`` (zero columns: no score changes, extra outputs are dropped)."""
    work = q.dtype if native else work_dtype(q.dtype)
    d, dv = q.shape[-1], v.shape[-1]
    e = max(d, dv) + extra
    q, k, v = q.to(work), k.to(work), v.to(work)
    if e != d:
        q = torch.nn.functional.pad(q, (0, e - d))
        k = torch.nn.functional.pad(k, (0, e - d))
    if e != dv:
        v = torch.nn.functional.pad(v, (0, e - dv))
    return q, k, v


def _forward(q, k, v, spec: MaskSpec, scale: float, native: bool = False):
    """``(out, lse)``: out ``(B, Hq, Sq, Dv)`` in the work dtype (``native``: q's dtype, when
    there is one piece), lse ``(B, Hq, Sq)``."""
    forward_op, _ = _OPS
    b, hq, sq, _ = q.shape
    dv = v.shape[-1]
    qw, kw, vw = _padded(q, k, v, native=native)
    work = work_dtype(q.dtype)
    blocks = plan(spec) if b * hq else []  # (the op is never called on empty batches or heads)
    if len(blocks) == 1 and blocks[0].q0 == 0 and blocks[0].q1 == sq:
        out, lse = _attend_block(forward_op, qw, kw, vw, spec, scale, blocks[0])
        return out[..., :dv], lse
    out = qw.new_zeros(b, hq, sq, dv, dtype=work)
    lse = qw.new_full((b, hq, sq), float("-inf"), dtype=_lse_dtype(work))
    for group in _groups(spec, blocks):
        rows = slice(group[0].q0, group[-1].q1)
        if len(group) > 1:
            part, part_lse = _attend_group(forward_op, qw, kw, vw, spec, scale, group)
        else:
            part, part_lse = _attend_block(forward_op, qw[:, :, rows], kw, vw, spec, scale,
                                           group[0])
        out[:, :, rows] = part[..., :dv]
        lse[:, :, rows] = part_lse
    return out, lse


# ---- alike blocks in one call --------------------------------------------------------------


def _groups(spec: MaskSpec, blocks: list[Block]) -> list[list[Block]]:
    """Consecutive blocks that can share one call of the op: one band piece each, of the same
    size and at the same place relative to their queries (so one cached mask tile is every
    block's mask). Without a mask or bias (theirs would differ block by block)."""
    groups: list[list[Block]] = []
    alike = spec.mask is None and spec.bias is None
    for block in blocks:
        sign = _signature(block) if alike else None
        if groups and sign is not None and _signature(groups[-1][0]) == sign:
            groups[-1].append(block)
        else:
            groups.append([block])
    return groups


def _signature(block: Block) -> tuple | None:
    if len(block.pieces) != 1 or block.pieces[0].kind != "band":
        return None
    piece = block.pieces[0]
    return block.q1 - block.q0, piece.k1 - piece.k0, piece.k0 - block.q0


def _stacked_rows(x: torch.Tensor, q0: int, n: int, size: int) -> torch.Tensor:
    """Rows ``q0 .. q0 + n*size`` of ``x (B, H, S, *rest)`` as ``(B*n, H, size, *rest)``."""
    b, h, rest = x.shape[0], x.shape[1], x.shape[3:]
    x = x[:, :, q0:q0 + n * size].reshape(b, h, n, size, *rest)
    return x.movedim(2, 1).reshape(b * n, h, size, *rest)


def _unstacked_rows(y: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """The inverse of ``_stacked_rows``: ``(B*n, H, size, *rest)`` → ``(B, H, n*size, *rest)``."""
    h, size, rest = y.shape[1], y.shape[2], y.shape[3:]
    return y.reshape(b, n, h, size, *rest).movedim(1, 2).reshape(b, h, n * size, *rest)


def _stacked_keys(x: torch.Tensor, k0: int, n: int, step: int, length: int) -> torch.Tensor:
    """Keys ``k0 + i*step .. + length`` of ``x (B, H, Sk, E)`` for block ``i < n``, as
    ``(B*n, H, length, E)`` (a copy: the windows overlap)."""
    b, h, e = x.shape[0], x.shape[1], x.shape[3]
    windows = x[:, :, k0:k0 + (n - 1) * step + length].unfold(2, length, step)  # (B,H,n,E,len)
    return windows.permute(0, 2, 1, 4, 3).reshape(b * n, h, length, e)


def _attend_group(forward_op, qw, kw, vw, spec: MaskSpec, scale: float, group: list[Block]):
    """``(out (B, Hq, rows, E), lse (B, Hq, rows))`` of alike blocks, in one call."""
    first, n = group[0], len(group)
    piece = first.pieces[0]
    size, length = first.q1 - first.q0, piece.k1 - piece.k0
    mask, empty = _band_tile(spec, first, piece, qw.dtype, qw.device)  # (size, length), (size,)
    out, lse = forward_op(_stacked_rows(qw, first.q0, n, size),
                          _stacked_keys(kw, piece.k0, n, size, length),
                          _stacked_keys(vw, piece.k0, n, size, length), 0.0, False,
                          attn_mask=mask, scale=scale)
    if empty.any():
        lse = lse.masked_fill(empty, float("-inf"))
    b = qw.shape[0]
    return _unstacked_rows(out, b, n), _unstacked_rows(lse, b, n)


def _lse_dtype(work: torch.dtype) -> torch.dtype:
    return torch.float64 if work == torch.float64 else torch.float32


def _attend_block(forward_op, q_rows, kw, vw, spec: MaskSpec, scale: float, block: Block):
    """One block's ``(out (B, Hq, rows, E), lse (B, Hq, rows))`` over its pieces, merged."""
    result = None
    for piece in block.pieces:
        mask, empty = _piece_mask(spec, block, piece, q_rows.dtype, q_rows.device)
        out, lse = forward_op(q_rows, kw[:, :, piece.k0:piece.k1], vw[:, :, piece.k0:piece.k1],
                              0.0, piece.kind == "causal", attn_mask=mask, scale=scale)
        if empty is not None:
            # the op gives lse = 0 (out = 0) to a row that saw no key; the contract says -inf
            lse = lse.masked_fill(empty, float("-inf"))
        if len(block.pieces) > 1:
            out = out.to(work_dtype(out.dtype))  # merged in float32, rounded once at the end
        result = (out, lse) if result is None else merge(*result, out, lse)
    return result


# ---- backward ------------------------------------------------------------------------------


def _backward(q, k, v, out_work, lse, dout, dlse, spec: MaskSpec, scale: float):
    """Gradients of q, k, v from the saved work-dtype ``out (B, Hq, Sq, Dv)`` and ``lse`` and the
    incoming ``dout (B, Hq, Sq, Dv)`` and ``dlse (B, Hq, Sq)`` (either may be None)."""
    _, backward_op = _OPS
    d, dv = q.shape[-1], v.shape[-1]
    with_lse = dlse is not None
    qw, kw, vw = _padded(q, k, v, extra=int(with_lse))
    work, e = qw.dtype, qw.shape[-1]
    out_e = _widened(out_work.to(work), e)
    dout_e = _widened(dout.to(work), e) if dout is not None else out_e.new_zeros(out_e.shape)
    if with_lse:
        # dS = P * (dP - rowsum(dO * O)) with rowsum(dO * O) lowered by dlse: the lse's own term
        out_e[..., -1] = 1.0
        dout_e[..., -1] = -dlse.to(work)
    # rows that saw nothing: any finite lse makes their P = exp(-inf - lse) = 0, never NaN
    lse_op = lse.masked_fill(torch.isneginf(lse), 0.0)
    blocks = plan(spec) if q.shape[0] * q.shape[1] else []
    calls = [(block, piece) for block in blocks for piece in block.pieces]
    if len(calls) == 1 and calls[0][0].q1 - calls[0][0].q0 == spec.sq and (
            calls[0][1].k1 - calls[0][1].k0 == spec.sk):
        block, piece = calls[0]  # one call covers everything: its gradients are the answer
        mask, _ = _piece_mask(spec, block, piece, work, q.device)
        dq, dk, dvv = backward_op(dout_e, qw, kw, vw, out_e, lse_op, 0.0, piece.kind == "causal",
                                  attn_mask=mask, scale=scale)
    else:
        dq, dk, dvv = torch.zeros_like(qw), torch.zeros_like(kw), torch.zeros_like(vw)
        calls = []
        for group in _groups(spec, blocks):
            if len(group) > 1:
                _group_backward(backward_op, dout_e, qw, kw, vw, out_e, lse_op, spec, scale,
                                group, (dq, dk, dvv))
            else:
                calls += [(group[0], piece) for piece in group[0].pieces]
        for block, piece in calls:
            mask, _ = _piece_mask(spec, block, piece, work, q.device)
            rows, keys = slice(block.q0, block.q1), slice(piece.k0, piece.k1)
            gq, gk, gv = backward_op(dout_e[:, :, rows], qw[:, :, rows], kw[:, :, keys],
                                     vw[:, :, keys], out_e[:, :, rows], lse_op[:, :, rows], 0.0,
                                     piece.kind == "causal", attn_mask=mask, scale=scale)
            dq[:, :, rows] += gq
            dk[:, :, keys] += gk
            dvv[:, :, keys] += gv
    return (dq[..., :d].to(q.dtype), dk[..., :d].to(k.dtype), dvv[..., :dv].to(v.dtype))


def _group_backward(backward_op, dout_e, qw, kw, vw, out_e, lse_op, spec: MaskSpec,
                    scale: float, group: list[Block], grads) -> None:
    """Adds the gradients of alike blocks, from one call, to ``grads = (dq, dk, dv)``."""
    dq, dk, dvv = grads
    first, n, b = group[0], len(group), qw.shape[0]
    piece = first.pieces[0]
    size, length = first.q1 - first.q0, piece.k1 - piece.k0
    mask, _ = _band_tile(spec, first, piece, qw.dtype, qw.device)

    def rows(x):
        return _stacked_rows(x, first.q0, n, size)

    def keys(x):
        return _stacked_keys(x, piece.k0, n, size, length)

    gq, gk, gv = backward_op(rows(dout_e), rows(qw), keys(kw), keys(vw), rows(out_e),
                             rows(lse_op), 0.0, False, attn_mask=mask, scale=scale)
    dq[:, :, first.q0:group[-1].q1] += _unstacked_rows(gq, b, n)
    # block i's keys are piece.k0 + i*size + (0..length): overlapping windows, summed
    index = (piece.k0 + torch.arange(n, device=qw.device)[:, None] * size
             + torch.arange(length, device=qw.device)).flatten()  # (n*length,)
    for full, part in ((dk, gk), (dvv, gv)):
        h, e = part.shape[1], part.shape[3]
        full.index_add_(2, index, part.reshape(b, n, h, length, e).movedim(1, 2)
                        .reshape(b, h, n * length, e))


def _widened(x: torch.Tensor, e: int) -> torch.Tensor:
    """``x (..., Dv)`` with zero columns up to ``e`` (a new tensor when any are added)."""
    return x if x.shape[-1] == e else torch.nn.functional.pad(x, (0, e - x.shape[-1]))


class _FusedCPUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec: MaskSpec, scale: float):
        ctx.set_materialize_grads(False)  # dlse is None unless a loss reads the lse
        out_work, lse = _forward(q, k, v, spec, scale)
        # the backward's rowsum(dO * O) reads the work-dtype output, not the one rounded to q's
        ctx.save_for_backward(q, k, v, out_work, lse)
        ctx.spec, ctx.scale = spec, scale
        return out_work.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out_work, lse = ctx.saved_tensors
        if dout is None and dlse is None:
            return None, None, None, None, None
        dq, dk, dv = _backward(q, k, v, out_work, lse, dout, dlse, ctx.spec, ctx.scale)
        return dq, dk, dv, None, None


# ---- forward and backward apart, for the custom op torch.compile sees (compiled.py) ----------


def _split_forward(q, k, v, spec: MaskSpec, scale: float, needs_grad: bool):
    """``(out, lse, residuals)``: the work-dtype output when it is not ``out`` itself."""
    if not needs_grad:
        out, lse = fused_cpu_attention(q, k, v, spec, scale)
        return out, lse, []
    out_work, lse = _forward(q, k, v, spec, scale)
    out = out_work.to(q.dtype)
    return out, lse, [] if out_work.dtype == q.dtype else [out_work]


def _split_backward(q, k, v, spec: MaskSpec, scale: float, out, lse, residuals, dout, dlse,
                    bias_grad: bool, sinks_grad: bool):
    out_work = residuals[0] if residuals else out
    if dout is None and dlse is None:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None
    return (*_backward(q, k, v, out_work, lse, dout, dlse, spec, scale), None, None)


def _residuals_like(q, k, v, spec: MaskSpec, needs_grad: bool):
    work = work_dtype(q.dtype)
    if not needs_grad or work == q.dtype:
        return []
    return [q.new_empty(*q.shape[:3], v.shape[-1], dtype=work)]


SPLIT = Split(_split_forward, _split_backward, _residuals_like)
