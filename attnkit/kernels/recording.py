"""The one place where attention that may be inspected is computed.

Our own heads and the Hugging Face integration call ``attend()``. Normally it is just
``attnkit.attention``; while a ``capture`` is active it also asks for the log-sum-exp and hands
``(module, q, k, lse, options)`` to the recorder, so patterns can be recomputed exactly later.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from attnkit.kernels.api import attention


class Recorder(Protocol):
    def wants(self, module: Any) -> bool: ...

    def record(self, module: Any, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor,
               options: dict[str, Any]) -> None: ...


_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("attnkit_recorder",
                                                                         default=None)
# How many recordings are open, in any thread. While none is, attend() reads only this int:
# torch.compile cannot trace ``ContextVar.get``, and every layer would break the graph there.
_open_recordings = 0
_recordings_lock = threading.Lock()


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """While inside, every ``attend()`` call that ``recorder.wants`` is recorded."""
    global _open_recordings
    token = _ACTIVE.set(recorder)
    with _recordings_lock:
        _open_recordings += 1
    try:
        yield
    finally:
        with _recordings_lock:
            _open_recordings -= 1
        _ACTIVE.reset(token)


def attend(module: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           **options: Any) -> torch.Tensor:
    """``attention(q, k, v, **options)`` that a running capture can see.

    ``options`` are attention()'s keyword options (causal, window, mask, bias, scale, softcap,
    sinks, dropout_p, dropout_seed, backend); the recorded lse is the one before any dropout;
    q ``(B, Hq, Sq, D)``, k ``(B, Hkv, Sk, D)``, v ``(B, Hkv, Sk, Dv)`` → ``(B, Hq, Sq, Dv)``.
    """
    recorder = _ACTIVE.get() if _open_recordings else None
    if recorder is None or not recorder.wants(module):
        return attention(q, k, v, **options)
    out, lse = attention(q, k, v, return_lse=True, **options)
    recorder.record(module, q, k, lse, options)
    return out
