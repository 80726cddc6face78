"""The capture's arena: exact, independent copies packed into blocks; blocks of finished captures
reused only once nothing views them (the safety that matters: a kept view never changes)."""

from __future__ import annotations

import gc

import pytest
import torch

from attnkit.inspect import arena as arena_module
from attnkit.inspect.arena import ALIGN, BLOCK_BYTES, Arena


def base_address(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@pytest.fixture(autouse=True)
def no_spare_blocks():
    """Each test starts and ends with no spare blocks (other tests' captures leave some)."""
    gc.collect()
    arena_module._spare.clear()
    yield
    arena_module._spare.clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16])
def test_copies_are_equal_contiguous_aligned_and_independent(dtype):
    g = torch.Generator().manual_seed(0)
    arena = Arena()
    sources = [torch.randn(3, 5, 7, 9, generator=g).to(dtype).transpose(1, 2),  # strided
               torch.randn(2, 3, 11, generator=g).to(dtype),
               torch.randn(13, generator=g).to(dtype).requires_grad_()]
    copies = [arena.copy(t) for t in sources]
    for t, c in zip(sources, copies):
        assert c.shape == t.shape and c.dtype == t.dtype and c.is_contiguous()
        assert not c.requires_grad and torch.equal(c, t.detach())
        assert c.data_ptr() % ALIGN == 0
    assert len({base_address(c) for c in copies}) == 1  # one block holds them all
    with torch.no_grad():
        sources[0].mul_(2)  # the originals change: the copies do not
        copies[1].fill_(0)  # one copy changes: its neighbours do not
    assert torch.equal(copies[0] * 2, sources[0]) and torch.equal(copies[2], sources[2].detach())


def test_a_tensor_larger_than_a_block_gets_its_own():
    arena = Arena()
    small = arena.copy(torch.ones(10))
    big = arena.copy(torch.arange(BLOCK_BYTES // 4 + 5, dtype=torch.float32))
    after = arena.copy(torch.full((3,), 7.0))
    assert base_address(big) not in (base_address(small), base_address(after))
    assert big[-1].item() == BLOCK_BYTES // 4 + 4 and torch.equal(small, torch.ones(10))
    assert torch.equal(after, torch.full((3,), 7.0))


needs_counts = pytest.mark.skipif(arena_module._use_count is None,
                                  reason="this torch does not say how many hold a storage")


@needs_counts
def test_a_finished_arena_block_serves_the_next_arena():
    first = Arena()
    address = base_address(first.copy(torch.randn(100)))
    del first
    gc.collect()
    second = Arena()
    assert base_address(second.copy(torch.randn(100))) == address


@needs_counts
@pytest.mark.parametrize("kept", ["the copy", "a slice of it", "a detached view"])
def test_a_block_someone_still_views_is_never_reused(kept):
    g = torch.Generator().manual_seed(1)
    values = torch.randn(4, 6, generator=g)
    first = Arena()
    copy = first.copy(values)
    view = {"the copy": copy, "a slice of it": copy[1:3, 2:],
            "a detached view": copy.detach()[:, :1]}[kept]
    expected, address = view.clone(), base_address(copy)
    del first, copy
    gc.collect()
    second = Arena()
    other = second.copy(torch.full((4, 6), -1.0))
    assert base_address(other) != base_address(view)
    assert torch.equal(view, expected)
    del view
    gc.collect()  # now nothing views the first block: the next arena may take it
    third = Arena()
    assert base_address(third.copy(torch.zeros(3))) == address


def test_without_storage_counts_blocks_are_never_reused(monkeypatch):
    monkeypatch.setattr(arena_module, "_use_count", None)
    first = Arena()
    kept = first.copy(torch.arange(6.0))
    address = base_address(kept)
    del first
    gc.collect()
    assert base_address(Arena().copy(torch.zeros(6))) != address
    assert torch.equal(kept, torch.arange(6.0))


def test_spare_blocks_are_bounded():
    arenas = [Arena() for _ in range(arena_module.SPARE_BLOCKS + 3)]
    for arena in arenas:
        arena.copy(torch.ones(4))
    del arenas, arena
    gc.collect()
    assert len(arena_module._spare) == arena_module.SPARE_BLOCKS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_are_cloned_on_their_device():
    t = torch.randn(5, 7, device="cuda").t()
    c = Arena().copy(t)
    assert c.device == t.device and c.is_contiguous() and torch.equal(c, t)
