"""Rotary position embeddings as a capture sees them: which dimensions of a query/key head are
rotated together, and how fast each pair turns with position.

A model with rotary embeddings rotates each pair of dimensions of ``q`` and ``k`` by an angle
proportional to the position; the captured ``q`` and ``k`` are already rotated, so ``q · k`` splits
into one term per pair (a frequency band) whose size depends on how far apart the two tokens are.
``rotary_of(model)`` reads the pairing from the model's own code (its modeling module's
``rotate_half``/``rotate_every_two``), the rotated width from its configuration and the
frequencies from its ``inv_freq`` buffers; it imports nothing from transformers.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from attnkit.errors import AttnkitError

__all__ = ["Rotary", "rotary_of"]

PAIRINGS = ("half", "interleaved")
"""half: dim i turns with i + r/2 (Llama's rotate_half); interleaved: 2p with 2p + 1 (GPT-J)."""

ROTATE_FUNCTIONS = ("rotate_half", "rotate_every_two")


@dataclass(frozen=True)
class Rotary:
    """How a model rotates its queries and keys.

    ``pairing`` is "half" (dim ``p`` with ``p + rotary_dim/2``) or "interleaved" (``2p`` with
    ``2p + 1``); the first ``rotary_dim`` of ``head_dim`` dimensions are rotated, the rest are
    not. ``frequencies`` (radians per position, one per pair, pair ``p`` in order of its first
    dimension) when the model has one set of them; ``layers`` the rotated layers (None: all);
    ``source`` says where this was read.
    """

    pairing: str
    rotary_dim: int
    head_dim: int
    frequencies: tuple[float, ...] | None = None
    layers: tuple[int, ...] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.pairing not in PAIRINGS:
            raise AttnkitError(f"pairing must be one of {PAIRINGS}; got {self.pairing!r}")
        if not 0 < self.rotary_dim <= self.head_dim or self.rotary_dim % 2:
            raise AttnkitError(f"rotary_dim must be even and in 1..{self.head_dim}; "
                               f"got {self.rotary_dim}")
        if self.frequencies is not None and len(self.frequencies) != self.rotary_dim // 2:
            raise AttnkitError(f"{len(self.frequencies)} frequencies for "
                               f"{self.rotary_dim // 2} pairs; give one per pair of dims")

    def pairs(self) -> list[tuple[int, int]]:
        """The pairs of dimensions rotated together, pair ``p`` first: ``[(i, j), ...]``."""
        half = self.rotary_dim // 2
        if self.pairing == "half":
            return [(p, p + half) for p in range(half)]
        return [(2 * p, 2 * p + 1) for p in range(half)]

    def applies_to(self, layer: int, head_dim: int) -> bool:
        """Whether ``layer``'s queries and keys of width ``head_dim`` were rotated as described."""
        return head_dim == self.head_dim and (self.layers is None or layer in self.layers)

    def describe(self) -> str:
        """One line for people: which dims turn together."""
        if self.pairing == "half":
            how = f"dim i turns with i + {self.rotary_dim // 2}"
        else:
            how = "dims 2p and 2p + 1 turn together"
        rest = ("" if self.rotary_dim == self.head_dim
                else f"; dims {self.rotary_dim}..{self.head_dim - 1} are not rotated")
        return f"rotary position embedding, {self.rotary_dim // 2} pairs: {how}{rest}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frequencies"] = None if self.frequencies is None else list(self.frequencies)
        out["layers"] = None if self.layers is None else list(self.layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rotary:
        frequencies, layers = data.get("frequencies"), data.get("layers")
        return cls(pairing=str(data["pairing"]), rotary_dim=int(data["rotary_dim"]),
                   head_dim=int(data["head_dim"]),
                   frequencies=None if frequencies is None else tuple(float(f)
                                                                      for f in frequencies),
                   layers=None if layers is None else tuple(int(x) for x in layers),
                   source=str(data.get("source", "")))


def rotary_of(model: nn.Module) -> Rotary | None:
    """How ``model`` rotates queries and keys, or None when it has no rotary embeddings (or
    attnkit cannot tell how it applies them: then nothing is claimed)."""
    config = getattr(model, "config", None)
    if config is None or not _has_rope(config):
        return None
    head_dim = _head_dim(config)
    if head_dim is None:
        return None
    rotary_dim = _rotary_dim(config, head_dim)
    found = _rotate_function(model)
    if found is None or rotary_dim is None:
        return None
    name, rotate = found
    pairing = _pairing(rotate, rotary_dim)
    if pairing is None:
        return None
    family = getattr(config, "model_type", None) or type(model).__name__
    return Rotary(pairing=pairing, rotary_dim=rotary_dim, head_dim=head_dim,
                  frequencies=_frequencies(model, rotary_dim), layers=_rope_layers(config),
                  source=f"{family}: pairing read from the model's {name}, "
                         f"{rotary_dim} of {head_dim} dims rotated (config)")


def _rope_parameters(config: Any) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        return params
    scaling = getattr(config, "rope_scaling", None)  # older transformers
    return scaling if isinstance(scaling, dict) else {}


def _has_rope(config: Any) -> bool:
    return bool(getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None)
                or getattr(config, "rotary_dim", None)
                or getattr(config, "position_embedding_type", None) == "rotary")


