"""The tile plan, checked cell by cell against the band in global positions (no processes)."""

from __future__ import annotations

import itertools
import random

import pytest

from attnkit.distributed.layouts import chunks
from attnkit.distributed.plan import Band, RingPlan, calls


def _locally_visible(call, i: int, j: int) -> bool:
    """Whether ``attnkit.attention`` on the call's tile lets local query i see local key j."""
    t = (j - call.k0) - (i - call.q0) - ((call.k1 - call.k0) - (call.q1 - call.q0))
    left, right = call.window if call.window else (None, None)
    if call.causal:
        right = 0
    return (left is None or t >= -left) and (right is None or t <= right)


def _global(parts, local: int) -> int:
    for g0, g1, l0 in parts:
        if l0 <= local < l0 + g1 - g0:
            return g0 + local - l0
    raise AssertionError(local)


WINDOWS = [None, (0, 0), (1, None), (3, 0), (None, 2), (2, 5), (7, 1)]


@pytest.mark.parametrize("rows", [None, 3])  # 3: slices that cut chunks unevenly
@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_calls_cover_every_visible_cell_once_and_no_hidden_cell(layout, rows):
    rng = random.Random(0)
    for _ in range(400):
        size = rng.choice([1, 2, 3, 4])
        nq, nk = rng.choice([2, 4, 6]), rng.choice([2, 4, 8])
        causal, window = rng.random() < 0.5, rng.choice(WINDOWS)
        band = Band.of(causal, window, size * nq, size * nk)
        for r, s in itertools.product(range(size), repeat=2):
            qc, kc = chunks(layout, r, size, nq), chunks(layout, s, size, nk)
            cover: dict[tuple[int, int], int] = {}
            for call in calls(band, qc, kc, rows=rows):
                assert rows is None or call.q1 - call.q0 <= rows
                assert call.window is None or min(x for x in call.window if x is not None) >= 0
                for i, j in itertools.product(range(call.q0, call.q1), range(call.k0, call.k1)):
                    if _locally_visible(call, i, j):
                        cover[i, j] = cover.get((i, j), 0) + 1
            for i, j in itertools.product(range(nq), range(nk)):
                d = _global(kc, j) - _global(qc, i) - band.offset
                visible = ((band.left is None or d >= -band.left)
                           and (band.right is None or d <= band.right))
                assert cover.get((i, j), 0) == int(visible), (size, nq, nk, causal, window, r, s,
                                                             i, j)


def _work(plan: RingPlan, rank: int, step: int) -> int:
    """Cells rank ``rank`` computes at ``step`` (whole tiles, as the kernels see them)."""
    source = (rank - step) % plan.size
    if step > plan.reach[source]:
        return 0
    return sum((c.q1 - c.q0) * (c.k1 - c.k0) for c in plan.tiles[rank][source])


@pytest.mark.parametrize("size", [2, 3, 4, 8])
def test_zigzag_balances_causal_work_and_contiguous_does_not(size):
    n = 8
    band = Band.of(True, None, size * n, size * n)
    zig = RingPlan.build(band, "zigzag", 0, size, n, n)
    for step in range(1, size):  # after the diagonal step every rank does the same half block
        assert {_work(zig, r, step) for r in range(size)} == {n * n // 2}
    assert zig.reach == (size - 1,) * size
    flat = RingPlan.build(band, "contiguous", 0, size, n, n)
    totals = [sum(_work(flat, r, t) for t in range(size)) for r in range(size)]
    assert totals == sorted(totals) and totals[0] < totals[-1]  # the last rank does most


def test_blocks_travel_only_as_far_as_someone_needs_them():
    size, n = 4, 4
    causal = RingPlan.build(Band.of(True, None, size * n, size * n), "contiguous", 0, size, n, n)
    assert causal.reach == (3, 2, 1, 0)  # block s is needed by ranks after s only
    window = RingPlan.build(Band.of(True, (3, 0), size * n, size * n), "contiguous", 0, size, n,
                            n)
    assert window.reach == (1, 1, 1, 0) and window.steps == 2  # a short window: one hop
    full = RingPlan.build(Band.of(False, None, size * n, size * n), "contiguous", 0, size, n, n)
    assert full.reach == (3, 3, 3, 3)
    assert all(c.causal is False and c.window is None for row in full.tiles for cs in row
               for c in cs)
