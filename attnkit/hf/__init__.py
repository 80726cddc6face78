"""Hugging Face transformers on attnkit: ``attn_implementation="attnkit"``.

Importing this package registers ``"attnkit"`` with transformers' ``AttentionInterface`` (the
attention function, ``attnkit_attention``) and ``AttentionMaskInterface`` (the mask builder,
``attnkit_mask``), and makes transformers check a model before it is set to ``"attnkit"``
(``check_supported``); it never switches a model over by itself. Choose it with
``from_pretrained(..., attn_implementation="attnkit")``,
``model.set_attn_implementation("attnkit")`` or ``use_attnkit(model)``.

Masks reach the attention function compact: a ``CompactMask`` (causal flag, sliding window and a
``(B, 1, 1, Sk)`` key-padding mask) instead of an ``Sq x Sk`` tensor. Mask patterns we cannot
prove compact (custom or/and mask functions, packed sequences, static caches) fall back to the
exact boolean ``(B, 1, Sq, Sk)`` mask that transformers would build for SDPA. Soft-capping
(Gemma 2), attention sinks (GPT-OSS) and attention dropout in training reach attnkit's kernel.

The parts: ``masks`` (the mask hook), ``attention`` (the attention function and
``attention_options``), ``support`` (which models can run, and the load-time check), ``family``
(attention layers and their numbers for ``attnkit.capture``).
"""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from attnkit.hf.attention import attention_options, attnkit_attention
from attnkit.hf.family import HuggingFaceFamily, attention_layer_names, is_attnkit, use_attnkit
from attnkit.hf.masks import CompactMask, attnkit_mask
from attnkit.hf.support import NAME, check_supported, install_load_check
from attnkit.inspect.families import register_family

__all__ = ["NAME", "CompactMask", "attnkit_attention", "attnkit_mask", "attention_options",
           "check_supported", "use_attnkit", "is_attnkit", "register", "HuggingFaceFamily",
           "attention_layer_names"]


def register() -> None:
    """Register ``"attnkit"`` with transformers and install its load-time check (idempotent;
    done on import)."""
    AttentionInterface.register(NAME, attnkit_attention)
    AttentionMaskInterface.register(NAME, attnkit_mask)
    install_load_check()


register()
register_family(HuggingFaceFamily())