def _head_dim(config: Any) -> int | None:
    head_dim = getattr(config, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0:
        return head_dim
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads",
                                                                  None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0:
        return hidden // heads
    return None


def _rotary_dim(config: Any, head_dim: int) -> int | None:
    dim = getattr(config, "rotary_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim if dim <= head_dim and dim % 2 == 0 else None
    params = _rope_parameters(config)
    # a rope_parameters dict keyed by layer type holds dicts; any of them may say the factor
    factor = (params.get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None)
              or getattr(config, "rotary_pct", None) or 1.0)
    dim = int(head_dim * float(factor))
    return dim if 0 < dim <= head_dim and dim % 2 == 0 else None


def _rotate_function(model: nn.Module) -> tuple[str, Any] | None:
    """The modeling module's function that rotates pairs, found along the model's classes."""
    for cls in type(model).__mro__:
        module = sys.modules.get(cls.__module__)
        for name in ROTATE_FUNCTIONS:
            fn = getattr(module, name, None)
            if callable(fn):
                return name, fn
    return None


def _pairing(rotate: Any, rotary_dim: int) -> str | None:
    """Run the model's rotate function on ``1..r``: it sends each dim to its partner (times -1
    or 1), which tells which dims turn together."""
    x = torch.arange(1, rotary_dim + 1, dtype=torch.float64)[None, None, None]  # (1, 1, 1, r)
    try:
        out = rotate(x)
    except Exception:  # a signature we do not know: claim nothing
        return None
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        return None
    partner = (out.abs().round().long() - 1).flatten().tolist()  # (r,)
    half = rotary_dim // 2
    if partner == [(i + half) % rotary_dim for i in range(rotary_dim)]:
        return "half"
    if partner == [i + 1 if i % 2 == 0 else i - 1 for i in range(rotary_dim)]:
        return "interleaved"
    return None


def _frequencies(model: nn.Module, rotary_dim: int) -> tuple[float, ...] | None:
    """The model's rotation speeds, when all its ``*inv_freq`` buffers agree (several layer
    types with different bases: None, rather than the wrong ones for some layers)."""
    found = [b for name, b in model.named_buffers() if name.endswith("inv_freq")
             and b.dim() == 1 and b.numel() == rotary_dim // 2]
    if not found:
        return None
    first = found[0].detach().double().cpu()
    if any(not torch.equal(first, b.detach().double().cpu()) for b in found[1:]):
        return None
    return tuple(float(f) for f in first)


def _rope_layers(config: Any) -> tuple[int, ...] | None:
    """Rotated layers when some layers use no position embedding (``no_rope_layers``: 1 = rotary,
    as Llama 4 and SmolLM3 configure it)."""
    flags = getattr(config, "no_rope_layers", None)
    if not isinstance(flags, (list, tuple)) or not flags:
        return None
    return tuple(i for i, use in enumerate(flags) if use)
