"""Rank every head of a model by a relation between words — for now "adjectives": how much of each
noun's attention falls on its own adjectives, over a labelled set of sentences.

Labels are per word; a tokenizer that splits a word into pieces gets them mapped through character
offsets, so a noun's score is the mean over its pieces of the mass on all pieces of its adjectives.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn

__all__ = ["find_heads", "HeadRanking", "RELATIONS", "Labelled", "labelled_sentences"]

RELATIONS = {
    "adjectives": "each noun's attention on its own adjectives (attributive, before the noun)",
}

Span = tuple[int, int]  # (start, end) character offsets in the text


@dataclass(frozen=True)
class Labelled:
    """One sentence with the relation marked: ``links`` maps a noun's character span to the spans
    of its adjectives."""

    text: str
    links: dict[Span, tuple[Span, ...]]


_WORD = re.compile(r"[A-Za-z]+")


def _resolve(text: str, pairs: list[list[str]]) -> dict[Span, tuple[Span, ...]]:
    """Turn ``[adjective, noun]`` word pairs into character spans (see adjective_sentences.json:
    a noun is its first occurrence, or ``word#k`` its k-th; an adjective its nearest occurrence
    before the noun)."""
    words = [(m.group().lower(), m.span()) for m in _WORD.finditer(text)]
    links: dict[Span, list[Span]] = {}
    for adjective, noun in pairs:
        name, _, nth = noun.lower().partition("#")
        spots = [span for w, span in words if w == name]
        if len(spots) < int(nth or 1):
            raise ValueError(f"labelled noun {noun!r} is not in the sentence {text!r}")
        noun_span = spots[int(nth or 1) - 1]
        before = [span for w, span in words if w == adjective.lower() and span[1] <= noun_span[0]]
        if not before:
            raise ValueError(f"labelled adjective {adjective!r} does not come before {noun!r} in "
                             f"{text!r}")
        links.setdefault(noun_span, []).append(before[-1])
    return {n: tuple(a) for n, a in links.items()}


def labelled_sentences() -> list[Labelled]:
    """The real English sentences shipped for the "adjectives" relation (written for attnkit)."""
    raw = json.loads((resources.files("attnkit") / "data" / "adjective_sentences.json").read_text())
    return [Labelled(s["text"], _resolve(s["text"], s["pairs"])) for s in raw["sentences"]]


def _toy_sentences(n: int = 100) -> list[Labelled]:
    """Held-out sentences of the toy grammar, labelled (the toy model knows no other words)."""
    from attnkit.experiments.grammar import generate

    out = []
    for sentence in generate(n, seed=4321, held_out=True):
        spans, at = [], 0
        for word in sentence.words:
            spans.append((at, at + len(word)))
            at += len(word) + 1
        links = {spans[noun]: tuple(spans[a] for a in adjs)
                 for noun, adjs in sentence.adjectives_of.items() if adjs}
        out.append(Labelled(sentence.text, links))
    return out


@dataclass(frozen=True)
class HeadRanking:
    """Every head scored for one relation, best first.

    ``ranking``: ``(layer, head, score)``, where score is the mean over labelled nouns of the share
    of the noun's attention on its own adjectives. ``baseline``: what a head attending uniformly
    to the noun and every token before it would score; ``baseline_all``: uniformly to the whole
    sentence (a flat bidirectional head); ``baseline_previous``: a head that puts all of each
    token's attention on the token just before it — a common head in real models, and one that
    scores well here without knowing anything about adjectives, since an adjective usually sits
    right before its noun. ``beyond_previous[(layer, head)]``: the same share counting only the
    adjective tokens that are *not* right before the noun, over the ``n_beyond`` nouns that have
    such tokens (several adjectives, or an adjective cut into pieces) — where a previous-token
    head scores nothing; ``baseline_beyond`` is the uniform-preceding baseline for it.
    """

    relation: str
    model_name: str
    ranking: list[tuple[int, int, float]]
    baseline: float
    baseline_all: float
    baseline_previous: float
    n_sentences: int
    n_nouns: int
    beyond_previous: dict[tuple[int, int], float]
    baseline_beyond: float
    n_beyond: int

    @property
    def best(self) -> tuple[int, int]:
        """``(layer, head)`` of the top-ranked head."""
        return self.ranking[0][0], self.ranking[0][1]

    def table(self, top: int | None = 10) -> str:
        """The ranking as text: rank, layer, head, score, and score / baseline."""
        rows = self.ranking if top is None else self.ranking[:top]
        pad = 57
        lines = [f"{self.relation}: {RELATIONS[self.relation]}",
                 f"model {self.model_name}; {self.n_nouns} nouns in {self.n_sentences} sentences",
                 f"{'baseline, uniform over the noun and the tokens before it:':<{pad}} "
                 f"{self.baseline:.3f}",
                 f"{'baseline, uniform over the whole sentence:':<{pad}} {self.baseline_all:.3f}",
                 f"{'control, all attention on the previous token:':<{pad}} "
                 f"{self.baseline_previous:.3f}",
                 f"beyond the previous token ({self.n_beyond} nouns), uniform baseline: "
                 f"{self.baseline_beyond:.3f}",
                 "", f"{'rank':>4} {'layer':>5} {'head':>4} {'score':>6} {'x baseline':>10} "
                     f"{'beyond previous':>15}"]
        for i, (layer, head, score) in enumerate(rows, 1):
            beyond = self.beyond_previous.get((layer, head), float("nan"))
            lines.append(f"{i:>4} {layer:>5} {head:>4} {score:>6.3f} "
                         f"{score / self.baseline:>10.1f} {beyond:>15.3f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _pieces(offsets: list[Span], span: Span) -> list[int]:
    """Indices of the tokens whose character offsets fall inside ``span``."""
    s, e = span
    return [i for i, (ts, te) in enumerate(offsets) if te > ts and ts < e and te > s]


def _offsets(tokenizer: Any, text: str) -> list[Span]:
    enc = tokenizer(text, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if offsets and isinstance(offsets[0], list | tuple) and offsets[0] and \
            isinstance(offsets[0][0], list | tuple):
        offsets = offsets[0]
    return [(int(a), int(b)) for a, b in offsets]


def _load(model: str | nn.Module, tokenizer: Any) -> tuple[nn.Module, Any, str]:
    from attnkit import models

    if isinstance(model, str):
        net, tok = models.load_model(model)
        return net, tok, model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a name (e.g. 'minilm', 'toy') or a loaded nn.Module; got "
                        f"{type(model).__name__}")
    if tokenizer is None:
        config = getattr(model, "config", None)
        vocab = getattr(config, "vocab", None)
        if vocab is not None:  # the toy model carries its vocabulary
            from attnkit.experiments.tokenizer import ToyTokenizer

            tokenizer = ToyTokenizer(vocab)
        else:
            raise ValueError("a loaded model needs its tokenizer: find_heads(model, "
                             "tokenizer=tokenizer), or pass a name such as 'minilm'")
    return model, tokenizer, models.model_info(model)["model_name"]


_CACHE: dict[tuple[str, str], HeadRanking] = {}


def find_heads(model: str | nn.Module = "minilm", relation: str = "adjectives",
               top: int | None = None, *, tokenizer: Any = None,
               sentences: list[Labelled] | None = None) -> HeadRanking:
    """Rank every head of ``model`` by ``relation``; ``top`` keeps only the best ``top`` heads.

    ``model``: "minilm", "toy", a Hugging Face id or path, or a loaded model (with its
    ``tokenizer``). The sentences are the shipped labelled set of real English
    (``labelled_sentences()``), or for the toy model held-out sentences of its grammar; pass
    ``sentences`` to use your own.
    """
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; known relations: "
                         + ", ".join(f"{k!r} ({v})" for k, v in RELATIONS.items()))
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top <= 0):
        raise ValueError(f"top must be a positive number of heads (or None for all); got {top!r}")
    key = (model, relation) if isinstance(model, str) and sentences is None else None
    if key is not None and key in _CACHE:
        result = _CACHE[key]
    else:
        result = _rank(*_load(model, tokenizer), relation, sentences)
        if key is not None:
            _CACHE[key] = result
    if top is None:
        return result
    return HeadRanking(**{**result.__dict__, "ranking": result.ranking[:top]})


def _rank(net: nn.Module, tokenizer: Any, name: str, relation: str,
          sentences: list[Labelled] | None) -> HeadRanking:
    from attnkit import models

    if sentences is None:
        toy = getattr(getattr(net, "config", None), "vocab", None) is not None
        sentences = _toy_sentences() if toy else labelled_sentences()
    info = models.model_info(net)
    n_layers, n_heads = info["n_layers"], info["n_heads"]
    threads = torch.get_num_threads()
    if sum(p.numel() for p in net.parameters()) < _SMALL:
        # Short sentences through a small model: tiny matrices, where one thread is several
        # times faster than many waiting on each other.
        torch.set_num_threads(1)
    try:
        return _score(net, tokenizer, name, relation, sentences, n_layers, n_heads)
    finally:
        torch.set_num_threads(threads)


_SMALL = 50_000_000  # parameters


def _score(net: nn.Module, tokenizer: Any, name: str, relation: str, sentences: list[Labelled],
           n_layers: int, n_heads: int) -> HeadRanking:
    from attnkit import models

    totals = torch.zeros(n_layers, n_heads, dtype=torch.float64)  # (L, H) sum of noun shares
    base_causal = base_all = base_previous = base_beyond = 0.0
    beyond = torch.zeros(n_layers, n_heads, dtype=torch.float64)  # (L, H)
    n_nouns = n_beyond = 0
    for item in sentences:
        offsets = _offsets(tokenizer, item.text)
        cap = models.run_and_capture(net, tokenizer, item.text)
        S = cap.seq_len()
        if len(offsets) != S:
            raise ValueError(f"the tokenizer's offsets ({len(offsets)} tokens) do not match the "
                             f"model's input ({S} tokens) for {item.text!r}")
        for noun_span, adj_spans in item.links.items():
            rows = _pieces(offsets, noun_span)
            cols = sorted({i for span in adj_spans for i in _pieces(offsets, span)})
            if not rows or not cols:
                raise ValueError(f"no tokens for a labelled word in {item.text!r}")
            rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
            far = torch.tensor([c != rows[0] - 1 for c in cols])  # (C,) not right before
            for layer in range(n_layers):
                for head in range(n_heads):
                    p = cap.pattern(layer, head, rows=rows_t, cols=cols_t)  # (R, C)
                    totals[layer, head] += float(p.sum(-1).mean())
                    if far.any():
                        beyond[layer, head] += float(p[:, far].sum(-1).mean())
            if far.any():
                far_cols = [c for c, f in zip(cols, far.tolist(), strict=True) if f]
                base_beyond += sum(sum(c <= r for c in far_cols) / (r + 1)
                                   for r in rows) / len(rows)
                n_beyond += 1
            base_causal += sum(sum(c <= r for c in cols) / (r + 1) for r in rows) / len(rows)
            base_all += len(cols) / S
            base_previous += sum(r - 1 in cols for r in rows) / len(rows)
            n_nouns += 1
    if n_nouns == 0:
        raise ValueError("the labelled sentences have no noun with an adjective; nothing to rank")
    scores = totals / n_nouns  # (L, H)
    ranking = sorted(((lay, hd, float(scores[lay, hd])) for lay in range(n_layers)
                      for hd in range(n_heads)), key=lambda t: -t[2])
    beyond = beyond / max(n_beyond, 1)  # (L, H)
    return HeadRanking(relation, name, ranking, base_causal / n_nouns, base_all / n_nouns,
                       base_previous / n_nouns, len(sentences), n_nouns,
                       {(lay, hd): float(beyond[lay, hd]) for lay in range(n_layers)
                        for hd in range(n_heads)} if n_beyond else {},
                       base_beyond / max(n_beyond, 1), n_beyond)
