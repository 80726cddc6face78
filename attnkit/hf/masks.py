"""transformers' mask hook for ``"attnkit"``: masks reach attnkit compact, never as ``Sq x Sk``.

``attnkit_mask`` answers transformers' ``create_*_mask`` calls with a ``CompactMask`` (causal flag,
sliding window, ``(B, 1, 1, Sk)`` key padding) when it can read the pattern exactly, else with the
exact boolean ``(B, 1, Sq, Sk)`` mask transformers would build for SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from transformers import masking_utils as mu

from attnkit.errors import UnsupportedModelError

__all__ = ["CompactMask", "attnkit_mask"]

Window = tuple[int | None, int | None]


def _used_as_tensor(operation: str) -> NoReturn:
    raise UnsupportedModelError(
        f"a model's own code used attnkit's CompactMask as a tensor ({operation}): only attnkit's "
        "attention function can read it, so this model cannot run on attnkit "
        "(attnkit.hf.check_supported(model) says why). Load it with attn_implementation='eager' "
        "and read its patterns with output_attentions=True (the slow path)")


@dataclass(frozen=True, eq=False)
class CompactMask:
    """Which keys each query may see, without an ``Sq x Sk`` tensor.

    ``causal`` and ``window`` use attnkit's bottom-right alignment (query ``i`` of ``q_length``
    sits on key ``i + kv_length - q_length``); ``padding`` is bool ``(B, 1, 1, kv_length)``,
    True = a real token, or None when no key is padding.

    It is not a tensor: a model whose own code computes with the mask (adds it, slices it, hands
    it to a torch function) is refused by ``check_supported``; should one slip through, every
    such use raises an ``UnsupportedModelError`` that says what to do instead of a TypeError deep
    inside the model.
    """

    q_length: int
    kv_length: int
    causal: bool
    window: Window | None = None
    padding: torch.Tensor | None = None

    # transformers sometimes reads these off a mask; answer like a (B, 1, Sq, Sk) tensor would
    @property
    def shape(self) -> tuple[int, int, int, int]:
        b = 1 if self.padding is None else self.padding.shape[0]
        return (b, 1, self.q_length, self.kv_length)

    @property
    def ndim(self) -> int:
        return 4

    # ---- anything else a tensor could do is refused by name ----------------------------------

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        _used_as_tensor(f"torch {getattr(func, '__name__', func)}")

    def __getitem__(self, index: Any) -> NoReturn:
        _used_as_tensor("indexing")

    def _arithmetic(self, other: Any) -> NoReturn:
        _used_as_tensor("arithmetic")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _arithmetic
    __and__ = __rand__ = __or__ = __ror__ = _arithmetic

    def __invert__(self) -> NoReturn:
        _used_as_tensor("~")


# ---- reading transformers' mask functions ---------------------------------------------------

def _band(fn: Any) -> tuple[int | None, int | None] | None:
    """The set of allowed ``kv_idx - q_idx`` of a transformers mask function, as ``(low, high)``
    (None = unbounded), when ``fn`` is one we can read exactly; None when we cannot."""
    if fn is mu.causal_mask_function:
        return (None, 0)
    if fn is mu.bidirectional_mask_function:
        return (None, None)
    if not hasattr(fn, "__code__"):
        return None
    name = fn.__qualname__
    closure = [c.cell_contents for c in fn.__closure__ or ()]
    cells = dict(zip(fn.__code__.co_freevars, closure, strict=True))
    if name == "sliding_window_overlay.<locals>.inner_mask":
        return (1 - int(cells["sliding_window"]), None)  # kv > q - w
    if name == "sliding_window_bidirectional_overlay.<locals>.inner_mask":
        w = int(cells["sliding_window"])
        return (-w, w)  # |q - kv| <= w
    if name == "and_masks.<locals>.and_mask":
        low, high = None, None
        for part in cells["mask_functions"]:
            band = _band(part)
            if band is None:
                return None
            low = band[0] if low is None else (low if band[0] is None else max(low, band[0]))
            high = band[1] if high is None else (high if band[1] is None else min(high, band[1]))
        return (low, high)
    return None


def _to_attnkit(band: tuple[int | None, int | None], shift: int,
                q_length: int, kv_length: int) -> tuple[bool, Window | None] | None:
    """Translate allowed ``j - i`` in ``[low + shift, high + shift]`` (``shift = q_offset -
    kv_offset``) into attnkit's ``causal``/``window`` around the diagonal ``kv_length - q_length``;
    None when attnkit's window (sizes >= 0 around that diagonal) cannot say it."""
    low, high = band
    diag = kv_length - q_length
    left = None if low is None else diag - (low + shift)
    right = None if high is None else (high + shift) - diag
    if (left is not None and left < 0) or (right is not None and right < 0):
        return None
    if right == 0 and left is None:
        return True, None
    if left is None and right is None:
        return False, None
    return False, (left, right)


def attnkit_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = mu.causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> CompactMask | torch.Tensor | None:
    """transformers' mask hook for ``"attnkit"``: a ``CompactMask`` when the pattern is causal /
    sliding-window / bidirectional plus key padding, else the exact bool ``(B, 1, Sq, Sk)`` mask.

    ``attention_mask`` is the 2-D ``(B, kv_offset + kv_length)`` padding mask (True = token);
    ``mask_function(b, h, q_idx, kv_idx)`` is transformers' description of the pattern. Offsets
    that are tensors (a static cache's positions) and mask functions we cannot read (packed
    sequences, custom or/and masks) take the exact dense mask.
    """
    if isinstance(attention_mask, CompactMask):
        # already built (generate() prepares masks ahead of the forward pass), like a 4-D tensor
        return attention_mask
    band = _band(mask_function)
    compact = None
    if band is not None and isinstance(q_offset, int) and isinstance(kv_offset, int):
        compact = _to_attnkit(band, q_offset - kv_offset, q_length, kv_length)
    if compact is None:
        return mu.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                            q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
                            attention_mask=attention_mask, allow_is_causal_skip=False,
                            allow_is_bidirectional_skip=False, device=device,
                            use_vmap=kwargs.get("use_vmap", False))
    causal, window = compact
    padding = None
    if attention_mask is not None:
        padded = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        keys = padded[:, kv_offset:kv_offset + kv_length].to(device=device, dtype=torch.bool)
        # (torch.compile cannot branch on a tensor's values; a mask of all True is exact too)
        if torch.compiler.is_compiling() or not bool(keys.all()):
            padding = keys[:, None, None, :]  # (B, 1, 1, Sk)
    return CompactMask(q_length=q_length, kv_length=kv_length, causal=causal, window=window,
                       padding=padding)
