"""The pictures and numbers of docs/induction.md, remade from the shipped induction model and
MiniLM.

    python docs/induction_figures.py [OUT_DIR]

writes ``induction-*.png`` and ``stats-minilm-*.png`` into OUT_DIR (default ``docs/img``) and
prints every figure the page quotes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import attnkit
from attnkit.corpus import corpus_stats
from attnkit.experiments.induction import repeat_accuracy
from attnkit.inspect.relations import shipped_texts
from attnkit.models.induction import SYLLABLES
from attnkit.viz.stats import distance_profile_figure, heatmap_figure

EXAMPLE = "ko ma ri tu sa be no fi ga le ko ma ri tu sa be no fi ga le"
"""Ten syllables, then the same ten again: the picture's input."""


def repeated_texts(n: int, period: int, seed: int = 99) -> list[str]:
    """``n`` texts of ``period`` distinct random syllables, said twice."""
    g = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(n):
        words = [SYLLABLES[int(i)] for i in torch.randperm(len(SYLLABLES), generator=g)[:period]]
        texts.append(" ".join(words + words))
    return texts


def main(out: str = "docs/img") -> int:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = attnkit.load_model("induction")
    print(repeat_accuracy(model))
    for relation in ("induction", "previous-token", "duplicate-token", "sink"):
        print(attnkit.find_heads("induction", relation=relation).table(2), "\n")
    for length in (16, 128):
        for relation in ("induction", "previous-token"):
            top = attnkit.find_heads("induction", relation=relation, length=length).ranking[0]
            print(f"{relation} at length {length}: layer {top[0]} head {top[1]} {top[2]:.3f}")
    for layer, name in ((0, "previous-token"), (1, "induction")):
        exp = attnkit.explain(EXAMPLE, model="induction", layer=layer, head=0)
        exp.save_grid(out_dir / f"induction-layer{layer}.png")
        print(f"layer {layer} ({name} head) on the example: best keys",
              [f"{q}<-{k} {w:.2f}" for q, k, w in exp.best_keys()[10:14]])
    texts = repeated_texts(100, 32)
    stats = corpus_stats(model, texts, tokenizer=tokenizer).stats
    print("induction model, 100 texts of 32 syllables said twice: distance shares",
          {f"layer {lay}": [round(v, 3) for v in stats.distance[a, 0].tolist()]
           for a, lay in enumerate(stats.layers)}, "entropy", stats.entropy.flatten().tolist())
    distance_profile_figure(stats, [(0, 0), (1, 0)], title="induction model: where each head's "
                            "attention lands (32 syllables said twice)").savefig(
        out_dir / "induction-distance.png")
    minilm = corpus_stats("minilm", shipped_texts())
    print(minilm.table(8))
    heatmap_figure(minilm.stats, "entropy", title="MiniLM, entropy of every head (the shipped "
                   "sentences)").savefig(out_dir / "stats-minilm-entropy.png")
    distance_profile_figure(minilm.stats, title="MiniLM: distance profile of the six most "
                            "focused heads").savefig(out_dir / "stats-minilm-distance.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:2]))
