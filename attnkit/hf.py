"""Hugging Face transformers on attnkit: ``attn_implementation="attnkit"``.

Importing this module registers ``"attnkit"`` with transformers' ``AttentionInterface`` (the
attention function) and ``AttentionMaskInterface`` (the mask builder); it never switches a model
over by itself. Choose it with ``from_pretrained(..., attn_implementation="attnkit")``,
``model.set_attn_implementation("attnkit")`` or ``use_attnkit(model)``.

Masks reach the attention function compact: a ``CompactMask`` (causal flag, sliding window and a
``(B, 1, 1, Sk)`` key-padding mask) instead of an ``Sq x Sk`` tensor. Mask patterns we cannot
prove compact (custom or/and mask functions, packed sequences, static caches) fall back to the
exact boolean ``(B, 1, Sq, Sk)`` mask that transformers would build for SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers import masking_utils as mu
from transformers.masking_utils import AttentionMaskInterface

from attnkit.errors import AttnkitError, InputTypeError, UnsupportedModelError
from attnkit.inspect.families import ModelInfo, register_family
from attnkit.kernels.api import attention, pattern
from attnkit.kernels.recording import attend

__all__ = ["NAME", "CompactMask", "attnkit_attention", "attnkit_mask", "check_supported",
           "use_attnkit", "is_attnkit", "register", "HuggingFaceFamily"]

NAME = "attnkit"

Window = tuple[int | None, int | None]


@dataclass(frozen=True)
class CompactMask:
    """Which keys each query may see, without an ``Sq x Sk`` tensor.

    ``causal`` and ``window`` use attnkit's bottom-right alignment (query ``i`` of ``q_length``
    sits on key ``i + kv_length - q_length``); ``padding`` is bool ``(B, 1, 1, kv_length)``,
    True = a real token, or None when no key is padding.
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


# ---- the mask builder -----------------------------------------------------------------------

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
    ``mask_function(b, h, q_idx, kv_idx)`` is transformers' description of the pattern.
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


# ---- the attention function -----------------------------------------------------------------

def _options(module: Any, query: torch.Tensor, key: torch.Tensor,
             attention_mask: CompactMask | torch.Tensor | None, scaling: float | None,
             is_causal: bool | None, position_bias: torch.Tensor | None) -> dict[str, Any]:
    """attnkit.attention options equal to what eager attention would do with this mask."""
    sq, sk = query.shape[2], key.shape[2]
    options: dict[str, Any] = {"scale": scaling}
    if isinstance(attention_mask, CompactMask):
        if (attention_mask.q_length, attention_mask.kv_length) != (sq, sk):
            raise AttnkitError(
                f"attnkit: the mask was built for {attention_mask.q_length} queries x "
                f"{attention_mask.kv_length} keys but {type(module).__name__} attends with "
                f"{sq} x {sk}; this cache layout is not supported, use a DynamicCache")
        options.update(causal=attention_mask.causal, window=attention_mask.window,
                       mask=attention_mask.padding)
    elif attention_mask is None:
        # no mask: as SDPA does, trust the module (transformers skips masks only when plain);
        # attnkit's causal is aligned bottom-right, right for a query block after a cache too
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
        options["causal"] = bool(causal)
    elif attention_mask.dtype == torch.bool:
        options["mask"] = attention_mask[..., :sk]
    else:
        # an additive float mask (0 / dtype-min) as transformers' eager masks are: cells at the
        # dtype's minimum are hidden, anything else is a bias
        additive = attention_mask[..., :sk]
        visible = additive > torch.finfo(additive.dtype).min / 2
        options["mask"] = visible
        if bool((additive.masked_fill(~visible, 0) != 0).any()):
            options["bias"] = additive.masked_fill(~visible, 0).to(query.dtype)
    if position_bias is not None:
        bias = position_bias.to(query.dtype)
        options["bias"] = bias if options.get("bias") is None else options["bias"] + bias
    return options


