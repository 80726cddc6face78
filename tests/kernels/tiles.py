"""Tiny blockwise tiles on worker threads, and small fused blocks, for tests that must cross tile
edges at small sizes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

import attnkit.kernels.blockwise as blockwise
import attnkit.kernels.fused_cpu as fused_cpu


@contextlib.contextmanager
def small_tiles(workers: int = 2) -> Iterator[None]:
    """Tiles of 16 queries x 40 keys on two worker threads, whatever the call's size: tile edges,
    key splitting (combined pieces) and the threaded path are all exercised. ``workers=1`` keeps
    the tile sizes but runs the tiles in order on one thread (and splits no keys)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(blockwise, "BLOCK_Q", 16)
        patch.setattr(blockwise, "BLOCK_K", 40)
        patch.setattr(blockwise, "MIN_PARALLEL_WORK", 1)
        patch.setattr(blockwise, "WORKERS", workers)
        yield


@contextlib.contextmanager
def small_blocks() -> Iterator[None]:
    """Fused-backend blocks of 16 queries: windows cut every call into several blocks of
    pieces."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fused_cpu, "BLOCK_Q", (16, 16))
        yield
