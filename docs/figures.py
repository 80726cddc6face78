"""The pictures and numbers of docs/adjectives.md, remade from the shipped model and MiniLM.

    python docs/figures.py [OUT_DIR]

writes ``adjectives-*.png`` into OUT_DIR (default ``docs/img``) and prints every figure the page
quotes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attnkit
from attnkit.experiments.adjective_heads import BEYOND
from attnkit.experiments.adjectives import EXAMPLE, generate, head_view, load_toy, measure
from attnkit.experiments.figures import qk_projection_figure, ranking_figure


def main(out: str = "docs/img") -> int:
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
    result = attnkit.find_heads("minilm")
    print(result.table(10))
    ranking_figure(result).savefig(out_dir / "adjectives-minilm-ranking.png")
    layer, head = result.best
    best = attnkit.explain(EXAMPLE, model="minilm", layer=layer, head=head)
    best.save_grid(out_dir / "adjectives-minilm-best.png")
    beyond = result.extra[BEYOND]  # (L, H)
    flat = int(beyond.argmax())
    layer, head = result.layers[flat // beyond.shape[1]], result.heads[flat % beyond.shape[1]]
    print(f"best beyond the previous token: layer {layer} head {head} "
          f"{float(beyond.max()):.3f}")
    attnkit.explain(EXAMPLE, model="minilm", layer=layer, head=head).save_grid(
        out_dir / "adjectives-minilm-beyond.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:2]))
