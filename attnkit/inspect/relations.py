"""Relations on token ids for the head-ranking engine: ``previous-token``, ``duplicate-token``,
``induction`` and ``sink``, and relations of your own from a function of the token ids.

A ``TokenRelation`` pairs a rule — for one sequence of token ids (and its text, when there is
one), which keys count for which queries — with the inputs it is scored on: texts (given ones,
the shipped English sentences, or random tokens for a model that cannot read English), random
tokens, or random tokens repeated twice, at any length the model reads (``with_length(n)``).

    keys_for(ids, text) -> {query position: [key positions]}   # ids (S,), text str or None

Each query listed is one item; its score is the total attention it puts on its keys. Positions
of the tokenizer's special tokens ([CLS], [SEP], …) are never queries in the built-in rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import torch
from torch import nn

from attnkit.errors import AttnkitError, InputTypeError
from attnkit.inspect.families import describe
from attnkit.inspect.heads import UNIFORM, Control, Example, Targets, register_relation
from attnkit.runtime import check_positive_int

__all__ = ["TokenRelation", "relation_from_function", "KeysFor", "previous_token",
           "duplicate_token", "induction", "sink", "shipped_texts", "INPUT_KINDS",
           "DEFAULT_LENGTH", "DEFAULT_SEQUENCES", "HELD_OUT_SEED"]

KeysFor = Callable[[torch.Tensor, "str | None"], "Mapping[int, Sequence[int]] | Targets"]
"""``keys_for(ids (S,), text or None) -> {query: keys}`` (or ``Targets``) for one sequence."""

INPUT_KINDS = {
    "text": "texts: the given ones, else the shipped English sentences (random tokens for a "
            "tokenizer that cannot read them, or when a length is asked for)",
    "random": "random tokens",
    "repeated": "random tokens, the same ones twice",
}

DEFAULT_LENGTH = 64
"""Tokens per generated input (less when the model reads fewer)."""

DEFAULT_SEQUENCES = 20
"""Generated inputs per ranking."""

HELD_OUT_SEED = 1_000_003
"""The seed of generated inputs: not the seed any attnkit model was trained with."""

_BRACKETED = re.compile(r"^\[.*\]$|^<.*>$")


def shipped_texts() -> list[str]:
    """The shipped English sentences (those labelled for the "adjectives" relation)."""
    raw = json.loads((resources.files("attnkit") / "data" / "adjective_sentences.json")
                     .read_text())
    return [s["text"] for s in raw["sentences"]]


def _special_ids(tokenizer: Any) -> set[int]:
    ids = getattr(tokenizer, "all_special_ids", None)
    if ids is None:
        pad = getattr(tokenizer, "pad_token_id", None)
        ids = [] if pad is None else [pad]
    return {int(i) for i in ids}


def _ordinary_ids(tokenizer: Any) -> torch.Tensor:
    """Ids a random input may use: not special, not a bracketed placeholder ([unused3], <s>)."""
    special = _special_ids(tokenizer)
    names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keep = [i for i, name in enumerate(names)
            if i not in special and not _BRACKETED.match(str(name))]
    if len(keep) < 2:
        raise AttnkitError("the tokenizer has fewer than 2 ordinary tokens to make random "
                           "inputs from")
    return torch.tensor(keep)


def _special_wrapping(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids a tokenizer puts before and after a text (``[CLS]``, ``[SEP]``), read off
    one encoding with and one without them; none for a tokenizer without that switch."""
    probe = "the"
    try:
        plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    except TypeError:  # attnkit's word tokenizer: no special tokens
        return [], []
    full = list(tokenizer(probe)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


@dataclass
class TokenRelation:
    """A relation between token positions and the inputs it is scored on.

    Args:
        name, description: what rankings are titled with.
        keys_for: ``keys_for(ids (S,), text or None) -> {query: [keys]}`` (or a ``Targets``).
        kind: "text", "random" or "repeated" (``INPUT_KINDS``).
        texts: the texts of a "text" relation (None: the shipped sentences).
        length: tokens per generated input, special tokens included (None: ``DEFAULT_LENGTH``
            or the model's limit; for "text", a length switches to random tokens).
        n: how many generated inputs.
        seed: of the generated inputs.
        controls: hypothetical heads scored beside the uniform baseline (see ``Control``).
        skip_special: never make a special-token position ([CLS], [SEP], padding) a query.
        primary: the baseline the ranking's ``x baseline`` divides by (default: uniform over
            the keys each query may see).
    """

    name: str
    description: str
    keys_for: KeysFor
    kind: str = "text"
    texts: tuple[str, ...] | None = None
    length: int | None = None
    n: int = DEFAULT_SEQUENCES
    seed: int = HELD_OUT_SEED
    controls: Mapping[str, Control] | None = None
    skip_special: bool = True
    primary: str = UNIFORM

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise AttnkitError(f"kind must be one of {', '.join(map(repr, INPUT_KINDS))}; got "
                               f"{self.kind!r}")
        if not callable(self.keys_for):
            raise InputTypeError(f"keys_for must be a function (ids, text) -> {{query: keys}}; "
                                 f"got {type(self.keys_for).__name__}")
        check_positive_int("n", self.n)
        check_positive_int("length", self.length, allow_none=True)
        if self.texts is not None:
            if isinstance(self.texts, str) or not all(isinstance(t, str) for t in self.texts):
                raise InputTypeError("texts must be a list of strings")
            self.texts = tuple(self.texts)
        self.controls = dict(self.controls or {})
        self._used = ""  # what the last examples() call scored on, in words

    def with_length(self, length: int) -> TokenRelation:
        """The same relation on generated inputs of ``length`` tokens (special tokens included)."""
        return replace(self, length=check_positive_int("length", length))

    def inputs(self) -> str:
        """What the last ``examples`` call scored (or will score) on, in words."""
        return self._used or INPUT_KINDS[self.kind]

    # ---- inputs ----------------------------------------------------------------------------

    def examples(self, model: nn.Module, tokenizer: Any) -> list[Example]:
        if tokenizer is None:
            raise AttnkitError(f"relation {self.name!r} needs the model's tokenizer")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        special = _special_ids(tokenizer)
        if self.kind == "text" and self.length is None:
            encoded = self._encode_texts(tokenizer, describe(model).max_len)
            if encoded is not None:
                return [self._example(inputs, text, special, device)
                        for inputs, text in encoded]
        generated = [{"input_ids": ids[None], "attention_mask": torch.ones_like(ids[None])}
                     for ids in self._generate(model, tokenizer)]
        return [self._example(inputs, None, special, device) for inputs in generated]

    def _encode_texts(self, tokenizer: Any, max_len: int | None
                      ) -> list[tuple[dict[str, torch.Tensor], str]] | None:
        """The texts tokenized, or None when a tokenizer that cannot read the shipped sentences
        (a toy vocabulary) should get random tokens instead."""
        texts = list(self.texts) if self.texts is not None else shipped_texts()
        if not texts:
            raise AttnkitError(f"relation {self.name!r} got no texts; give at least one")
        out = []
        try:
            for text in texts:
                inputs = dict(tokenizer(text, return_tensors="pt"))
                if max_len is not None and inputs["input_ids"].shape[-1] > max_len:
                    raise AttnkitError(f"a text of relation {self.name!r} is "
                                       f"{inputs['input_ids'].shape[-1]} tokens, over the "
                                       f"model's limit of {max_len}: {text[:60]!r}…")
                out.append((inputs, text))
        except AttnkitError:
            if self.texts is not None:
                raise  # the caller's own texts: say what is wrong with them
            return None
        self._used = (f"{len(texts)} shipped English sentences" if self.texts is None
                      else f"{len(texts)} given texts")
        return out

    def _generate(self, model: nn.Module, tokenizer: Any) -> list[torch.Tensor]:
        """``n`` generated id sequences of the chosen length, special tokens added."""
        max_len = describe(model).max_len
        before, after = _special_wrapping(tokenizer)
        n_special = len(before) + len(after)
        length = self.length or (DEFAULT_LENGTH if max_len is None else min(DEFAULT_LENGTH,
                                                                            max_len))
        if max_len is not None and length > max_len:
            raise AttnkitError(f"length {length} is longer than the model reads ({max_len} "
                               f"tokens); give a length of at most {max_len}")
        body = length - n_special
        repeated = self.kind == "repeated"
        if body < (2 if repeated else 1):
            raise AttnkitError(f"length {length} leaves no room for the inputs of relation "
                               f"{self.name!r} beside the tokenizer's {n_special} special "
                               f"tokens; give a length of at least {n_special + 2}")
        pool = _ordinary_ids(tokenizer)
        generator = torch.Generator().manual_seed(self.seed)
        out = []
        half = body // 2 if repeated else body
        lead = body - 2 * half if repeated else 0  # one token before the copies when odd
        for _ in range(self.n):
            # distinct tokens where the vocabulary allows: each token's earlier copy is unique
            if lead + half <= len(pool):
                chosen = pool[torch.randperm(len(pool), generator=generator)[:lead + half]]
            else:
                chosen = pool[torch.randint(len(pool), (lead + half,), generator=generator)]
            ids = chosen.tolist()
            if repeated:
                ids = ids[:lead] + ids[lead:] + ids[lead:]
            out.append(torch.tensor(before + ids + after))
        kind = {"random": "random tokens", "repeated": f"{body // 2} random tokens repeated "
                "twice", "text": "random tokens"}[self.kind]
        extra = f" with {n_special} special tokens" if n_special else ""
        self._used = (f"{self.n} generated sequences of {length} tokens ({kind}{extra}; seed "
                      f"{self.seed})")
        return out

    # ---- targets ---------------------------------------------------------------------------

    def targets(self, ids: torch.Tensor, text: str | None = None,
                special: set[int] | None = None) -> Targets:
        """The rule applied to one sequence ``ids (S,)``: one item per query it lists."""
        found = self.keys_for(ids, text)
        if isinstance(found, Targets):
            return found
        if not isinstance(found, Mapping):
            raise InputTypeError(f"keys_for of relation {self.name!r} must return a dict "
                                 f"{{query: [keys]}} or Targets; got {type(found).__name__}")
        skip = set()
        if self.skip_special and special:
            skip = {i for i, t in enumerate(ids.tolist()) if t in special}
        n = len(ids)
        query, key = [], []
        for q, keys in sorted(found.items()):
            keys = sorted({int(k) for k in keys})
            if int(q) in skip or not keys:
                continue
            bad = [x for x in (int(q), *keys) if not 0 <= x < n]
            if bad:
                raise AttnkitError(f"keys_for of relation {self.name!r} named position "
                                   f"{bad[0]} in a sequence of {n} tokens (positions 0..{n - 1})")
            query += [int(q)] * len(keys)
            key += keys
        return Targets.from_pairs(torch.tensor(query, dtype=torch.long),
                                  torch.tensor(key, dtype=torch.long))

    def _example(self, inputs: dict[str, torch.Tensor], text: str | None, special: set[int],
                 device: torch.device) -> Example:
        ids = inputs["input_ids"][0].cpu()
        targets = self.targets(ids, text, special)
        return Example({k: v.to(device) for k, v in inputs.items()}, targets)


def relation_from_function(name: str, keys_for: KeysFor, *, kind: str = "text",
                           texts: Sequence[str] | None = None, length: int | None = None,
                           n: int = DEFAULT_SEQUENCES, seed: int = HELD_OUT_SEED,
                           description: str | None = None,
                           controls: Mapping[str, Control] | None = None) -> TokenRelation:
    """A relation of your own: ``keys_for(ids (S,), text) -> {query: [keys]}`` says, for one
    sequence, which keys count for which queries; ``kind`` says what inputs it is scored on
    ("text": ``texts`` or the shipped sentences; "random"; "repeated").

    >>> def same_word_earlier(ids, text):
    ...     return {q: [k for k in range(q) if ids[k] == ids[q]] for q in range(len(ids))}
    >>> rel = relation_from_function("same token earlier", same_word_earlier, kind="repeated")
    >>> attnkit.find_heads("induction", relation=rel).table(3)
    """
    return TokenRelation(name, description or name, keys_for, kind=kind,
                         texts=None if texts is None else tuple(texts), length=length, n=n,
                         seed=seed, controls=controls)


# ---- the built-in rules -----------------------------------------------------------------------


def _previous(ids: torch.Tensor, text: str | None) -> dict[int, list[int]]:
    return {q: [q - 1] for q in range(1, len(ids))}


def _first(ids: torch.Tensor, text: str | None) -> dict[int, list[int]]:
    return {q: [0] for q in range(1, len(ids))}


def _earlier_copies(ids: torch.Tensor) -> dict[int, list[int]]:
    """query → the earlier positions holding the same token."""
    seen: dict[int, list[int]] = {}
    out = {}
    for q, token in enumerate(ids.tolist()):
        before = seen.setdefault(token, [])
        if before:
            out[q] = list(before)
        before.append(q)
    return out


def _duplicates(ids: torch.Tensor, text: str | None) -> dict[int, list[int]]:
    return _earlier_copies(ids)


def _after_copies(ids: torch.Tensor, text: str | None) -> dict[int, list[int]]:
    """query → the tokens right after its earlier copies (not the query itself)."""
    return {q: [j + 1 for j in copies if j + 1 < q]
            for q, copies in _earlier_copies(ids).items()}


def _on_previous(targets: Targets, seq_len: int) -> torch.Tensor:
    return (targets.key == targets.query - 1).double()


def _on_first(targets: Targets, seq_len: int) -> torch.Tensor:
    return (targets.key == 0).double()


PREVIOUS = "all attention on the previous token"
FIRST = "all attention on the first token"


def previous_token(**options: Any) -> TokenRelation:
    """Each token → the token just before it; on texts (or random tokens)."""
    return TokenRelation("previous-token", "each token's attention on the token just before it",
                         _previous, kind="text", controls={FIRST: _on_first}, **options)


def sink(**options: Any) -> TokenRelation:
    """Each token after the first → the first token; on texts (or random tokens)."""
    return TokenRelation("sink", "each token's attention on the first token of the sequence",
                         _first, kind="text", controls={PREVIOUS: _on_previous}, **options)


def duplicate_token(**options: Any) -> TokenRelation:
    """Each repeated token → its earlier copies; on random tokens repeated twice."""
    return TokenRelation("duplicate-token", "each repeated token's attention on its earlier "
                         "copies", _duplicates, kind="repeated",
                         controls={PREVIOUS: _on_previous, FIRST: _on_first}, **options)


def induction(**options: Any) -> TokenRelation:
    """Each repeated token → the token that followed its earlier copy; on random tokens repeated
    twice (TransformerLens' induction score, at any length)."""
    return TokenRelation("induction", "each repeated token's attention on the token after its "
                         "earlier copy", _after_copies, kind="repeated",
                         controls={PREVIOUS: _on_previous, FIRST: _on_first}, **options)


for _name, _factory in (("previous-token", previous_token), ("duplicate-token", duplicate_token),
                        ("induction", induction), ("sink", sink)):
    register_relation(_name, _factory)
