"""Running a model on a text for inspection: tokenize, check the length, capture.

The same for every family of models (Hugging Face, or attnkit's own) and any tokenizer called like
a Hugging Face one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnkit.errors import AttnkitError, InputTypeError
from attnkit.inspect.capture import Capture, capture
from attnkit.inspect.families import describe

__all__ = ["check_text", "count_tokens", "encode", "run_and_capture", "CHARS_PER_TOKEN"]

CHARS_PER_TOKEN = 100  # more characters than any tokenizer's token holds: a cheap length bound


def check_text(text: Any, max_tokens: int | None = None) -> str:
    """``text`` when it is a non-empty string that can be written as UTF-8, else a clear error.

    With ``max_tokens``, a text so long that it must exceed that many tokens is refused before
    anything tokenizes it (a 5 MB text would take a tokenizer a second and a gigabyte)."""
    if not isinstance(text, str):
        raise InputTypeError(f"the text must be a str; got {type(text).__name__}")
    if not text.strip():
        raise AttnkitError("the text is empty; give at least one word")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start:err.end]
        if all("\udc80" <= c <= "\udcff" for c in bad):  # bytes a decoder could not read
            raw = bytes(ord(c) - 0xDC00 for c in bad)
            raise AttnkitError(f"the text has bytes that are not valid UTF-8 ({raw!r} at "
                               f"position {err.start}); save or pass the text as UTF-8") from None
        raise AttnkitError(f"the text has a character that is not valid Unicode text "
                           f"({bad!r} at position {err.start}, a lone surrogate); remove it or "
                           "decode the text correctly") from None
    if max_tokens is not None and len(text) > CHARS_PER_TOKEN * max_tokens:
        raise AttnkitError(f"the text is {len(text):,} characters, far over the limit of "
                           f"{max_tokens:,} tokens; shorten it")
    return text


def count_tokens(tokenizer: Any, text: str, max_tokens: int | None = None) -> int:
    """How many tokens ``tokenizer`` makes of ``text`` (special tokens included); a text that
    cannot fit in ``max_tokens`` is refused without tokenizing it."""
    text = check_text(text, max_tokens)
    return int(tokenizer(text, return_tensors="pt")["input_ids"].shape[-1])


def encode(model: nn.Module, tokenizer: Any,
           text: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tokenize one text for ``model``: ``(inputs, tokens)`` where ``inputs`` are ``(1, S)``
    tensors on the model's device (``input_ids``, ``attention_mask``, ...) and ``tokens`` the S
    token strings."""
    max_len = describe(model).max_len
    inputs = dict(tokenizer(check_text(text, max_len), return_tensors="pt"))
    ids = inputs["input_ids"]
    tokens = [str(t) for t in tokenizer.convert_ids_to_tokens(ids[0].tolist())]
    if max_len is not None and ids.shape[1] > max_len:
        raise AttnkitError(f"the text is {ids.shape[1]} tokens but {type(model).__name__} reads "
                           f"at most {max_len}; shorten it")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return {k: v.to(device) for k, v in inputs.items()}, tokens


def run_and_capture(model: nn.Module, tokenizer: Any, text: str, layers: list[int] | None = None,
                    heads: list[int] | None = None) -> Capture:
    """Run ``model`` on ``text`` (no gradients) and return the ``Capture``; its ``tokens`` are the
    text's tokens."""
    inputs, _ = encode(model, tokenizer, text)
    with torch.no_grad(), capture(model, layers=layers, heads=heads, tokenizer=tokenizer) as cap:
        model(**inputs)
    return cap
