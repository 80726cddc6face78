"""The notes' example made real: a toy model whose one head learns to find a noun's adjectives.

Everything the experiment needs, in one place: the grammar (``WORDS``, ``generate``), the model
(``load_toy``, ``train_toy``) and the measurements (``adjective_share``, ``qk_alignment``,
``attention_by_class``). ``measure(model, tokenizer)`` runs them all on fresh held-out sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnkit.experiments.grammar import (
    FIERCE,
    GENTLE,
    MARK_BY_MOOD,
    MOODS,
    VERBS_BY_MOOD,
    WORDS,
    Sentence,
    generate,
    held_out_pairs,
    label,
    mood,
)
from attnkit.experiments.metrics import (
    AdjectiveShare,
    Alignment,
    HeadView,
    adjective_share,
    attention_by_class,
    format_by_class,
    head_view,
    qk_alignment,
)
from attnkit.experiments.train import TrainConfig, train_toy
from attnkit.models.tokenizer import ToyTokenizer
from attnkit.models.toy import ToyConfig, ToyModel, load_toy, save_toy

__all__ = [
    "WORDS", "GENTLE", "FIERCE", "MOODS", "VERBS_BY_MOOD", "MARK_BY_MOOD", "Sentence", "generate",
    "held_out_pairs", "label", "mood", "ToyTokenizer", "ToyConfig", "ToyModel", "load_toy",
    "save_toy", "TrainConfig", "train_toy", "HeadView", "head_view", "AdjectiveShare",
    "adjective_share", "Alignment", "qk_alignment", "attention_by_class", "format_by_class",
    "Measurements", "measure", "EXAMPLE",
]

EXAMPLE = "a fluffy blue creature roamed the verdant forest"
"""The notes' sentence; every word of it is in ``WORDS``."""


@dataclass(frozen=True)
class Measurements:
    """The experiment's numbers on held-out sentences (see ``measure``)."""

    share: AdjectiveShare
    alignment: Alignment
    by_class: dict[str, dict[str, float]]
    n_sentences: int

    def __str__(self) -> str:
        return (f"on {self.n_sentences} held-out sentences (adjective–noun pairs never seen in "
                f"training):\n{self.share}\n{self.alignment}\n"
                f"where each kind of query puts its attention:\n{format_by_class(self.by_class)}")


def measure(model: ToyModel, tokenizer: ToyTokenizer, n: int = 500, seed: int = 2024,
            head: int = 0) -> Measurements:
    """Generate ``n`` fresh held-out sentences and measure ``head`` on them."""
    view = head_view(model, tokenizer, generate(n, seed=seed, held_out=True), head=head)
    return Measurements(adjective_share(view), qk_alignment(view), attention_by_class(view), n)
