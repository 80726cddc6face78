"""Model families: how attnkit finds a model's attention layers and describes the model.

One adapter per family of models, used by ``capture`` and by ``attnkit.models`` alike: attnkit's
own modules (``MultiHeadAttention``/``AttentionHead``, defined here) and Hugging Face transformers
(``attnkit.hf`` registers its family when imported). ``family_of(model)`` picks the one that owns
a model; ``describe(model)`` gives its ``ModelInfo``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from torch import nn

from attnkit.core.head import AttentionHead
from attnkit.core.multihead import MultiHeadAttention
from attnkit.errors import InputTypeError, UnsupportedModelError

__all__ = ["ModelInfo", "Family", "register_family", "family_of", "describe", "AttnkitFamily"]


@dataclass(frozen=True)
class ModelInfo:
    """What attnkit needs to know of a model: its name, ``n_layers`` attention layers of
    ``n_heads`` query heads, the longest input ``max_len`` in tokens (None: unbounded), whether
    a token sees only earlier ones (``causal``), and the ``family`` that read it."""

    name: str
    n_layers: int
    n_heads: int
    max_len: int | None
    causal: bool
    family: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Family(Protocol):
    """An adapter for one family of models."""

    name: str

    def owns(self, model: nn.Module) -> bool:
        """Whether this family knows ``model``."""

    def attention_layers(self, model: nn.Module) -> dict[int, int]:
        """``id(module) -> layer number`` for every module whose attention attnkit computes."""

    def describe(self, model: nn.Module) -> ModelInfo: ...

    def check_capturable(self, model: nn.Module) -> None:
        """Raise ``UnsupportedModelError`` (saying what to do) unless ``capture`` can see the
        model's attention as it is set up now."""


_FAMILIES: list[Family] = []


def register_family(family: Family) -> None:
    """Add a family; families registered later are asked first (more specific ones)."""
    _FAMILIES[:] = [f for f in _FAMILIES if f.name != family.name]
    _FAMILIES.insert(0, family)


def family_of(model: Any) -> Family:
    """The family that owns ``model``, or an error that says what attnkit can work with."""
    if not isinstance(model, nn.Module):
        raise InputTypeError("attnkit works with a torch.nn.Module (a Hugging Face model, or one "
                             "built from attnkit's MultiHeadAttention/AttentionHead); got "
                             f"{type(model).__name__}")
    for family in _FAMILIES:
        if family.owns(model):
            return family
    name = type(model).__name__
    if _is_transformers_model(model):
        raise UnsupportedModelError(
            f"{name} is a Hugging Face transformers model, but attnkit's transformers support is "
            "not loaded: `import attnkit.hf`, then load the model with "
            "from_pretrained(..., attn_implementation='attnkit')")
    raise UnsupportedModelError(
        f"{name} is neither a Hugging Face model nor built from attnkit's "
        "MultiHeadAttention/AttentionHead, so attnkit cannot see its attention")


def describe(model: nn.Module) -> ModelInfo:
    """``ModelInfo`` of ``model`` (its family's reading)."""
    return family_of(model).describe(model)


def _is_transformers_model(model: nn.Module) -> bool:
    return any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__)


class AttnkitFamily:
    """Models built from attnkit's ``MultiHeadAttention``/``AttentionHead``: layers are numbered in
    ``model.modules()`` order; heads inside a ``MultiHeadAttention`` are part of it, not layers."""

    name = "attnkit"

    def modules(self, model: nn.Module) -> list[nn.Module]:
        inner: set[int] = set()
        for m in model.modules():
            if isinstance(m, MultiHeadAttention):
                inner.update(id(sub) for sub in m.modules() if sub is not m)
        return [m for m in model.modules()
                if isinstance(m, (MultiHeadAttention, AttentionHead)) and id(m) not in inner]

    def owns(self, model: nn.Module) -> bool:
        return bool(self.modules(model))

    def attention_layers(self, model: nn.Module) -> dict[int, int]:
        return {id(m): n for n, m in enumerate(self.modules(model))}

    def describe(self, model: nn.Module) -> ModelInfo:
        modules = self.modules(model)
        if not modules:
            raise UnsupportedModelError(f"{type(model).__name__} has no attnkit attention module")
        config = getattr(model, "config", None)
        max_len = getattr(model, "max_len", None) or getattr(config, "max_len", None)
        return ModelInfo(name=getattr(model, "name", None) or type(model).__name__,
                         n_layers=len(modules), n_heads=int(modules[0].n_heads),
                         max_len=max_len, causal=bool(modules[0].causal), family=self.name)

    def check_capturable(self, model: nn.Module) -> None:
        return None


register_family(AttnkitFamily())
