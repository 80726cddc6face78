"""Where a capture keeps its copies of queries, keys and log-sum-exps: large blocks of their own,
filled in order, apart from the memory the model's forward pass allocates and frees; the blocks
of captures that are gone serve the next capture once nothing views them.

Why not ``clone()``: each kept copy would sit among the model's temporaries in the C allocator's
heap, which could then no longer hand the next layers their freed memory back; they took fresh
pages instead, and the captured forward pass paid for ~3x the kept bytes in page faults
(MiniLM at 16 x 128 tokens, 36 MiB kept: +28k faults, ~40 ms; BENCHMARKS.md). Blocks of 64 MiB
are mapped apart from that heap by glibc's malloc and cost only the pages written to; reused, they
cost none.
"""

from __future__ import annotations

import collections
import weakref

import torch

__all__ = ["Arena"]

BLOCK_BYTES = 64 * 2**20
ALIGN = 64  # bytes: every copy starts on a cache line, and on a multiple of any element size
SPARE_BLOCKS = 2  # blocks of finished captures kept for the next one (128 MiB at most)

# How many holders a storage has is private to torch (``_storage_Use_Count``): without it blocks
# are never reused, which is only slower.
_use_count = getattr(torch._C, "_storage_Use_Count", None)


class _Block:
    """One block, ``(BLOCK_BYTES,)`` uint8; compared by identity."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def _holders(t: torch.Tensor) -> int:
    return _use_count(t.untyped_storage()._cdata)


_ALONE = _holders(torch.empty(1, dtype=torch.uint8)) if _use_count is not None else 0
_spare: collections.deque[_Block] = collections.deque(maxlen=SPARE_BLOCKS)


def _retire(blocks: list[_Block]) -> None:
    """An arena is gone: its full-size blocks may serve the next (oldest dropped first)."""
    _spare.extend(block for block in blocks if block.tensor.numel() == BLOCK_BYTES)


def _free_block() -> torch.Tensor:
    """A block no tensor views any more (views of a finished capture the caller kept make its
    block wait), else a new one."""
    if _use_count is not None:
        for block in list(_spare):
            if _holders(block.tensor) <= _ALONE:
                try:
                    _spare.remove(block)  # another thread may have taken it meanwhile
                except ValueError:
                    continue
                return block.tensor
    return torch.empty(BLOCK_BYTES, dtype=torch.uint8)


class Arena:
    """Copies of tensors, packed into CPU blocks of ``BLOCK_BYTES`` (one of its own for a larger
    tensor); tensors on other devices are cloned (their caching allocators keep no such heap)."""

    def __init__(self) -> None:
        self._blocks: list[_Block] = []
        self._used = 0  # bytes taken of the last block
        weakref.finalize(self, _retire, self._blocks).atexit = False

    def copy(self, t: torch.Tensor) -> torch.Tensor:
        """A contiguous copy of ``t`` (detached, same shape and dtype) that no one else writes."""
        t = t.detach()
        nbytes = t.numel() * t.element_size()
        if t.device.type != "cpu" or nbytes == 0:
            return t.clone(memory_format=torch.contiguous_format)
        start = -(-self._used // ALIGN) * ALIGN
        if not self._blocks or start + nbytes > self._blocks[-1].tensor.numel():
            block = (_free_block() if nbytes <= BLOCK_BYTES
                     else torch.empty(nbytes, dtype=torch.uint8))
            self._blocks.append(_Block(block))
            start = 0
        self._used = start + nbytes
        out = self._blocks[-1].tensor[start:start + nbytes].view(t.dtype).view(t.shape)
        return out.copy_(t)
