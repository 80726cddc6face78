"""attnkit: transformer attention as the notes draw it — readable heads, one exact and fast
``attention()``, and exact attention patterns from any model.

Public names are imported lazily, so ``import attnkit`` stays fast and optional parts
(transformers, matplotlib, the web explorer) load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # kernels
    "attention": "attnkit.kernels.api",
    "pattern": "attnkit.kernels.api",
    "merge": "attnkit.kernels.merge",
    "backends": "attnkit.kernels.api",
    "use_backend": "attnkit.kernels.api",
    "register_backend": "attnkit.kernels.api",
    # the notes' objects
    "AttentionHead": "attnkit.core.head",
    "MultiHeadAttention": "attnkit.core.multihead",
    "KVCache": "attnkit.core.multihead",
    "count_attention_params": "attnkit.core.params",
    # real models and inspection
    "capture": "attnkit.inspect.capture",
    "Capture": "attnkit.inspect.capture",
    "load_capture": "attnkit.inspect.capture_file",
    "CaptureFile": "attnkit.inspect.capture_file",
    "Why": "attnkit.inspect.why",
    "load_model": "attnkit.models",
    "find_heads": "attnkit.detectors",
    "attention_stats": "attnkit.inspect.stats",
    "AttentionStats": "attnkit.inspect.stats",
    "corpus_stats": "attnkit.corpus",
    # errors
    "AttnkitError": "attnkit.errors",
    # explain
    "explain": "attnkit.explainer",
    "Explanation": "attnkit.explainer",
    "show": "attnkit.explainer",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attnkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
