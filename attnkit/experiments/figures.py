"""The pictures and numbers of docs/adjectives.md, remade from the shipped model and MiniLM.

``python -m attnkit.experiments.figures [OUT_DIR]`` writes ``adjectives-*.png`` into OUT_DIR
(default ``docs/img``) and prints every figure the page quotes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from attnkit.experiments.adjectives import EXAMPLE, generate, head_view, load_toy, measure
from attnkit.experiments.metrics import HeadView

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(11, 4.6), dpi=120)
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


def ranking_figure(result):
    """Every MiniLM head's score as a (layers × heads) heat map, beside the same share counting
    only adjective tokens beyond the one right before the noun."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers = 1 + max(lay for lay, _, _ in result.ranking)
    n_heads = 1 + max(hd for _, hd, _ in result.ranking)
    score = torch.zeros(n_layers, n_heads)
    for lay, hd, s in result.ranking:
        score[lay, hd] = s
    beyond = torch.tensor([[result.beyond_previous.get((lay, hd), 0.0) for hd in range(n_heads)]
                           for lay in range(n_layers)])
    fig, axs = plt.subplots(1, 2, figsize=(11, 3.6), dpi=120)
    panels = [(score, f"share on own adjectives (uniform baseline {result.baseline:.2f})"),
              (beyond, "only adjective tokens beyond the previous one "
                       f"(baseline {result.baseline_beyond:.2f})")]
    for ax, (values, title) in zip(axs, panels, strict=True):
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1)
        for lay in range(n_layers):
            for hd in range(n_heads):
                v = float(values[lay, hd])
                ax.text(hd, lay, f"{v:.2f}"[1:] if v < 1 else "1", ha="center", va="center",
                        fontsize=6, color="white" if v > 0.6 else "black")
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.025)
    fig.suptitle(f"{result.model_name}: how much of each noun's attention lands on its adjectives "
                 f"({result.n_nouns} nouns, {result.n_sentences} sentences)", fontsize=10)
    fig.tight_layout()
    return fig


def main(out: str = "docs/img") -> int:
    import attnkit
    from attnkit.inspect.heads import find_heads

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_toy()
    print(measure(model, tokenizer))
    toy = attnkit.explain(EXAMPLE, model="toy", layer=0, head=0)
    toy.save_grid(out_dir / "adjectives-toy-grid.png")
    second = "the tiny golden bird watched a wild dark jagged castle ."
    attnkit.explain(second, model="toy", layer=0, head=0).save_grid(
        out_dir / "adjectives-toy-grid-2.png")
    view = head_view(model, tokenizer, generate(150, seed=7, held_out=True))
    qk_projection_figure(view).savefig(out_dir / "adjectives-qk-projection.png")
    result = find_heads("minilm")
    print(result.table(10))
    ranking_figure(result).savefig(out_dir / "adjectives-minilm-ranking.png")
    layer, head = result.best
    best = attnkit.explain(EXAMPLE, model="minilm", layer=layer, head=head)
    best.save_grid(out_dir / "adjectives-minilm-best.png")
    by_beyond = max(result.beyond_previous, key=result.beyond_previous.get)
    print(f"best beyond the previous token: layer {by_beyond[0]} head {by_beyond[1]} "
          f"{result.beyond_previous[by_beyond]:.3f}")
    attnkit.explain(EXAMPLE, model="minilm", layer=by_beyond[0], head=by_beyond[1]).save_grid(
        out_dir / "adjectives-minilm-beyond.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:2]))
