"""Attention dropout whose mask is a pure function of a seed and a position.

Whether probability ``P[b, h, i, j]`` is kept depends only on ``(seed, b, h, i, j)``: a
counter-based hash, written here in torch integer ops, so the blockwise backward regenerates the
forward's mask tile by tile without storing it, and the reference backend given the same seed
draws the same mask. Nothing depends on the call's shape, tiling or threads.

The hash (ours, in int64 arithmetic: products wrap modulo 2**64):

- every query row ``(b, h, i)`` and every key ``j`` gets a 64-bit key: SplitMix64's finalizer
  chained over the seed and the coordinates (small tensors, once per call);
- a cell's value is ``x = (row_key ^ key_key) * M1``, ``x ^= x >> 29`` (arithmetic shift),
  ``x *= M2`` — the multiply-xorshift-multiply core of that finalizer; its top bits, which
  decide the comparison below, depend on every bit of both keys;
- the cell is dropped when ``x < T = -2**63 + round(p * 2**64)``, i.e. with probability ``p``
  (to within 2**-64); kept cells are scaled by ``1 / (1 - p)``, as ``torch.nn.functional.dropout``
  scales them.

The per-cell part is six passes over an integer tile; it runs only when ``dropout_p > 0``.
"""

from __future__ import annotations

import torch

__all__ = ["SEED_LIMIT", "draw_seed", "row_keys", "key_keys", "dropped", "keep_scale",
           "keep_mask"]

SEED_LIMIT = 1 << 63  # seeds are ints in [0, 2**63)
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment
_ROWS, _KEYS = 0x5DEECE66D, 0x2545F4914F6CDD1D  # separate streams for rows and keys


def _signed(c: int) -> int:
    """A 64-bit pattern as the int64 with the same bits."""
    c %= 1 << 64
    return c - (1 << 64) if c >= 1 << 63 else c


_M1, _M2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer on int64 bits."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def _chain(seed: int, stream: int, coords: list[torch.Tensor]) -> torch.Tensor:
    """The 64-bit key (int64) of broadcast integer coordinates under ``seed``."""
    x = torch.full((), _signed(seed * _GAMMA + stream), dtype=torch.int64,
                   device=coords[0].device)
    for c in coords:
        x = _mix64((x + _signed(_GAMMA)) ^ c.to(torch.int64))
    return x


def row_keys(seed: int, batch: int, heads: int, queries: int,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B, Hq, Sq)`` int64: the key of every query row ``(b, h, i)``."""
    b = torch.arange(batch, device=device).view(-1, 1, 1)
    h = torch.arange(heads, device=device).view(1, -1, 1)
    i = torch.arange(queries, device=device).view(1, 1, -1)
    return _chain(seed, _ROWS, [b, h, i]).expand(batch, heads, queries).contiguous()


def key_keys(seed: int, keys: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(Sk,)`` int64: the key of every key position ``j``."""
    return _chain(seed, _KEYS, [torch.arange(keys, device=device)])


def threshold(p: float) -> int:
    """Cells whose value falls below this are dropped (an int64; probability ``p``)."""
    return -(1 << 63) + min(round(p * 2.0**64), (1 << 64) - 1)


def dropped(rows: torch.Tensor, keys: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean, True where a cell is dropped: row keys ``rows (..., R, 1)`` against key keys
    ``keys (C,)`` give ``(..., R, C)``."""
    x = (rows ^ keys).mul_(_M1)  # (..., R, C)
    x ^= x >> 29
    return x.mul_(_M2) < threshold(p)


def keep_scale(p: float) -> float:
    """What a kept probability is multiplied by."""
    return 1.0 / (1.0 - p)


def keep_mask(seed: int, p: float, batch: int, heads: int, queries: int, keys: int,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """The whole ``(B, Hq, Sq, Sk)`` boolean keep-mask (True = kept) of a call: for the reference
    backend and for tests; the blockwise kernel makes it tile by tile."""
    rows = row_keys(seed, batch, heads, queries, device)[..., None]  # (B, Hq, Sq, 1)
    return ~dropped(rows, key_keys(seed, keys, device), p)


def draw_seed() -> int:
    """A dropout seed from torch's default generator, so ``torch.manual_seed`` makes calls
    reproducible."""
    return int(torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64))