def attnkit_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: CompactMask | torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention contract on attnkit's exact kernel.

    query ``(B, Hq, Sq, D)``, key ``(B, Hkv, Sk, D)``, value ``(B, Hkv, Sk, Dv)`` (grouped heads
    are read directly, never repeated) → ``(out (B, Sq, Hq, Dv), weights)``; ``weights`` is the
    exact ``(B, Hq, Sq, Sk)`` pattern when the caller asked for ``output_attentions``, else None.
    Computed through ``attend`` so ``attnkit.capture`` sees it.
    """
    if dropout and module.training:
        raise AttnkitError(
            f"attnkit attention has no dropout, but {type(module).__name__} is in training mode "
            f"with attention dropout {dropout}; call model.eval(), or set the config's attention "
            "dropout to 0 to train through attnkit")
    for unsupported in ("softcap", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise AttnkitError(f"attnkit attention does not support `{unsupported}` "
                               f"({type(module).__name__}); use attn_implementation='eager'")
    options = _options(module, query, key, attention_mask, scaling, is_causal, position_bias)
    out = attend(module, query, key, value, **options)  # (B, Hq, Sq, Dv)
    weights = None
    if kwargs.get("output_attentions") or _attentions_requested():
        # the caller asked for every Sq x Sk pattern: recompute it exactly from the lse
        _, lse = attention(query, key, value[..., :1], return_lse=True, **options)
        weights = pattern(query, key, lse, **options).to(query.dtype)  # (B, Hq, Sq, Sk)
    return out.transpose(1, 2).contiguous(), weights


def _attentions_requested() -> bool:
    """Whether the running model call asked for ``output_attentions`` (some models, e.g. GPT-2,
    do not pass the flag down; transformers' output collector still knows)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # an older transformers passes output_attentions down itself
        return False
    collected = _active_collector.get()
    return bool(collected) and any("attentions" in key for key in collected)


# ---- choosing it for a model ----------------------------------------------------------------

def register() -> None:
    """Register ``"attnkit"`` with transformers (idempotent; done on import)."""
    AttentionInterface.register(NAME, attnkit_attention)
    AttentionMaskInterface.register(NAME, attnkit_mask)


def check_supported(model: torch.nn.Module) -> None:
    """Raise a clear error unless ``model`` is a transformers model that computes attention
    through ``AttentionInterface`` (so ``"attnkit"`` can take it over)."""
    name = type(model).__name__
    if not isinstance(model, PreTrainedModel):
        raise InputTypeError(
            f"{name} is not a Hugging Face transformers model (PreTrainedModel); attnkit can run "
            "transformers models, and models built from attnkit's MultiHeadAttention/AttentionHead")
    if not (type(model)._supports_attention_backend and type(model)._can_set_attn_implementation()):
        raise UnsupportedModelError(
            f"{name} does not compute attention through transformers' AttentionInterface, so "
            "attnkit cannot take it over (nor capture its patterns); use a model class that "
            "supports attention backends (e.g. Llama, Mistral, Qwen2, GPT-2, BERT)")


def use_attnkit(model: PreTrainedModel) -> PreTrainedModel:
    """Switch ``model`` (and its sub-models) to ``"attnkit"`` attention in place; returns it."""
    check_supported(model)
    model.set_attn_implementation(NAME)
    return model


def is_attnkit(model: torch.nn.Module) -> bool:
    """True when ``model`` is a transformers model currently running ``"attnkit"`` attention."""
    config = getattr(model, "config", None)
    return isinstance(model, PreTrainedModel) and getattr(config, "_attn_implementation",
                                                         None) == NAME


class HuggingFaceFamily:
    """transformers models: attention layers are the innermost modules named ``*Attention*`` with
    an int ``layer_idx`` (BertAttention wraps the BertSelfAttention that calls the attention
    interface), numbered by ``layer_idx`` when those are distinct, else in ``modules()`` order."""

    name = "transformers"

    def owns(self, model: torch.nn.Module) -> bool:
        return isinstance(model, PreTrainedModel)

    def modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        found = [m for m in model.modules() if "Attention" in type(m).__name__
                 and isinstance(getattr(m, "layer_idx", None), int)]
        ids = {id(m) for m in found}
        return [m for m in found if not any(id(sub) in ids for sub in m.modules() if sub is not m)]

    def attention_layers(self, model: torch.nn.Module) -> dict[int, int]:
        modules = self.modules(model)
        idx = [m.layer_idx for m in modules]
        if len(set(idx)) == len(idx):
            return {id(m): i for m, i in zip(modules, idx, strict=True)}
        return {id(m): n for n, m in enumerate(modules)}

    def describe(self, model: torch.nn.Module) -> ModelInfo:
        config = model.config
        modules = self.modules(model)
        return ModelInfo(
            name=getattr(config, "_name_or_path", "") or type(model).__name__,
            n_layers=int(getattr(config, "num_hidden_layers", len(modules))),
            n_heads=int(config.num_attention_heads),
            max_len=getattr(config, "max_position_embeddings", None),
            causal=any(bool(getattr(m, "is_causal", False)) for m in modules),
            family=self.name)

    def check_capturable(self, model: torch.nn.Module) -> None:
        check_supported(model)
        implementation = model.config._attn_implementation
        if implementation != NAME:
            raise UnsupportedModelError(
                f"{type(model).__name__} runs attn_implementation={implementation!r}, which "
                f"attnkit cannot see; load it with from_pretrained(..., "
                f"attn_implementation={NAME!r}) or call model.set_attn_implementation({NAME!r})")


register()
register_family(HuggingFaceFamily())
