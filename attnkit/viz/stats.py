"""Pictures of attention statistics: a layers × heads heat map per statistic and the distance
profile of chosen heads. matplotlib ``Figure`` objects, made without pyplot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from attnkit.errors import AttnkitError
from attnkit.inspect.stats import AttentionStats

__all__ = ["HEATMAPS", "heatmap_values", "heatmap_figure", "focused_heads",
           "distance_profile_figure", "typical_distance_bin"]

HEATMAPS = {
    "entropy": "entropy (nats, mean over queries)",
    "sink": "weight on the first token",
    "max_weight": "largest weight (mean over queries)",
    "distance": "typical distance: mean log2 distance bin",
}
"""The heat maps ``attnkit stats`` draws: statistic → colour-bar label."""


def typical_distance_bin(stats: AttentionStats) -> torch.Tensor:
    """``(L, H)``: ``Σ_b b · distance[b]``, where attention lands on average on the log2 scale
    (0: on itself; ``b``: around distance ``2^(b-1)``)."""
    bins = torch.arange(stats.n_bins, dtype=torch.float64)
    return (stats.distance * bins).sum(-1)


def heatmap_values(stats: AttentionStats, name: str) -> torch.Tensor:
    """The ``(L, H)`` values the heat map of ``name`` (one of ``HEATMAPS``) draws."""
    if name not in HEATMAPS:
        raise AttnkitError(f"no heat map {name!r}; choose one of {', '.join(HEATMAPS)}")
    return typical_distance_bin(stats) if name == "distance" else getattr(stats, name)


def heatmap_figure(stats: AttentionStats, name: str, *, title: str | None = None) -> Figure:
    """One statistic of every head: layers down, heads across, each cell written in."""
    values = heatmap_values(stats, name).float()  # (L, H)
    n_layers, n_heads = values.shape
    fig = Figure(figsize=(1.6 + 0.55 * n_heads, 1.4 + 0.45 * n_layers), dpi=110)
    ax = fig.add_subplot()
    image = ax.imshow(values.numpy(), cmap="Blues", aspect="auto", interpolation="nearest")
    high = float(values.max()) if values.numel() else 0.0
    for a in range(n_layers):
        for b in range(n_heads):
            v = float(values[a, b])
            ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if high > 0 and v > 0.6 * high else "black")
    ax.set_xticks(range(n_heads), stats.heads)
    ax.set_yticks(range(n_layers), stats.layers)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, fraction=0.03, label=HEATMAPS[name])
    ax.set_title(title or HEATMAPS[name], fontsize=10)
    fig.tight_layout()
    return fig


def focused_heads(stats: AttentionStats, top: int = 6) -> list[tuple[int, int]]:
    """``(layer, head)`` of the ``top`` heads with the lowest entropy (the most focused), among
    heads that saw a query."""
    seen = stats.queries > 0
    entropy = torch.where(seen, stats.entropy, torch.full_like(stats.entropy, float("inf")))
    order = torch.argsort(entropy.flatten())[:min(top, int(seen.sum()))]
    n_heads = len(stats.heads)
    return [(stats.layers[int(i) // n_heads], stats.heads[int(i) % n_heads]) for i in order]


def distance_profile_figure(stats: AttentionStats,
                            heads: Sequence[tuple[int, int]] | None = None, *,
                            title: str | None = None) -> Figure:
    """Where attention lands by query–key distance: one line per head (default: the six most
    focused, ``focused_heads``) and the mean of every head, over the log2 distance bins."""
    chosen = focused_heads(stats) if heads is None else list(heads)
    for layer, head in chosen:
        if layer not in stats.layers or head not in stats.heads:
            raise AttnkitError(f"layer {layer} head {head} is not in these statistics (layers "
                               f"{stats.layers}, heads {stats.heads})")
    edges = stats.distance_edges.tolist()
    labels = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1],
                                                                                 edges[1:])]
    fig = Figure(figsize=(max(6.0, 0.55 * len(labels) + 2.5), 4.0), dpi=110)
    ax = fig.add_subplot()
    x = range(len(labels))
    for layer, head in chosen:
        profile = stats.distance[stats.layers.index(layer), stats.heads.index(head)]
        ax.plot(x, profile.numpy(), marker="o", ms=3, lw=1.2, label=f"layer {layer} head {head}")
    seen = stats.queries > 0
    if bool(seen.any()):
        ax.plot(x, stats.distance[seen].mean(0).numpy(), color="k", ls="--", lw=1.2,
                label="mean of all heads")
    ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("query–key distance |i - j| (tokens, log2 bins)")
    ax.set_ylabel("share of attention")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title or "distance profile of the most focused heads", fontsize=10)
    fig.tight_layout()
    return fig
