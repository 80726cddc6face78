"""The notes' relation for head detectors: each noun's attention on its own adjectives.

Labels are per word; a tokenizer that splits a word into pieces gets them mapped through character
offsets, so a noun's score is the mean over its pieces of the attention on all pieces of its
adjectives. The inputs are the shipped labelled real sentences, or, for a model that knows only
the toy grammar's words, held-out sentences of that grammar.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn

from attnkit.errors import AttnkitError
from attnkit.experiments.grammar import VOCAB, WORDS, generate
from attnkit.inspect.heads import Example, Targets, register_relation

__all__ = ["Labelled", "labelled_sentences", "toy_sentences", "AdjectiveRelation",
           "has_adjective_before_noun", "offsets", "pieces"]

Span = tuple[int, int]  # (start, end) character offsets in the text

BEYOND = "beyond the previous token"
"""The extra view: only adjective tokens that are not right before the noun, where a head that
just reads the previous token scores nothing."""


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
            raise AttnkitError(f"labelled noun {noun!r} is not in the sentence {text!r}")
        noun_span = spots[int(nth or 1) - 1]
        before = [span for w, span in words if w == adjective.lower() and span[1] <= noun_span[0]]
        if not before:
            raise AttnkitError(f"labelled adjective {adjective!r} does not come before {noun!r} "
                               f"in {text!r}")
        links.setdefault(noun_span, []).append(before[-1])
    return {n: tuple(a) for n, a in links.items()}


def labelled_sentences() -> list[Labelled]:
    """The real English sentences shipped for the "adjectives" relation (written for attnkit)."""
    raw = json.loads((resources.files("attnkit") / "data" / "adjective_sentences.json").read_text())
    return [Labelled(s["text"], _resolve(s["text"], s["pairs"])) for s in raw["sentences"]]


def toy_sentences(n: int = 100) -> list[Labelled]:
    """Held-out sentences of the toy grammar, labelled (the toy model knows no other words)."""
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


def has_adjective_before_noun(text: str) -> bool:
    """Whether ``text`` has an adjective before a noun (by the toy grammar's words)."""
    lower = [w.lower() for w in _WORD.findall(text)]
    adjectives, nouns = set(WORDS["adjectives"]), set(WORDS["nouns"])
    first = next((i for i, w in enumerate(lower) if w in adjectives), None)
    return first is not None and any(w in nouns for w in lower[first + 1:])


def pieces(token_offsets: list[Span], span: Span) -> list[int]:
    """Indices of the tokens whose character offsets fall inside ``span``."""
    s, e = span
    return [i for i, (ts, te) in enumerate(token_offsets) if te > ts and ts < e and te > s]


def offsets(tokenizer: Any, text: str) -> list[Span]:
    """Each token's ``(start, end)`` character span in ``text``, special tokens ``(0, 0)``."""
    enc = tokenizer(text, return_offsets_mapping=True)
    spans = enc["offset_mapping"]
    if spans and isinstance(spans[0], list | tuple) and spans[0] and \
            isinstance(spans[0][0], list | tuple):
        spans = spans[0]
    return [(int(a), int(b)) for a, b in spans]


def _reads_toy_grammar_only(tokenizer: Any) -> bool:
    """A tokenizer whose vocabulary is exactly the toy grammar's (the toy model's)."""
    return tuple(getattr(tokenizer, "vocab", ()) or ()) == VOCAB


def _causal_uniform(targets: Targets, seq_len: int) -> torch.Tensor:
    return (targets.key <= targets.query).double() / (targets.query + 1).double()


def _whole(targets: Targets, seq_len: int) -> torch.Tensor:
    return torch.full(targets.query.shape, 1.0 / seq_len, dtype=torch.float64)


def _previous(targets: Targets, seq_len: int) -> torch.Tensor:
    return (targets.key == targets.query - 1).double()


class AdjectiveRelation:
    """Nouns → their own adjectives. ``sentences``: the labelled inputs (default: the shipped
    real sentences, or held-out toy-grammar sentences for a tokenizer that reads only those)."""

    name = "adjectives"
    description = "each noun's attention on its own adjectives (attributive, before the noun)"
    controls = {
        "uniform over the noun and the tokens before it": _causal_uniform,
        "uniform over the whole sentence": _whole,
        "all attention on the previous token": _previous,
    }

    def __init__(self, sentences: list[Labelled] | None = None):
        self.sentences = sentences
        self._used = "given labelled sentences"

    def _choose(self, tokenizer: Any) -> list[Labelled]:
        if self.sentences is not None:
            return self.sentences
        if _reads_toy_grammar_only(tokenizer):
            self._used = "held-out sentences of the toy grammar"
            return toy_sentences()
        self._used = "the shipped labelled real English sentences"
        return labelled_sentences()

    def inputs(self) -> str:
        return self._used

    def examples(self, model: nn.Module, tokenizer: Any) -> list[Example]:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        out = []
        for item in self._choose(tokenizer):
            spans = offsets(tokenizer, item.text)
            inputs = {k: v.to(device) for k, v in tokenizer(item.text, return_tensors="pt").items()}
            if len(spans) != inputs["input_ids"].shape[1]:
                raise AttnkitError(f"the tokenizer's offsets ({len(spans)} tokens) do not match "
                                   f"its input ids ({inputs['input_ids'].shape[1]} tokens) for "
                                   f"{item.text!r}")
            groups, beyond = [], []
            for noun_span, adj_spans in item.links.items():
                rows = pieces(spans, noun_span)
                cols = sorted({i for span in adj_spans for i in pieces(spans, span)})
                if not rows or not cols:
                    raise AttnkitError(f"no tokens for a labelled word in {item.text!r}")
                groups.append((rows, cols))
                beyond.append((rows, [c for c in cols if c != rows[0] - 1]))
            out.append(Example(inputs, Targets.from_groups(groups),
                               {BEYOND: Targets.from_groups(beyond)}))
        return out


register_relation("adjectives", AdjectiveRelation)
