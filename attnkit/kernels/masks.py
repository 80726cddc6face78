"""Which keys each query may see: causal, sliding window, boolean mask and additive bias.

A ``MaskSpec`` holds the validated options of one call and answers two questions for the kernels:
which key range can a block of queries see at all (so hidden tiles are skipped, never computed),
and what mask / bias applies inside one tile (so nothing ever builds an ``Sq x Sk`` buffer). It
also carries the options that change the softmax itself — soft-capping, sinks, dropout — so every
backend sees them (and one that cannot do them refuses).

Layout inside the kernels ("grouped rows"): queries of one key/value head are stored as
``(B, Hkv, Sq, G, D)`` with ``G = Hq // Hkv``, so a tile's scores are ``(B, Hkv, tq, G, tk)``.
Every tile mask / bias returned here broadcasts against that 5-D shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Index = slice | torch.Tensor  # a range of positions, or explicit positions (LongTensor)


@dataclass(frozen=True)
class MaskSpec:
    """Validated options; ``mask`` and ``bias`` are 4-D ``(B|1, Hq|1, Sq|1, Sk|1)``.

    Causal and window are aligned bottom-right: with ``offset = Sk - Sq``, query ``i`` sees key
    ``j`` when ``i + offset - left <= j <= i + offset + right`` (``causal`` means ``right = 0``).

    ``softcap`` (> 0) turns each scaled score ``s`` into ``softcap * tanh(s / softcap)`` before
    the bias and the mask; ``sinks (Hq,)`` adds ``exp(sinks[h])`` to every row's softmax
    denominator; ``dropout_p`` drops probabilities after the softmax with the mask that
    ``kernels.dropout`` derives from ``dropout_seed`` (an int whenever ``dropout_p > 0`` in a
    call to a kernel).
    """

    sq: int
    sk: int
    hq: int
    hkv: int
    causal: bool = False
    window: tuple[int | None, int | None] | None = None
    mask: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None
    dropout_p: float = 0.0
    dropout_seed: int | None = None

    @property
    def score_options(self) -> tuple[str, ...]:
        """The options in use that change the softmax itself: "softcap", "sinks", "dropout"."""
        used = ("softcap", self.softcap is not None), ("sinks", self.sinks is not None), \
            ("dropout", self.dropout_p > 0)
        return tuple(name for name, on in used if on)

    @property
    def groups(self) -> int:
        return self.hq // self.hkv

    @property
    def offset(self) -> int:
        return self.sk - self.sq

    @property
    def left(self) -> int | None:
        """How far left of its diagonal a query may look (None: unbounded)."""
        return None if self.window is None else self.window[0]

    @property
    def right(self) -> int | None:
        """How far right of its diagonal a query may look (None: unbounded)."""
        right = None if self.window is None else self.window[1]
        if self.causal:
            right = 0 if right is None else min(right, 0)
        return right

    @property
    def has_band(self) -> bool:
        return self.left is not None or self.right is not None

    # ---- which tiles exist -------------------------------------------------------------------

    def key_range(self, q0: int, q1: int) -> tuple[int, int]:
        """Keys ``[lo, hi)`` that some query in ``[q0, q1)`` may see (may be empty)."""
        lo, hi = 0, self.sk
        if self.left is not None:
            lo = max(lo, q0 + self.offset - self.left)
        if self.right is not None:
            hi = min(hi, q1 - 1 + self.offset + self.right + 1)
        return lo, max(lo, hi)

    def inner_range(self, q0: int, q1: int) -> tuple[int, int]:
        """Keys ``[lo, hi)`` that every query in ``[q0, q1)`` sees by causal/window: tiles there
        need no band mask (inside ``key_range``; may be empty)."""
        lo, hi = self.key_range(q0, q1)
        inner_lo, inner_hi = lo, hi
        if self.left is not None:
            inner_lo = min(hi, max(lo, q1 - 1 + self.offset - self.left))
        if self.right is not None:
            inner_hi = max(inner_lo, min(hi, q0 + self.offset + self.right + 1))
        return inner_lo, inner_hi

    # ---- what applies inside a tile ----------------------------------------------------------

    def band(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Boolean ``(len(rows), len(cols))``: True where query ``rows[a]`` may see ``cols[b]``."""
        diag = rows[:, None] + self.offset  # (R, 1)
        seen = torch.ones(len(rows), len(cols), dtype=torch.bool, device=rows.device)
        if self.right is not None:
            seen &= cols[None, :] <= diag + self.right
        if self.left is not None:
            seen &= cols[None, :] >= diag - self.left
        return seen

    def tile_mask(self, rows: Index, cols: Index, device: torch.device) -> torch.Tensor | None:
        """Boolean mask of a tile, broadcastable to ``(B, Hkv, R, G, C)``; None: all visible."""
        out = None
        if self.has_band:
            r, c = _positions(rows, self.sq, device), _positions(cols, self.sk, device)
            out = self.band(r, c)[:, None, :]  # (R, 1, C)
        if self.mask is not None:
            user = self.grouped(self.mask, rows, cols)
            out = user if out is None else out & user
        return out

    def tile_bias(self, rows: Index, cols: Index) -> torch.Tensor | None:
        """Bias for a tile, broadcastable to ``(B, Hkv, R, G, C)``; None when there is no bias."""
        return None if self.bias is None else self.grouped(self.bias, rows, cols)

    def grouped(self, t: torch.Tensor, rows: Index, cols: Index) -> torch.Tensor:
        """Slice a 4-D ``(B|1, Hq|1, Sq|1, Sk|1)`` tensor to a tile, in grouped-rows layout."""
        b, h, s, k = t.shape
        t = t.view(b, self.hkv, self.groups, s, k) if h != 1 else t.view(b, 1, 1, s, k)
        t = _take(_take(t, 3, rows), 4, cols)
        return t.permute(0, 1, 3, 2, 4)  # (B|1, Hkv|1, R|1, G|1, C|1)


def _positions(index: Index, size: int, device: torch.device) -> torch.Tensor:
    if isinstance(index, slice):
        start, stop, step = index.indices(size)
        return torch.arange(start, stop, step, device=device)
    return index.to(device)


def _take(t: torch.Tensor, dim: int, index: Index) -> torch.Tensor:
    """``t`` restricted to ``index`` along ``dim``; broadcast (size-1) dims stay as they are."""
    if t.shape[dim] == 1:
        return t
    if isinstance(index, slice):
        start, stop, step = index.indices(t.shape[dim])
        if step == 1:
            return t.narrow(dim, start, max(0, stop - start))
        index = torch.arange(start, stop, step, device=t.device)
    return t.index_select(dim, index.to(t.device))
