"""transformers' attention function for ``"attnkit"``: eager's contract on attnkit's kernel.

``attention_options`` turns what a transformers attention module hands its attention function
(mask, scaling, soft-capping, sinks, dropout, position bias) into ``attnkit.attention`` options;
``attnkit_attention`` runs them, and returns exact ``output_attentions`` weights that carry
gradients as eager's do.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.errors import AttnkitError
from attnkit.hf.masks import CompactMask
from attnkit.kernels.api import attention, pattern
from attnkit.kernels.dropout import draw_seed
from attnkit.kernels.recording import attend

__all__ = ["attention_options", "attnkit_attention"]


def attention_options(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: CompactMask | torch.Tensor | None,
    *,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
) -> dict[str, Any]:
    """``attnkit.attention`` options that compute what transformers' eager attention computes.

    The arguments are those of transformers' attention-function contract
    ``fn(module, query, key, value, attention_mask, dropout=, scaling=, is_causal=,
    position_bias=, softcap=, s_aux=, ...)``: query ``(B, Hq, Sq, D)``, key ``(B, Hkv, Sk, D)``.

    - ``attention_mask``: a ``CompactMask`` (from ``attnkit_mask``) → causal / window / key
      padding; a bool ``(B|1, 1|H, Sq, >=Sk)`` tensor (True = attend) → ``mask``; an additive float
      one (0 = attend, the dtype's minimum = hidden, anything else a bias) → ``mask`` + ``bias``;
      None → causal when the module (or ``is_causal``) says so, as SDPA does.
    - ``position_bias`` ``(B|1, H, Sq, Sk)`` (T5's relative bias) is added to ``bias``.
    - ``softcap`` (Gemma 2) → ``softcap``; ``s_aux`` (GPT-OSS's per-head sink logits, ``(Hq,)``)
      → ``sinks``.
    - ``dropout`` → ``dropout_p`` only while ``module.training`` (eval drops nothing), with a
      ``dropout_seed`` drawn here from torch's default generator, so the same options give the
      same mask to ``attention`` and ``pattern`` and ``torch.manual_seed`` reproduces a step.

    Returns a dict for ``attnkit.attention(q, k, v, **options)`` and
    ``attnkit.pattern(q, k, lse, **options)``. Raises ``AttnkitError`` when a ``CompactMask``
    was built for other lengths than the call has (a cache layout attnkit cannot follow).
    """
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
    if softcap is not None:
        options["softcap"] = softcap
    if s_aux is not None:
        options["sinks"] = s_aux.reshape(-1)  # (Hq,): one logit per query head
    if dropout and getattr(module, "training", False):
        options.update(dropout_p=float(dropout), dropout_seed=draw_seed())
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
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention contract on attnkit's exact kernel.

    query ``(B, Hq, Sq, D)``, key ``(B, Hkv, Sk, D)``, value ``(B, Hkv, Sk, Dv)`` (grouped heads
    are read directly, never repeated) → ``(out (B, Sq, Hq, Dv), weights)``. ``weights`` is None
    unless the caller asked for ``output_attentions``; then it is the exact ``(B, Hq, Sq, Sk)``
    pattern eager returns (after dropout in training; rows summing to less than 1 with sinks),
    and, as in eager, ``out = weights @ value``: so a loss's gradient reaches the weights
    (``weights.grad``, attention x gradient) and through them query and key (through the
    log-sum-exp too), bias and sinks, as eager's do. Computed through ``attend`` so
    ``attnkit.capture`` sees it. Other keyword arguments (``sliding_window``, ``position_ids``,
    ...) are already in the mask.
    """
    options = attention_options(module, query, key, attention_mask, dropout=dropout,
                                scaling=scaling, is_causal=is_causal, position_bias=position_bias,
                                softcap=softcap, s_aux=s_aux)
    if not (kwargs.get("output_attentions") or _attentions_requested()):
        out = attend(module, query, key, value, **options)  # (B, Hq, Sq, Dv)
        return out.transpose(1, 2).contiguous(), None
    # the caller asked for every Sq x Sk pattern: take eager's path, exactly. The lse of the
    # scores (dropout leaves it alone) gives the pattern; the pattern gives the output.
    undropped = {k: v for k, v in options.items() if not k.startswith("dropout")}
    one = value[..., :1]  # (B, Hkv, Sk, 1): only the lse is wanted from these calls
    attend(module, query, key, one, **undropped)  # what a running capture records
    _, lse = attention(query, key, one, return_lse=True, **undropped)  # (B, Hq, Sq)
    weights = pattern(query, key, lse, **options).to(query.dtype)  # (B, Hq, Sq, Sk)
    return _weighted_values(weights, value).transpose(1, 2).contiguous(), weights


def _weighted_values(weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``weights (B, Hq, Sq, Sk) @ value (B, Hkv, Sk, Dv)`` → ``(B, Hq, Sq, Dv)`` in value's
    dtype, accumulated in float32 at least; grouped heads share their value head unrepeated."""
    b, hq, sq, sk = weights.shape
    hkv, dv = value.shape[1], value.shape[3]
    work = torch.promote_types(value.dtype, torch.float32)
    w = weights.to(work).view(b, hkv, hq // hkv, sq, sk)  # (B, Hkv, G, Sq, Sk)
    out = torch.matmul(w, value.to(work).unsqueeze(2))  # (B, Hkv, G, Sq, Dv)
    return out.reshape(b, hq, sq, dv).to(value.dtype)


def _attentions_requested() -> bool:
    """Whether the running model call asked for ``output_attentions`` (some models, e.g. GPT-2,
    do not pass the flag down; transformers' output collector still knows)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # an older transformers passes output_attentions down itself
        return False
    collected = _active_collector.get()
    return bool(collected) and any("attentions" in key for key in collected)
