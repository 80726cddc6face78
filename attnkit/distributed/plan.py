"""Which tiles of the whole ``Nq x Nk`` grid a rank computes, and with which local options.

The causal / window band is stated once in global positions: query ``i`` sees key ``j`` when
``-left <= j - i - (Nk - Nq) <= right`` (bottom-right alignment, as ``attnkit.attention``). A
rank's queries and a block of keys are each one or two contiguous chunks of global positions;
each (query chunk, key chunk) pair is trimmed to the rows and columns the band lets meet, and the
band is re-expressed around the trimmed tile's own bottom-right diagonal, so every tile is one
ordinary ``attnkit.attention`` call. Pairs the band hides give no call at all (nothing computed,
nothing sent).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnkit.distributed.layouts import Chunk, chunks

__all__ = ["Band", "Call", "calls", "RingPlan", "CALL_ROWS"]

# queries per ring call: a multiple of the blockwise kernel's query tile (so the tiles it makes are
# the ones it would make on the whole block), and small enough that one call's (out, lse) is a
# few MB (2048 rows x 4 heads x 64 dims in float32: 2 MiB) however long the sequence
CALL_ROWS = 2048


@dataclass(frozen=True)
class Band:
    """Key ``j`` is visible to query ``i`` when ``-left <= j - i - offset <= right`` (a side that is
    None is unbounded); ``offset = Nk - Nq``."""

    offset: int
    left: int | None
    right: int | None

    @classmethod
    def of(cls, causal: bool, window: tuple[int | None, int | None] | None, nq: int,
           nk: int) -> Band:
        left, right = window if window is not None else (None, None)
        if causal:
            right = 0 if right is None else min(right, 0)
        return cls(offset=nk - nq, left=left, right=right)


@dataclass(frozen=True)
class Call:
    """One local ``attnkit.attention`` call: local query rows ``[q0, q1)`` against local key rows
    ``[k0, k1)`` of one block, with the causal flag and window that put the band on that tile."""

    q0: int
    q1: int
    k0: int
    k1: int
    causal: bool
    window: tuple[int | None, int | None] | None

    @property
    def full(self) -> bool:
        return not self.causal and self.window is None


def _trim(band: Band, a0: int, a1: int, b0: int, b1: int) -> tuple[int, int, int, int] | None:
    """Global queries ``[a0, a1)`` x keys ``[b0, b1)`` cut to the rows that see some key of the
    pair and the keys that some row sees; None when the band hides the whole pair."""
    off, left, right = band.offset, band.left, band.right
    q_lo, q_hi = a0, a1
    if right is not None:
        q_lo = max(q_lo, b0 - off - right)  # earlier queries see no key this late
    if left is not None:
        q_hi = min(q_hi, b1 - off + left)  # later queries see no key this early
    if q_lo >= q_hi:
        return None
    k_lo, k_hi = b0, b1
    if left is not None:
        k_lo = max(k_lo, q_lo + off - left)
    if right is not None:
        k_hi = min(k_hi, q_hi + off + right)
    if k_lo >= k_hi:
        return None
    return q_lo, q_hi, k_lo, k_hi


def _local_options(band: Band, q_lo: int, q_hi: int, k_lo: int,
                   k_hi: int) -> tuple[bool, tuple[int | None, int | None] | None]:
    """``(causal, window)`` that draw the global band on the tile ``[q_lo, q_hi) x [k_lo, k_hi)``
    around its own bottom-right diagonal. Trimming leaves the last row's diagonal cell visible,
    so both window sides come out >= 0."""
    sq, sk = q_hi - q_lo, k_hi - k_lo
    # global j - i - offset = local (j' - i' - (sk - sq)) - shift
    shift = q_lo + band.offset - k_lo - (sk - sq)
    left = None if band.left is None else band.left - shift
    right = None if band.right is None else band.right + shift
    if left is not None and left >= sk - 1:
        left = None  # reaches past the first key for every row
    if right is not None and right >= sq - 1:
        right = None  # reaches past the last key for every row
    assert (left is None or left >= 0) and (right is None or right >= 0), (band, q_lo, k_lo)
    if left is None and right == 0:
        return True, None
    if left is None and right is None:
        return False, None
    return False, (left, right)


def calls(band: Band, q_chunks: tuple[Chunk, ...], k_chunks: tuple[Chunk, ...],
          rows: int | None = None) -> tuple[Call, ...]:
    """The local calls that cover every visible cell of ``q_chunks x k_chunks`` (each chunk is
    ``(global start, global stop, local start)``), neighbouring unmasked tiles joined. With
    ``rows``, no call has more than ``rows`` queries: each chunk is cut into slices of that
    many first, so a call's result (and its merge) stays that small whatever the length."""
    if rows is None:
        return tuple(_join(_tiles(band, q_chunks, k_chunks)))
    found = []
    for a0, a1, qa in q_chunks:
        for s0 in range(a0, a1, rows):
            piece = ((s0, min(s0 + rows, a1), qa + s0 - a0),)
            found += _join(_tiles(band, piece, k_chunks))
    return tuple(sorted(found, key=lambda c: (c.q0, c.k0)))


