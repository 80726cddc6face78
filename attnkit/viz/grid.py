"""Attention patterns as pictures in the notes' layout: matplotlib ``Figure``s, made without
pyplot, so no backend is switched (save them with ``fig.savefig``).

The notes draw keys down the left side and queries across the top, so each column (one query)
sums to one; ``orientation="query-key"`` draws the ``[query, key]`` tensor layout instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnkit.errors import AttnkitError
from attnkit.viz.layout import cell_text, check_orientation, hidden_cells, oriented

__all__ = ["grid_figure", "heads_figure"]

CMAP = "Blues"
MASKED = "#d9d9d9"  # cells a causal model may not look at
ANNOTATE_UP_TO = 16  # write the weights into the cells of grids this small


def grid_figure(pattern: torch.Tensor, tokens: Sequence[str], *,
                key_tokens: Sequence[str] | None = None, orientation: str = "notes",
                causal: bool = False, title: str | None = None,
                annotate: bool | None = None) -> Figure:
    """One head's pattern as a labelled grid.

    Args:
        pattern: ``(Sq, Sk)`` ``[query, key]`` probabilities (each row sums to 1).
        tokens: the ``Sq`` query tokens; ``key_tokens`` the ``Sk`` key tokens (default: the same).
        orientation: "notes" (keys as rows on the left, queries as columns on top, columns sum
            to 1) or "query-key" (the transpose: queries as rows).
        causal: mark the cells a causal model hides (grey, hatched; the lower-left triangle in
            the notes' layout).
        annotate: write the weights into the cells (default: when the grid is at most 16 wide).

    Returns:
        a matplotlib Figure; ``fig.axes[0].images[0].get_array()`` is the drawn array.
    """
    if pattern.dim() != 2:
        raise AttnkitError(f"pattern must be 2-D [query, key]; got shape {tuple(pattern.shape)}")
    sq, sk = pattern.shape
    key_tokens = list(tokens) if key_tokens is None else list(key_tokens)
    if len(tokens) != sq or len(key_tokens) != sk:
        raise AttnkitError(f"pattern is {sq} queries x {sk} keys but got {len(tokens)} query "
                           f"tokens and {len(key_tokens)} key tokens; pass one token per "
                           "position")
    notes = check_orientation(orientation) == "notes"
    data = oriented(pattern, orientation).numpy()  # (Sk, Sq) for notes
    hidden = hidden_cells(sq, sk, causal).numpy()
    hidden = hidden.T if notes else hidden
    row_labels, col_labels = (key_tokens, list(tokens)) if notes else (list(tokens), key_tokens)
    row_name, col_name = ("keys", "queries") if notes else ("queries", "keys")

    n_rows, n_cols = data.shape
    cell = 0.42 if max(n_rows, n_cols) <= 40 else max(0.06, 16 / max(n_rows, n_cols))
    fig = Figure(figsize=(2.2 + cell * n_cols, 2.0 + cell * n_rows), dpi=110)
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap=CMAP, vmin=0.0, vmax=1.0, aspect="equal",
                      interpolation="nearest")
    _mark_hidden(ax, hidden, hatch=max(n_rows, n_cols) <= 64)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    show_labels = max(n_rows, n_cols) <= 96
    if show_labels:
        ax.set_xticks(range(n_cols), col_labels, rotation=60, ha="left", rotation_mode="anchor")
        ax.set_yticks(range(n_rows), row_labels)
    ax.set_xlabel(col_name, fontsize=11, fontweight="bold")
    ax.set_ylabel(row_name, fontsize=11, fontweight="bold")
    if annotate if annotate is not None else max(n_rows, n_cols) <= ANNOTATE_UP_TO:
        for r in range(n_rows):
            for c in range(n_cols):
                if not hidden[r, c] and data[r, c] >= 0.005:
                    ax.text(c, r, cell_text(float(data[r, c])),
                            ha="center", va="center", fontsize=7,
                            color="white" if data[r, c] > 0.55 else "#1f3b57")
    sums = "each column sums to 1" if notes else "each row sums to 1"
    fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02, label=f"weight ({sums})")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _mark_hidden(ax, hidden: np.ndarray, hatch: bool) -> None:
    if not hidden.any():
        return
    overlay = np.ma.masked_where(~hidden, np.ones(hidden.shape))
    ax.imshow(overlay, cmap=ListedColormap([MASKED]), vmin=0, vmax=1,
              interpolation="nearest", aspect="equal")
    if hatch:
        for r, c in zip(*np.nonzero(hidden), strict=True):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="///",
                                   edgecolor="#9a9a9a", linewidth=0))


def heads_figure(patterns: torch.Tensor, *, orientation: str = "notes", causal: bool = False,
                 title: str | None = None, chosen: tuple[int, int] | None = None,
                 layers: list[int] | None = None, heads: list[int] | None = None) -> Figure:
    """Every layer x head as small grids, like a contact sheet.

    Args:
        patterns: ``(L, H, Sq, Sk)`` ``[query, key]`` probabilities.
        layers, heads: the model's numbers of those L layers and H heads (default 0..L-1, 0..H-1).
        chosen: ``(layer, head)`` (model numbers) framed in red.
    """
    if patterns.dim() != 4:
        raise AttnkitError(f"patterns must be (layers, heads, Sq, Sk); got {tuple(patterns.shape)}")
    n_layers, n_heads, sq, sk = patterns.shape
    layers = list(range(n_layers)) if layers is None else list(layers)
    heads = list(range(n_heads)) if heads is None else list(heads)
    hidden = hidden_cells(sq, sk, causal).numpy()
    hidden = hidden.T if check_orientation(orientation) == "notes" else hidden
    fig = Figure(figsize=(1.0 + 1.1 * n_heads, 1.0 + 1.2 * n_layers), dpi=100)
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    masked_cmap = matplotlib.colormaps[CMAP].with_extremes(bad=MASKED)
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            data = np.ma.masked_where(hidden, oriented(patterns[layer, head], orientation).numpy())
            ax.imshow(data, cmap=masked_cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {heads[head]}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layers[layer]}", fontsize=8)
            if chosen == (layers[layer], heads[head]):
                for spine in ax.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(2.5)
    rows, cols = ("keys", "queries") if orientation == "notes" else ("queries", "keys")
    fig.suptitle((title + "\n" if title else "") + f"each grid: {rows} down, {cols} across",
                 fontsize=10)
    fig.tight_layout()
    return fig
