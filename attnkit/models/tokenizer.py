"""A word-level tokenizer for small models with a fixed vocabulary, called like a Hugging Face
tokenizer.

One token per word or punctuation mark, lower-cased; a word outside the vocabulary is an error
that lists every unknown word (the toy models have no unknown-word token on purpose: they could
only guess what such a word means).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from attnkit.errors import AttnkitError

PAD = "<pad>"
_TOKEN = re.compile(r"[A-Za-z]+|[^\sA-Za-z]")


class ToyTokenizer:
    """``tokenizer(text, return_tensors="pt")`` → ``{"input_ids", "attention_mask"}``, ``(B, S)``.

    ``vocab`` lists the words in id order and includes ``<pad>``. A list of texts is padded on the
    right with ``<pad>`` (attention_mask 0 there).
    """

    def __init__(self, vocab: Sequence[str]):
        if PAD not in vocab:
            raise AttnkitError(f"the vocabulary must include the padding token {PAD!r}")
        self.vocab: list[str] = list(vocab)
        self.ids: dict[str, int] = {w: i for i, w in enumerate(self.vocab)}
        self.pad_token, self.pad_token_id = PAD, self.ids[PAD]

    def __len__(self) -> int:
        return len(self.vocab)

    def split(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        """Words of ``text`` (lower-cased) with their ``(start, end)`` character offsets."""
        return [(m.group().lower(), m.span()) for m in _TOKEN.finditer(text)]

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text``; raises ``AttnkitError`` naming every word outside the
        vocabulary."""
        words = [w for w, _ in self.split(text)]
        unknown = sorted({w for w in words if w not in self.ids})
        if unknown:
            raise AttnkitError(
                f"the toy model does not know the word(s) {', '.join(map(repr, unknown))}; "
                f"it knows only the {len(self.vocab) - 1} words of its grammar: "
                + ", ".join(w for w in self.vocab if w != PAD)
            )
        if not words:
            raise AttnkitError("the text is empty; give at least one word, e.g. "
                               "'a fluffy creature'")
        return words

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.ids[t] for t in tokens]

    def convert_ids_to_tokens(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.vocab[int(i)] for i in ids]

    def __call__(self, text: str | Sequence[str], return_tensors: str | None = None,
                 return_offsets_mapping: bool = False, truncation: bool = False,
                 max_length: int | None = None) -> dict:
        """Encode one text or a list of texts.

        Returns ``input_ids`` and ``attention_mask`` (``(B, S)`` tensors with
        ``return_tensors="pt"``, else lists; for one text without tensors, flat lists), and with
        ``return_offsets_mapping`` the ``(start, end)`` character span of every token. With
        ``truncation=True`` each text keeps its first ``max_length`` tokens (as Hugging Face
        tokenizers do).
        """
        if return_tensors not in (None, "pt"):
            raise AttnkitError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or "
                               "None")
        if truncation and (max_length is None or max_length < 1):
            raise AttnkitError(f"truncation=True needs max_length, a positive number of tokens; "
                               f"got {max_length!r}")
        keep = max_length if truncation else None
        texts = [text] if isinstance(text, str) else list(text)
        encoded = [self.convert_tokens_to_ids(self.tokenize(t))[:keep] for t in texts]
        offsets = [[span for _, span in self.split(t)][:keep] for t in texts]
        width = max(len(ids) for ids in encoded)
        input_ids = [ids + [self.pad_token_id] * (width - len(ids)) for ids in encoded]
        mask = [[1] * len(ids) + [0] * (width - len(ids)) for ids in encoded]
        spans = [o + [(0, 0)] * (width - len(o)) for o in offsets]
        out: dict = {"input_ids": input_ids, "attention_mask": mask}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        if return_tensors == "pt":
            return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        if isinstance(text, str):
            return {k: v[0] for k, v in out.items()}
        return out
