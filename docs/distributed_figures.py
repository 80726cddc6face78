"""The picture of docs/distributed.md: which rank computes which cells of the notes' grid.

    python docs/distributed_figures.py [OUT_DIR]

writes ``distributed-tiles.png`` into OUT_DIR (default ``docs/img``). The cells come from the
plan ``akd.attention`` itself runs (``attnkit.distributed.plan``), not from a drawing: a cell is
coloured by the rank whose ring call computes it, labelled with the ring step, and left grey
when the causal mask or window hides it (no rank computes it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from attnkit.distributed.layouts import chunks
from attnkit.distributed.plan import Band, RingPlan

RANK_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
HIDDEN = "#e6e6e6"


def computed_cells(layout: str, size: int, n_local: int, causal: bool,
                   window) -> tuple[np.ndarray, np.ndarray, RingPlan]:
    """``(rank, step)`` grids ``(N keys, N queries)``: who computes each cell and at which ring
    step (-1 where nobody does), read from the ring plan of every rank."""
    big_n = size * n_local
    band = Band.of(causal, window, big_n, big_n)
    rank_of = np.full((big_n, big_n), -1)
    step_of = np.full((big_n, big_n), -1)
    plan = None
    for rank in range(size):
        plan = RingPlan.build(band, layout, rank, size, n_local, n_local)
        q_global = _globals(chunks(layout, rank, size, n_local))
        for step in range(plan.steps):
            source = plan.source(step)
            k_global = _globals(chunks(layout, source, size, n_local))
            for call in plan.my_calls(step):
                for i in range(call.q0, call.q1):
                    for j in range(call.k0, call.k1):
                        if _visible(call, i, j):
                            assert rank_of[k_global[j], q_global[i]] == -1  # computed once
                            rank_of[k_global[j], q_global[i]] = rank
                            step_of[k_global[j], q_global[i]] = step
    return rank_of, step_of, plan


def _globals(parts) -> list[int]:
    out = []
    for g0, g1, _ in parts:
        out += list(range(g0, g1))
    return out


def _visible(call, i: int, j: int) -> bool:
    t = (j - call.k0) - (i - call.q0) - ((call.k1 - call.k0) - (call.q1 - call.q0))
    left, right = call.window if call.window else (None, None)
    if call.causal:
        right = 0
    return (left is None or t >= -left) and (right is None or t <= right)


def tiles_figure(size: int = 4, n_local: int = 4) -> Figure:
    panels = [("contiguous, causal", "contiguous", True, None),
              ("zigzag, causal", "zigzag", True, None),
              ("contiguous, causal, window=(3, 0)", "contiguous", True, (3, 0))]
    fig = Figure(figsize=(15, 6.6), layout="constrained")
    grid = fig.add_gridspec(2, len(panels), height_ratios=[4, 1])
    cmap = ListedColormap([HIDDEN] + RANK_COLOURS[:size])
    big_n = size * n_local
    for col, (title, layout, causal, window) in enumerate(panels):
        rank_of, step_of, plan = computed_cells(layout, size, n_local, causal, window)
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(rank_of + 1, cmap=cmap, vmin=0, vmax=size, interpolation="nearest")
        for key in range(big_n):
            for query in range(big_n):
                if step_of[key, query] >= 0:
                    ax.text(query, key, str(step_of[key, query]), ha="center", va="center",
                            fontsize=7, color="white")
        owner = np.empty(big_n, dtype=int)  # which rank holds each position
        for rank in range(size):
            owner[_globals(chunks(layout, rank, size, n_local))] = rank
        for pos in range(big_n):  # the owner of each query (top) and key (left) as a strip
            ax.add_patch(_strip(pos, -1.2, RANK_COLOURS[owner[pos]]))
            ax.add_patch(_strip(-1.2, pos, RANK_COLOURS[owner[pos]]))
        ax.set_xlim(-1.3, big_n - 0.5)
        ax.set_ylim(big_n - 0.5, -1.3)
        ax.set_xticks(range(0, big_n, 2))
        ax.set_yticks(range(0, big_n, 2))
        ax.xaxis.tick_top()
        ax.xaxis.set_label_position("top")
        ax.set_xlabel("queries (position in the sequence)")
        ax.set_ylabel("keys (position in the sequence)")
        sent = sum(plan.reach)  # blocks sent, all ranks together
        ax.set_title(f"{title}\n{plan.steps} ring steps, {sent} key/value blocks sent", pad=28)
        work = [int((rank_of == r).sum()) for r in range(size)]
        bars = fig.add_subplot(grid[1, col])
        bars.bar(range(size), work, color=RANK_COLOURS[:size])
        bars.set_xticks(range(size), [f"rank {r}" for r in range(size)])
        bars.set_ylabel("cells computed")
        bars.set_ylim(0, max(work) * 1.25)
        for r, w in enumerate(work):
            bars.text(r, w, str(w), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"Ring attention on {size} ranks, N = {big_n}: cell K_i · Q_j is computed by the "
                 "rank holding query j (colour) at the ring step written in it;\ngrey cells are "
                 "hidden and never computed. The strips show which rank holds each position.",
                 fontsize=11)
    return fig


def _strip(x: float, y: float, colour: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, color=colour, clip_on=False)


def main(out: str = "docs/img") -> int:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "distributed-tiles.png"
    tiles_figure().savefig(path, dpi=110)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:2]))
