"""The experiment's own pictures: the toy head's query/key space and a ranking heat map.

Each function returns a matplotlib ``Figure`` (no pyplot, no backend switch); ``docs/figures.py``
remakes every picture and number of docs/adjectives.md with them.
"""

from __future__ import annotations

import torch

from attnkit.experiments.adjective_heads import BEYOND
from attnkit.experiments.metrics import HeadView
from attnkit.inspect.heads import HeadRanking

_STYLE = {  # name: (colour, marker)
    "noun query": ("tab:red", "^"),
    "key of its own adjective": ("tab:blue", "o"),
    "key of the other noun's adjective": ("tab:orange", "o"),
    "key of another word it sees": ("tab:gray", "."),
}


def qk_points(view: HeadView, which: int) -> dict[str, torch.Tensor]:
    """For the sentences' noun number ``which`` (1 or 2): its queries and the keys it can see
    (itself and everything before it), grouped as in ``_STYLE``: ``{name: (n, d_key)}``."""
    groups: dict[str, list[torch.Tensor]] = {name: [] for name in _STYLE}
    for b, sentence in enumerate(view.sentences):
        noun = sentence.nouns[which - 1]
        own = set(sentence.adjectives_of[noun])
        others = {a for n, adjs in sentence.adjectives_of.items() if n != noun for a in adjs}
        groups["noun query"].append(view.queries[b, noun])
        for i in range(noun + 1):
            name = ("key of its own adjective" if i in own else
                    "key of the other noun's adjective" if i in others else
                    "key of another word it sees")
            groups[name].append(view.keys[b, i])
    return {name: torch.stack(points) for name, points in groups.items() if points}


def qk_projection_figure(view: HeadView):
    """The notes' picture, measured: noun queries and the keys they can see, in the head's
    query/key space. One panel per noun of the sentence; x is the direction of the mean noun
    query (so x of a key times x of a query is most of their dot product), y the direction of
    largest remaining spread. Returns a matplotlib Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6), dpi=120)
    axs = fig.subplots(1, 2)
    for which, ax in zip((1, 2), axs, strict=True):
        points = qk_points(view, which)
        x_axis = points["noun query"].mean(0)
        x_axis = x_axis / x_axis.norm()  # (d_key,)
        everything = torch.cat(list(points.values()))  # (N, d_key)
        rest = everything - (everything @ x_axis)[:, None] * x_axis  # (N, d_key)
        _, _, Vt = torch.linalg.svd(rest, full_matrices=False)  # Vt (d_key, d_key)
        axes = torch.stack([x_axis, Vt[0]], dim=1)  # (d_key, 2)
        for name, pts in points.items():
            xy = pts @ axes  # (n, 2)
            colour, marker = _STYLE[name]
            ax.scatter(xy[:, 0], xy[:, 1], s=12, alpha=0.5, c=colour, marker=marker, label=name)
        ax.axhline(0, color="k", lw=0.3)
        ax.axvline(0, color="k", lw=0.3)
        ax.set_xlabel("along the mean query of this noun")
        ax.set_ylabel("largest remaining spread")
        ax.set_title(["first noun (like creature)", "second noun (like forest)"][which - 1]
                     + ": its query and the keys it sees", fontsize=10)
        ax.legend(loc="best", fontsize=7)
    d = view.queries.shape[-1]
    fig.suptitle(f"toy head, query/key space (d_key={d}), {len(view.sentences)} held-out "
                 "sentences", fontsize=10)
    fig.tight_layout()
    return fig


def ranking_figure(result: HeadRanking):
    """Every head's "adjectives" score as a (layers × heads) heat map, beside the same share
    counting only adjective tokens beyond the one right before the noun."""
    from matplotlib.figure import Figure

    n_layers, n_heads = result.scores.shape
    beyond_baseline = next(iter(result.extra_baselines[BEYOND].values()))
    fig = Figure(figsize=(11, 3.6), dpi=120)
    axs = fig.subplots(1, 2)
    panels = [(result.scores, f"share on own adjectives (uniform baseline {result.baseline:.2f})"),
              (result.extra[BEYOND], "only adjective tokens beyond the previous one "
                                     f"(baseline {beyond_baseline:.2f})")]
    for ax, (values, title) in zip(axs, panels, strict=True):
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1)
        for lay in range(n_layers):
            for hd in range(n_heads):
                v = float(values[lay, hd])
                ax.text(hd, lay, f"{v:.2f}"[1:] if v < 1 else "1", ha="center", va="center",
                        fontsize=6, color="white" if v > 0.6 else "black")
        ax.set_xticks(range(n_heads), result.heads)
        ax.set_yticks(range(n_layers), result.layers)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.025)
    fig.suptitle(f"{result.model_name}: how much of each noun's attention lands on its adjectives "
                 f"({result.n_items} nouns, {result.n_inputs} sentences)", fontsize=10)
    fig.tight_layout()
    return fig
