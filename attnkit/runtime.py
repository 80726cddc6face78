"""Small helpers every layer uses: the work dtype, torch's thread count, argument checks, files
written all or nothing.

``torch_threads`` is the only place attnkit changes ``torch.set_num_threads``; it always restores
the count it found.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from attnkit.errors import AttnkitError

__all__ = ["work_dtype", "torch_threads", "check_positive_int", "check_writable",
           "written_together"]


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


def check_writable(paths: Sequence[str | os.PathLike], *, overwrite: bool = False,
                   allow: str = "pass overwrite=True") -> list[Path]:
    """Check, before any work, that every file of ``paths`` can be written: its folder exists or
    can be made and is writable, it is not a folder, and it does not exist unless ``overwrite``
    (``allow`` says how to permit that). Creates nothing; returns the paths."""
    out = [Path(p) for p in paths]
    for path in out:
        if path.is_dir():
            raise AttnkitError(f"{path} is a directory; give a file name")
        if path.exists() and not overwrite:
            raise AttnkitError(f"{path} already exists and would be replaced; {allow} to "
                               "replace it, or choose another name")
        base = path.parent
        while not base.exists():
            base = base.parent
        if not base.is_dir():
            raise AttnkitError(f"cannot create {path.parent}: {base} is a file")
        if not os.access(base, os.W_OK | os.X_OK):
            raise AttnkitError(f"cannot write into {base} (permission denied); choose another "
                               "place")
    return out


@contextlib.contextmanager
def written_together(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Write several files all or nothing: yields a temporary path beside each target; when the
    block ends without error each is renamed onto its target, otherwise every one is removed
    (the targets stay as they were)."""
    targets = [Path(p) for p in paths]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    scratch = [t.with_name(f".{t.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
               for t in targets]
    try:
        yield scratch
        for temporary, target in zip(scratch, targets, strict=True):
            os.replace(temporary, target)
    finally:
        for temporary in scratch:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
