"""Small helpers every layer uses: the work dtype, torch's thread count, argument checks.

``torch_threads`` is the only place attnkit changes ``torch.set_num_threads``; it always restores
the count it found.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

from attnkit.errors import AttnkitError

__all__ = ["work_dtype", "torch_threads", "check_positive_int"]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype attnkit computes in for inputs of ``dtype``: float64 stays, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Inside the block torch's intra-op ops use ``n`` threads; the count found on entry comes
    back when the last block open (in any thread) closes, even on error."""
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
        _threads_users += 1
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and torch.get_num_threads() != _threads_saved:
                torch.set_num_threads(_threads_saved)


def check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """``value`` when it is an int > 0 (numpy ints too; never a bool), else an ``AttnkitError``
    naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise AttnkitError(f"{name} must be a positive integer; got {value!r}")
    value = int(value.__index__())
    if value <= 0:
        raise AttnkitError(f"{name} must be a positive integer; got {value}")
    return value
