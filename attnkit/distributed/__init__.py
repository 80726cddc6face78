"""Exact attention over one sequence split between processes, on ``torch.distributed``.

    import attnkit.distributed as akd      # after torch.distributed.init_process_group(...)
    q_local = akd.shard(q, layout="zigzag")                    # this rank's part (dim 2)
    out_local, lse_local = akd.attention(q_local, k_local, v_local, layout="zigzag",
                                         mode="ring", causal=True, return_lse=True)
    out = akd.unshard(out_local, layout="zigzag")              # the whole sequence, every rank

``context_parallel(model, group, layout)`` runs a Hugging Face model on it (needs transformers,
imported only when used). Not imported by ``import attnkit``.
"""

from __future__ import annotations

import importlib
from typing import Any

from attnkit.distributed.api import MODES, attention
from attnkit.distributed.comm import CommunicationError
from attnkit.distributed.layouts import LAYOUTS, positions, shard, unshard

__all__ = ["attention", "shard", "unshard", "positions", "context_parallel", "ContextParallel",
           "CommunicationError", "LAYOUTS", "MODES"]

_LAZY = {"context_parallel": "attnkit.distributed.models",
         "ContextParallel": "attnkit.distributed.models"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'attnkit.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
