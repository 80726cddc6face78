"""The Hugging Face family for ``attnkit.capture``: which modules are attention layers, and
their numbers; switching a model to ``"attnkit"``."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from attnkit.errors import UnsupportedModelError
from attnkit.hf.support import NAME, check_supported, module_code
from attnkit.inspect.families import ModelInfo

__all__ = ["HuggingFaceFamily", "attention_layer_names", "use_attnkit", "is_attnkit"]


def use_attnkit(model: PreTrainedModel) -> PreTrainedModel:
    """Switch ``model`` (and its sub-models) to ``"attnkit"`` attention in place; returns it.
    Raises ``UnsupportedModelError`` (naming the reason and the fix) for a model attnkit cannot
    run, before anything changes, and when transformers declined to switch it (it decides from
    the model's source whether one can: e.g. for ModernBERT, transformers 5.4 only warns)."""
    check_supported(model)
    model.set_attn_implementation(NAME)
    if not is_attnkit(model):
        raise UnsupportedModelError(
            f"transformers did not switch {type(model).__name__} to {NAME!r} (it cannot set this "
            "model's attention implementation after loading); load it with "
            f"from_pretrained(..., attn_implementation={NAME!r}) instead")
    return model


def is_attnkit(model: torch.nn.Module) -> bool:
    """True when ``model`` is a transformers model currently running ``"attnkit"`` attention."""
    config = getattr(model, "config", None)
    return isinstance(model, PreTrainedModel) and getattr(config, "_attn_implementation",
                                                         None) == NAME


class HuggingFaceFamily:
    """transformers models. Attention layers are the modules that look their attention function
    up in transformers' registry (the ones ``"attnkit"`` runs: ``BertSelfAttention``, not the
    ``BertAttention`` around it). Their numbers:

    - when every such module has its own ``layer_idx`` (decoder-only and encoder-only models),
      the number is the ``layer_idx``;
    - otherwise (encoder-decoder models — T5, BART, Whisper — whose encoder and decoder both
      count ``layer_idx`` from 0 and whose decoder layers hold a self- and a cross-attention with
      one ``layer_idx``; models with a vision or audio tower) they are numbered 0, 1, 2, ... in
      the model's module order: for T5, BART and Whisper the encoder's layers, then each decoder
      layer's self-attention followed by its cross-attention. ``attention_layer_names(model)``
      says which module each number is.
    """

    name = "transformers"

    def owns(self, model: torch.nn.Module) -> bool:
        return isinstance(model, PreTrainedModel)

    def modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The attention layers, in module order."""
        return [m for m in model.modules() if module_code(type(m)).dispatches]

    def _by_layer_idx(self, modules: list[torch.nn.Module]) -> bool:
        idx = [getattr(m, "layer_idx", None) for m in modules]
        return (all(isinstance(i, int) and not isinstance(i, bool) for i in idx)
                and len(set(idx)) == len(idx))

    def attention_layers(self, model: torch.nn.Module) -> dict[int, int]:
        modules = self.modules(model)
        if self._by_layer_idx(modules):
            return {id(m): m.layer_idx for m in modules}
        return {id(m): n for n, m in enumerate(modules)}

    def describe(self, model: torch.nn.Module) -> ModelInfo:
        config = model.config
        modules = self.modules(model)
        if self._by_layer_idx(modules):
            n_layers = int(getattr(config, "num_hidden_layers", len(modules)))
        else:
            n_layers = len(modules)
        return ModelInfo(
            name=getattr(config, "_name_or_path", "") or type(model).__name__,
            n_layers=n_layers,
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


def attention_layer_names(model: PreTrainedModel) -> dict[int, str]:
    """``{layer number: module path}`` of ``model``'s attention layers, numbered as
    ``attnkit.capture`` numbers them (``HuggingFaceFamily``), e.g. for BART with 2 + 2 layers
    ``{0: 'model.encoder.layers.0.self_attn', ..., 2: 'model.decoder.layers.0.self_attn',
    3: 'model.decoder.layers.0.encoder_attn', ...}``."""
    table = HuggingFaceFamily().attention_layers(model)
    return dict(sorted((table[id(m)], path) for path, m in model.named_modules()
                       if id(m) in table))
