"""The toy language of the notes' example: ``det adj{0..3} noun verb det adj{0..3} noun mark``.

Built so that what follows a noun can only be predicted from *its own* adjectives: every adjective
is either gentle or fierce, the verb after the first noun tells whether that noun's adjectives were
all gentle, all fierce or mixed, and the closing mark after the second noun tells the same about the
second noun's adjectives. A noun's query therefore has a reason to look back at them.

A noun without adjectives counts as gentle ("a creature" is a gentle one). That choice matters: the
keys a bare noun can attend to (its determiner, itself) must then carry "gentle", so a described
noun that let part of its attention leak onto them would blur "fierce" into "mixed". Without it the
leak costs nothing and training stops at ~0.75 of each noun's attention on its adjectives (measured
while designing this; see docs/adjectives.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

GENTLE = ("fluffy", "blue", "verdant", "soft", "gentle", "quiet", "golden", "tiny")
FIERCE = ("fierce", "jagged", "crimson", "angry", "huge", "dark", "wild", "sharp")

WORDS: dict[str, list[str]] = {
    "determiners": ["a", "the", "this", "that", "one"],
    "adjectives": [*GENTLE, *FIERCE],
    "nouns": ["creature", "forest", "cat", "river", "dragon", "meadow",
              "bird", "mountain", "wolf", "garden", "knight", "castle"],
    "verbs": ["roamed", "wandered", "drifted", "stormed", "attacked", "crushed",
              "crossed", "watched", "guarded"],
    "marks": [".", "!", "?"],
}

VOCAB: tuple[str, ...] = ("<pad>", *(w for group in WORDS.values() for w in group))
"""The toy model's vocabulary in id order: padding, then every word of the grammar."""

MOODS = ("gentle", "fierce", "mixed")
"""What a noun's adjectives say together: all gentle (or none at all), all fierce, both kinds."""

VERBS_BY_MOOD: dict[str, tuple[str, ...]] = {
    "gentle": ("roamed", "wandered", "drifted"),
    "fierce": ("stormed", "attacked", "crushed"),
    "mixed": ("crossed", "watched", "guarded"),
}
MARK_BY_MOOD: dict[str, str] = {"gentle": ".", "fierce": "!", "mixed": "?"}

MAX_ADJECTIVES = 3
HELD_OUT_SEED = 1234  # fixed: the split must not move when the training seed does
_HELD_OUT_PER_KIND = 3  # per noun: 3 gentle + 3 fierce adjectives never seen with it in training


def mood(adjectives: list[str] | tuple[str, ...]) -> str:
    """The mood of a noun phrase's adjectives: "gentle" (also with none), "fierce" or "mixed"."""
    if not adjectives:
        return "gentle"
    kinds = {"gentle" if a in GENTLE else "fierce" for a in adjectives}
    return kinds.pop() if len(kinds) == 1 else "mixed"


@dataclass(frozen=True)
class Sentence:
    """One sentence of the toy language, with the adjective → noun links marked.

    ``words[i]`` is the i-th token; ``adjectives_of[n]`` lists the positions of the adjectives that
    belong to the noun at position ``n`` (empty when the noun has none).
    """

    words: tuple[str, ...]
    adjectives_of: dict[int, tuple[int, ...]]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def nouns(self) -> list[int]:
        return sorted(self.adjectives_of)


def held_out_pairs() -> frozenset[tuple[str, str]]:
    """The (adjective, noun) pairs that never occur in training sentences (fixed by HELD_OUT_SEED).

    Per noun, three gentle and three fierce adjectives: enough to build held-out noun phrases of
    every mood with up to three adjectives.
    """
    rng = random.Random(HELD_OUT_SEED)
    pairs = set()
    for noun in WORDS["nouns"]:
        for kind in (GENTLE, FIERCE):
            for adjective in rng.sample(kind, _HELD_OUT_PER_KIND):
                pairs.add((adjective, noun))
    return frozenset(pairs)


def _adjectives_for(noun: str, target: str, n: int, held_out: bool, rng: random.Random,
                    excluded: frozenset[tuple[str, str]]) -> list[str]:
    """``n`` distinct adjectives of mood ``target`` that may go with ``noun`` in this split."""
    def allowed(kind: tuple[str, ...]) -> list[str]:
        return [a for a in kind if ((a, noun) in excluded) == held_out]

    gentle, fierce = allowed(GENTLE), allowed(FIERCE)
    if n == 0:
        return []
    if target == "gentle":
        return rng.sample(gentle, n)
    if target == "fierce":
        return rng.sample(fierce, n)
    n_gentle = rng.randint(1, n - 1)  # mixed: at least one of each kind
    chosen = rng.sample(gentle, n_gentle) + rng.sample(fierce, n - n_gentle)
    rng.shuffle(chosen)
    return chosen


def _noun_phrase(rng: random.Random, held_out: bool, excluded: frozenset[tuple[str, str]],
                 allow_bare: bool) -> tuple[list[str], str]:
    """``det adj* noun`` with a mood drawn uniformly among those the adjective count allows."""
    noun = rng.choice(WORDS["nouns"])
    n = rng.randint(0 if allow_bare else 1, MAX_ADJECTIVES)
    if n == 0:
        target = "gentle"
    else:
        target = rng.choice(["gentle", "fierce", "mixed"] if n >= 2 else ["gentle", "fierce"])
    adjectives = _adjectives_for(noun, target, n, held_out, rng, excluded)
    return [rng.choice(WORDS["determiners"]), *adjectives, noun], target


def generate(n: int, *, seed: int, held_out: bool = False) -> list[Sentence]:
    """``n`` sentences ``det adj* noun verb det adj* noun mark``.

    ``held_out=False``: training sentences, which never contain a held-out (adjective, noun) pair.
    ``held_out=True``: sentences built only from held-out pairs, so every adjective–noun
    combination in them is new to a model trained on the other split; every noun has at least one
    adjective there, since a bare noun has nothing to attend to.
    """
    rng = random.Random(seed)
    excluded = held_out_pairs()
    sentences = []
    for _ in range(n):
        first, first_mood = _noun_phrase(rng, held_out, excluded, allow_bare=not held_out)
        second, second_mood = _noun_phrase(rng, held_out, excluded, allow_bare=not held_out)
        verb = rng.choice(VERBS_BY_MOOD[first_mood])
        words = (*first, verb, *second, MARK_BY_MOOD[second_mood])
        n1 = len(first) - 1
        n2 = len(first) + 1 + len(second) - 1
        sentences.append(Sentence(
            words=words,
            adjectives_of={n1: tuple(range(1, n1)), n2: tuple(range(len(first) + 2, n2))},
        ))
    return sentences


def label(words: list[str] | tuple[str, ...]) -> dict[int, tuple[int, ...]]:
    """Mark the adjective → noun links in any word sequence of the toy vocabulary.

    Each noun owns the adjectives that directly precede it (back to the previous non-adjective).
    """
    adjectives, nouns = set(WORDS["adjectives"]), set(WORDS["nouns"])
    links: dict[int, tuple[int, ...]] = {}
    for i, word in enumerate(words):
        if word in nouns:
            start = i
            while start > 0 and words[start - 1] in adjectives:
                start -= 1
            links[i] = tuple(range(start, i))
    return links
