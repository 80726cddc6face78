"""What the toy model's head does, measured on sentences: how much of each noun's attention lands on
its own adjectives, how noun queries align with adjective keys, and what every other query does.

Patterns, queries and keys come from the notes' objects: ``model.attention.heads()[h]`` applied to
the embeddings ``E`` the layer reads (the same arithmetic as the model's forward pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnkit.errors import AttnkitError, OutOfRangeError
from attnkit.experiments.grammar import WORDS, Sentence
from attnkit.models.tokenizer import ToyTokenizer
from attnkit.models.toy import ToyModel

WORD_CLASSES = {w: cls[:-1] if cls != "marks" else "mark" for cls, ws in WORDS.items() for w in ws}
"""word → its class: "determiner", "adjective", "noun", "verb" or "mark"."""


@dataclass(frozen=True)
class HeadView:
    """One head on a batch of sentences (right-padded to ``S``).

    ``pattern (N, S, S)`` ``[query, key]``; ``queries``/``keys`` ``(N, S, d_key)``;
    ``lengths`` the real length of each sentence.
    """

    sentences: list[Sentence]
    pattern: torch.Tensor
    queries: torch.Tensor
    keys: torch.Tensor
    lengths: list[int]


@torch.no_grad()
def head_view(model: ToyModel, tokenizer: ToyTokenizer, sentences: list[Sentence],
              head: int = 0) -> HeadView:
    """Queries, keys and the pattern of ``head`` on ``sentences``."""
    if not 0 <= head < model.config.n_heads:
        raise OutOfRangeError(f"head {head} does not exist; the toy model has heads "
                              f"0..{model.config.n_heads - 1}")
    ids = tokenizer([s.text for s in sentences], return_tensors="pt")["input_ids"]  # (N, S)
    E = model.embed(ids)  # (N, S, d_model)
    h = model.attention.heads()[head]
    # Right padding and causal attention: a real query never sees a padding key, so the padded
    # rows can be ignored and the real ones are exact.
    return HeadView(sentences, h.pattern(E), h.queries(E), h.keys(E),
                    [len(s.words) for s in sentences])


@dataclass(frozen=True)
class AdjectiveShare:
    """Share of each noun's attention on its own preceding adjectives (nouns with ≥ 1 adjective).

    ``shares`` one value per noun; ``by_count[n]`` the mean over nouns with ``n`` adjectives.
    """

    mean: float
    minimum: float
    shares: list[float]
    by_count: dict[int, float]

    def __str__(self) -> str:
        counts = ", ".join(f"{n} adj: {v:.3f}" for n, v in sorted(self.by_count.items()))
        return (f"noun → own-adjective attention share: mean {self.mean:.3f}, min "
                f"{self.minimum:.3f} over {len(self.shares)} nouns ({counts})")


def adjective_share(view: HeadView) -> AdjectiveShare:
    """How much of each noun's attention lands on its own adjectives."""
    shares: list[float] = []
    grouped: dict[int, list[float]] = {}
    for b, sentence in enumerate(view.sentences):
        for noun, adjectives in sentence.adjectives_of.items():
            if not adjectives:
                continue
            share = float(view.pattern[b, noun, list(adjectives)].sum())
            shares.append(share)
            grouped.setdefault(len(adjectives), []).append(share)
    if not shares:
        raise AttnkitError("none of the sentences has a noun with an adjective; nothing to measure")
    return AdjectiveShare(
        mean=sum(shares) / len(shares), minimum=min(shares), shares=shares,
        by_count={n: sum(v) / len(v) for n, v in grouped.items()},
    )


@dataclass(frozen=True)
class Alignment:
    """Mean scaled dot products ``Q_noun · K / sqrt(d_key)`` of noun queries against the keys
    before them, split by what the key is: the noun's own adjectives, another noun's adjectives,
    and every other key (determiners, nouns, verbs, the noun itself)."""

    own_adjectives: float
    other_adjectives: float
    other_keys: float

    def __str__(self) -> str:
        return (f"noun query · key: own adjectives {self.own_adjectives:+.2f}, other nouns' "
                f"adjectives {self.other_adjectives:+.2f}, other keys {self.other_keys:+.2f}")


def qk_alignment(view: HeadView) -> Alignment:
    """The notes' picture, measured: do noun queries align with their adjectives' keys?"""
    groups: dict[str, list[float]] = {"own": [], "other_adj": [], "other": []}
    scale = 1.0 / math.sqrt(view.queries.shape[-1])
    for b, sentence in enumerate(view.sentences):
        all_adjectives = {a for adjs in sentence.adjectives_of.values() for a in adjs}
        for noun, adjectives in sentence.adjectives_of.items():
            dots = (view.keys[b, : noun + 1] @ view.queries[b, noun]) * scale  # (noun + 1,)
            for j in range(noun + 1):
                group = ("own" if j in adjectives else
                         "other_adj" if j in all_adjectives else "other")
                groups[group].append(float(dots[j]))

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    return Alignment(mean(groups["own"]), mean(groups["other_adj"]), mean(groups["other"]))


def attention_by_class(view: HeadView) -> dict[str, dict[str, float]]:
    """What every kind of query does: for each query word class, the mean share of its attention
    on each key word class, plus ``"itself"`` (its own position) and ``"first"`` (position 0).

    For nouns, "adjective" includes other nouns' adjectives; ``adjective_share`` separates them.
    """
    totals: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for b, sentence in enumerate(view.sentences):
        classes = [WORD_CLASSES[w] for w in sentence.words]
        for i, q_class in enumerate(classes):
            row = view.pattern[b, i, : i + 1]  # (i + 1,)
            acc = totals.setdefault(q_class, {})
            for j, k_class in enumerate(classes[: i + 1]):
                acc[k_class] = acc.get(k_class, 0.0) + float(row[j])
            acc["itself"] = acc.get("itself", 0.0) + float(row[i])
            acc["first"] = acc.get("first", 0.0) + float(row[0])
            counts[q_class] = counts.get(q_class, 0) + 1
    return {q: {k: v / counts[q] for k, v in sorted(acc.items())} for q, acc in totals.items()}


def format_by_class(table: dict[str, dict[str, float]]) -> str:
    """``attention_by_class`` as a text table (rows: query class; columns: key class)."""
    cols = ["determiner", "adjective", "noun", "verb", "mark", "itself", "first"]
    lines = ["query ↓ / key →  " + " ".join(f"{c:>10}" for c in cols)]
    for q_class in ["determiner", "adjective", "noun", "verb", "mark"]:
        if q_class in table:
            row = table[q_class]
            lines.append(f"{q_class:<16} " + " ".join(f"{row.get(c, 0.0):>10.3f}" for c in cols))
    return "\n".join(lines)
