"""``attnkit.find_heads``: rank every head of a model, named or loaded, by a relation, named or
given as an object.

The ranking engine is ``attnkit.inspect.heads``; the relations it knows by name are registered by
the modules that define them (the notes' "adjectives" by ``attnkit.experiments``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

import attnkit.experiments.adjective_heads  # noqa: F401  (registers "adjectives")
import attnkit.inspect.relations  # noqa: F401  (registers previous-token, induction, ...)
from attnkit.errors import AttnkitError, InputTypeError
from attnkit.inspect.heads import HeadRanking, Relation, rank_heads, relation_named
from attnkit.models import load_model

__all__ = ["find_heads"]


def find_heads(model: str | nn.Module = "minilm", relation: str | Relation = "adjectives", *,
               tokenizer: Any = None, length: int | None = None,
               progress: bool = False) -> HeadRanking:
    """Rank every head of ``model`` by ``relation``.

    ``model``: "minilm", "toy", "induction", a Hugging Face id or path, or a loaded model (with
    its ``tokenizer``; attnkit's own models carry theirs). ``relation``: a registered name
    ("adjectives", "previous-token", "duplicate-token", "induction", "sink"; see
    ``attnkit.inspect.heads.RELATIONS``) or a ``Relation`` object, whose own inputs are used.
    ``length``: score on generated inputs of that many tokens (relations that make their own
    inputs, e.g. "induction").
    """
    chosen = relation_named(relation) if isinstance(relation, str) else relation
    if length is not None:
        with_length = getattr(chosen, "with_length", None)
        if with_length is None:
            raise AttnkitError(f"relation {chosen.name!r} scores fixed inputs and takes no "
                               "length; length applies to relations that generate their "
                               "inputs: previous-token, duplicate-token, induction, sink")
        chosen = with_length(length)
    if isinstance(model, str):
        net, tokenizer = load_model(model)
        name = model
    elif isinstance(model, nn.Module):
        net, name = model, None
        if tokenizer is None:
            tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise AttnkitError("a loaded model needs its tokenizer: find_heads(model, "
                               "tokenizer=tokenizer), or pass a name such as 'minilm'")
    else:
        raise InputTypeError(f"model must be a name (e.g. 'minilm', 'toy') or a loaded "
                             f"nn.Module; got {type(model).__name__}")
    return rank_heads(net, tokenizer, chosen, model_name=name, progress=progress)
