"""Pieces of one head's attention pattern (tiles, top keys, pooled overviews) from q, k and lse.

Nothing here builds a head's full ``Sq × Sk`` pattern unless that is the size asked for: a tile
costs its own size, and an overview streams over blocks of query rows, pooling each before the next.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from attnkit.errors import AttnkitError, OutOfRangeError
from attnkit.inspect.captured import Captured, select_one
from attnkit.kernels.api import pattern as _pattern

__all__ = ["HeadPattern", "Pooled", "pooled", "top_keys", "from_capture"]

Reduce = Literal["max", "mean"]

# rows of the pattern computed at once while pooling: bounds the working memory to
# about ROW_BUDGET floats (4 M floats = 16 MB), whatever the sequence length
ROW_BUDGET = 4 * 1024 * 1024


@dataclass(frozen=True)
class HeadPattern:
    """One head of one sequence, ready to give any piece of its pattern ``[query, key]``.

    ``tile_fn(rows, cols) -> (R, C)`` float32 computes the exact probabilities for two slices.
    Build it with ``HeadPattern.from_call`` (the inputs of ``attention(..., return_lse=True)``)
    or ``from_capture``.
    """

    n_queries: int
    n_keys: int
    tile_fn: Callable[[slice, slice], torch.Tensor]

    @classmethod
    def from_call(cls, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, *, head: int = 0,
                  batch: int = 0, **options: Any) -> HeadPattern:
        """One head of a recorded call.

        q ``(B, Hq, Sq, D)``, k ``(B, Hkv, Sk, D)``, lse ``(B, Hq, Sq)``;

        ``options`` are the call's ``causal``, ``window``, ``mask``, ``bias``, ``scale``
        (anything else, e.g. ``backend``, is not part of the pattern and is dropped).
        """
        b, hq, sq, _ = q.shape
        hkv, sk = k.shape[1], k.shape[2]
        for name, value, size, what in (("batch", batch, b, "sequences"),
                                        ("head", head, hq, "query heads")):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
                raise OutOfRangeError(f"{name} {value!r} is out of range: the call has {size} "
                                      f"{what} (0..{size - 1})")
        kv_head = head // (hq // hkv)
        q1 = q[batch:batch + 1, head:head + 1]  # (1, 1, Sq, D)
        k1 = k[batch:batch + 1, kv_head:kv_head + 1]  # (1, 1, Sk, D)
        lse1 = lse[batch:batch + 1, head:head + 1]  # (1, 1, Sq)
        kept = {name: options.get(name) for name in ("causal", "window", "scale")}
        heads = torch.tensor([head])
        for name in ("mask", "bias"):
            t = options.get(name)
            if t is not None:
                t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))  # (B|1, Hq|1, Sq|1, Sk|1)
            kept[name] = select_one(t, batch, heads)

        def tile(rows: slice, cols: slice) -> torch.Tensor:
            return _pattern(q1, k1, lse1, rows=rows, cols=cols, **kept)[0, 0]  # (R, C)

        return cls(sq, sk, tile)

    def tile(self, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        """The exact pattern for ``rows`` (queries) × ``cols`` (keys): ``(R, C)`` float32."""
        return self.tile_fn(rows, cols)


def from_capture(capture: Captured, layer: int, head: int, batch: int = 0) -> HeadPattern:
    """A ``HeadPattern`` over one head of a capture (live or loaded), via ``pattern``."""
    n = capture.seq_len(batch)

    def tile(rows: slice, cols: slice) -> torch.Tensor:
        return capture.pattern(layer, head, batch=batch, rows=rows, cols=cols)

    return HeadPattern(n, n, tile)


@dataclass(frozen=True)
class Pooled:
    """A pooled view of a region of a pattern.

    ``values (Rb, Cb)``: cell ``[a, b]`` pools queries ``row0 + a*row_block …`` (up to
    ``row_block`` of them) against keys ``col0 + b*col_block …``; with blocks of 1 it is the exact
    pattern. ``reduce`` is "max" (the strongest weight in the block) or "mean" (over the block's
    cells).
    """

    values: torch.Tensor
    row0: int
    row1: int
    col0: int
    col1: int
    row_block: int
    col_block: int
    reduce: str

    def to_dict(self, digits: int = 6) -> dict[str, Any]:
        """JSON-ready, values rounded to ``digits`` significant digits (block means are tiny)."""
        values = [[float(f"{v:.{digits}g}") for v in row] for row in self.values.tolist()]
        return {
            "rows": [self.row0, self.row1], "cols": [self.col0, self.col1],
            "row_block": self.row_block, "col_block": self.col_block, "reduce": self.reduce,
            "values": values,
        }


def pooled(head: HeadPattern, rows: tuple[int, int] | None = None,
           cols: tuple[int, int] | None = None, size: int = 256,
           reduce: Reduce = "max") -> Pooled:
    """Pool the region ``rows × cols`` (half-open position ranges) to at most ``size × size`` cells.

    Streams over blocks of query rows (at most ``ROW_BUDGET`` probabilities in memory at once);
    a region no bigger than ``size`` on a side comes back exact (blocks of 1).
    """
    if reduce not in ("max", "mean"):
        raise AttnkitError(f"reduce must be 'max' or 'mean'; got {reduce!r}")
    if not isinstance(size, int) or size < 1:
        raise AttnkitError(f"size must be a positive int; got {size!r}")
    r0, r1 = _check_range("rows", rows, head.n_queries)
    c0, c1 = _check_range("cols", cols, head.n_keys)
    br = math.ceil((r1 - r0) / size)
    bc = math.ceil((c1 - c0) / size)
    n_rb, n_cb = math.ceil((r1 - r0) / br), math.ceil((c1 - c0) / bc)
    out = torch.empty(n_rb, n_cb, dtype=torch.float32)
    # how many row blocks fit in the budget at once
    step = br * max(1, ROW_BUDGET // max(1, br * (c1 - c0)))
    for start in range(r0, r1, step):
        stop = min(start + step, r1)
        tile = head.tile(slice(start, stop), slice(c0, c1)).float()  # (R, C)
        out[(start - r0) // br:(stop - r0 + br - 1) // br] = _pool(tile, br, bc, reduce)
    return Pooled(out, r0, r1, c0, c1, br, bc, reduce)


def _pool(tile: torch.Tensor, br: int, bc: int, reduce: str) -> torch.Tensor:
    """``(R, C)`` → ``(ceil(R/br), ceil(C/bc))``; partial edge blocks pool over their real cells."""
    r, c = tile.shape
    pr, pc = -r % br, -c % bc
    padded = torch.nn.functional.pad(tile, (0, pc, 0, pr))  # (R + pr, C + pc); probabilities >= 0
    blocks = padded.view((r + pr) // br, br, (c + pc) // bc, bc)  # (Rb, br, Cb, bc)
    if reduce == "max":
        return blocks.amax(dim=(1, 3))
    ones = torch.nn.functional.pad(torch.ones(r, c), (0, pc, 0, pr))
    counts = ones.view_as(blocks).sum(dim=(1, 3))  # (Rb, Cb) real cells per block
    return blocks.sum(dim=(1, 3)) / counts


def _check_range(name: str, span: tuple[int, int] | None, n: int) -> tuple[int, int]:
    if span is None:
        return 0, n
    start, stop = (int(x) for x in span)
    if not 0 <= start < stop <= n:
        raise AttnkitError(f"{name} range {start}..{stop} is outside the pattern: need "
                           f"0 <= start < stop <= {n}")
    return start, stop


def top_keys(head: HeadPattern, query: int, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` keys that answer ``query`` best, as ``[(key position, weight)]``, best first."""
    if not 0 <= query < head.n_queries:
        raise OutOfRangeError(f"query {query} is out of range: the pattern has "
                              f"{head.n_queries} queries (0..{head.n_queries - 1})")
    row = head.tile(slice(query, query + 1), slice(None))[0]  # (Sk,)
    weights, keys = torch.topk(row, min(k, row.numel()))
    return [(int(j), float(w)) for j, w in zip(keys, weights, strict=True) if w > 0]