def _tiles(band: Band, q_chunks: tuple[Chunk, ...], k_chunks: tuple[Chunk, ...]) -> list[Call]:
    """One call per (query chunk, key chunk) pair the band does not hide, trimmed to its cells."""
    found = []
    for a0, a1, qa in q_chunks:
        for b0, b1, kb in k_chunks:
            cut = _trim(band, a0, a1, b0, b1)
            if cut is None:
                continue
            q_lo, q_hi, k_lo, k_hi = cut
            causal, window = _local_options(band, *cut)
            found.append(Call(q_lo - a0 + qa, q_hi - a0 + qa, k_lo - b0 + kb, k_hi - b0 + kb,
                              causal, window))
    return found


def _join(found: list[Call]) -> list[Call]:
    """Join unmasked tiles that share their rows and touch along the keys, or share their keys and
    touch along the rows (zigzag's two chunks lie side by side locally): fewer, larger calls."""
    joined = True
    while joined:
        joined = False
        for i, a in enumerate(found):
            for j, b in enumerate(found):
                if i == j or not (a.full and b.full):
                    continue
                if (a.q0, a.q1) == (b.q0, b.q1) and a.k1 == b.k0:
                    merged = Call(a.q0, a.q1, a.k0, b.k1, False, None)
                elif (a.k0, a.k1) == (b.k0, b.k1) and a.q1 == b.q0:
                    merged = Call(a.q0, b.q1, a.k0, a.k1, False, None)
                else:
                    continue
                found = [c for n, c in enumerate(found) if n not in (i, j)] + [merged]
                joined = True
                break
            if joined:
                break
    return sorted(found, key=lambda c: (c.q0, c.k0))


@dataclass(frozen=True)
class RingPlan:
    """The ring schedule every rank computes identically.

    At step ``t`` rank ``r`` holds the key/value block of rank ``(r - t) % W``; its calls on a
    block have at most ``CALL_ROWS`` queries each (the result of one call and its merge are held
    beside the running output, so they must not grow with the length). Block ``s`` goes
    on around the ring only while some rank further along needs it: ``reach[s]`` is the last
    step at which a rank uses it (0: only its owner, or nobody), so it is sent ``reach[s]``
    times, and the ring stops after ``steps`` steps.
    """

    size: int
    rank: int
    tiles: tuple[tuple[tuple[Call, ...], ...], ...]  # tiles[r][s]: rank r's calls on block s
    reach: tuple[int, ...]
    steps: int

    @classmethod
    def build(cls, band: Band, layout: str, rank: int, size: int, nq: int, nk: int) -> RingPlan:
        tiles = tuple(
            tuple(calls(band, chunks(layout, r, size, nq), chunks(layout, s, size, nk),
                        rows=CALL_ROWS)
                  for s in range(size))
            for r in range(size))
        reach = tuple(max((t for t in range(size) if tiles[(s + t) % size][s]), default=0)
                      for s in range(size))
        return cls(size=size, rank=rank, tiles=tiles, reach=reach, steps=max(reach) + 1)

    def source(self, step: int, rank: int | None = None) -> int:
        """Whose block rank ``rank`` (default: this one) holds at ``step``."""
        return ((self.rank if rank is None else rank) - step) % self.size

    def holds(self, step: int) -> bool:
        """Whether this rank holds a block at ``step`` (it received it, or it is its own)."""
        return step <= self.reach[self.source(step)]

    def my_calls(self, step: int) -> tuple[Call, ...]:
        return self.tiles[self.rank][self.source(step)] if self.holds(step) else ()
