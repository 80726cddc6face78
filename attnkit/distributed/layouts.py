"""How one sequence is split between the W ranks of a group, and put back together.

``"contiguous"``: rank r holds block r of W equal blocks. ``"zigzag"``: the sequence is cut into
2W equal chunks and rank r holds chunks r and 2W-1-r, one early and one late — under a causal
mask every rank then has the same amount of work (the early chunk sees few keys, the late one
many)::

    N = 16, W = 4        positions 0 ............................. 15
    contiguous  rank:    0  0  0  0  1  1  1  1  2  2  2  2  3  3  3  3
    zigzag      rank:    0  0  1  1  2  2  3  3  3  3  2  2  1  1  0  0
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from attnkit.distributed.agree import agree
from attnkit.distributed.comm import all_gather, failing, gather
from attnkit.distributed.groups import Group, resolve
from attnkit.errors import AttnkitError, InputTypeError

__all__ = ["LAYOUTS", "shard", "unshard", "positions", "positions_of", "chunks", "check_layout"]

LAYOUTS = ("contiguous", "zigzag")

Chunk = tuple[int, int, int]  # (global start, global stop, local start)


def check_layout(layout: Any) -> str:
    if layout not in LAYOUTS:
        raise AttnkitError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}; got "
                           f"{layout!r}. Use the layout the tensors were sharded with")
    return layout


def pieces(layout: str, size: int) -> int:
    """How many equal pieces the whole sequence is cut into."""
    return size if layout == "contiguous" else 2 * size


def chunks(layout: str, rank: int, size: int, n_local: int) -> tuple[Chunk, ...]:
    """The global ranges rank ``rank`` holds, in its local order, with where each starts locally."""
    if layout == "contiguous":
        return ((rank * n_local, (rank + 1) * n_local, 0),)
    c = n_local // 2
    late = 2 * size - 1 - rank
    return ((rank * c, (rank + 1) * c, 0), (late * c, (late + 1) * c, c))


def positions_of(layout: str, rank: int, size: int, n_local: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n_local,)`` int64: the global position of each of rank ``rank``'s local tokens."""
    parts = [torch.arange(g0, g1, device=device) for g0, g1, _ in chunks(layout, rank, size,
                                                                        n_local)]
    return torch.cat(parts)


def positions(n_local: int, *, layout: str, group: Any = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n_local,)`` int64: the global position of each of this rank's ``n_local`` tokens
    (e.g. the ``position_ids`` of a shard, so rotary embeddings see the true positions)."""
    check_layout(layout)
    grp = resolve(group)
    if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 0:
        raise AttnkitError(f"n_local must be an int >= 0; got {n_local!r}")
    error = local_error(layout, n_local, "the shard")
    if error:
        raise AttnkitError(error)
    return positions_of(layout, grp.rank, grp.size, n_local, device)


def split_error(layout: str, length: int, size: int, what: str) -> str | None:
    """Why a whole length cannot be split by ``layout`` over ``size`` ranks (None if it can)."""
    parts = pieces(layout, size)
    if length % parts == 0:
        return None
    up = -(-length // parts) * parts
    cut = ("into W = " if layout == "contiguous" else "into 2W = ") + f"{parts} equal "
    cut += "blocks" if layout == "contiguous" else "chunks"
    return (f"{what} of length {length} cannot be split {cut} for layout={layout!r} on {size} "
            f"ranks; pad it to {up} (a multiple of {parts}) and hide the padding with "
            f"key_mask (or attention_mask in a model)")


def local_error(layout: str, n_local: int, what: str) -> str | None:
    """Why a local length cannot be one rank's share under ``layout`` (None if it can)."""
    if layout == "zigzag" and n_local % 2:
        return (f"{what} has local length {n_local}, but a zigzag shard is two equal chunks, so "
                "its length must be even; shard the whole sequence with akd.shard(x, "
                "layout='zigzag') after padding it to a multiple of 2W")
    return None


def _check_dim(x: torch.Tensor, dim: Any, name: str) -> int:
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise AttnkitError(f"dim={dim!r} is not a dimension of {name} with shape "
                           f"{tuple(x.shape)}; the sequence dimension is 2 for (B, H, S, D) "
                           "tensors and 1 for (B, S) ids or (B, S, d_model) hidden states")
    return dim % x.dim()


def shard(x: torch.Tensor, *, layout: str, dim: int = 2, group: Any = None) -> torch.Tensor:
    """This rank's part of the whole sequence ``x`` along ``dim`` (no communication).

    Every rank passes the same whole tensor; rank r gets ``N / W`` positions along ``dim``:
    block r (``"contiguous"``) or chunks r and 2W-1-r joined (``"zigzag"``). Differentiable.
    A length the layout cannot split equally is refused (the same way on every rank).
    """
    check_layout(layout)
    dim = _check_dim(x, dim, "x")
    grp = resolve(group)
    error = split_error(layout, x.shape[dim], grp.size, "x")
    if error:
        raise AttnkitError(f"shard: {error}")
    n_local = x.shape[dim] // grp.size
    parts = [x.narrow(dim, g0, g1 - g0) for g0, g1, _ in chunks(layout, grp.rank, grp.size,
                                                               n_local)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def unshard(x: torch.Tensor, *, layout: str, dim: int = 2, group: Any = None) -> torch.Tensor:
    """The whole sequence again, on every rank, from each rank's part ``x`` (an all-gather).

    Differentiable: the gradient reaching ``x`` is the sum over ranks of the gradients their
    whole copies receive, as with ``torch.distributed.nn.functional.all_gather``.
    """
    check_layout(layout)
    dim = _check_dim(x, dim, "x")
    grp = resolve(group)
    error = local_error(layout, x.shape[dim], "x")
    agree(grp, "unshard", {"shape": tuple(x.shape), "dtype": str(x.dtype), "dim": dim,
                           "layout": layout}, AttnkitError(f"unshard: {error}") if error else None)
    return _Unshard.apply(x, grp, layout, dim)


def reorder(parts: list[torch.Tensor], layout: str, dim: int) -> torch.Tensor:
    """Join every rank's part (group-rank order) into the whole sequence along ``dim``."""
    size, n_local = len(parts), parts[0].shape[dim]
    owners = []
    for rank in range(size):
        for g0, g1, l0 in chunks(layout, rank, size, n_local):
            owners.append((g0, rank, l0, g1 - g0))
    owners.sort()
    pieces_ = [parts[rank].narrow(dim, l0, length) for _, rank, l0, length in owners]
    return torch.cat(pieces_, dim=dim)


def take_local(whole: torch.Tensor, layout: str, rank: int, size: int, dim: int) -> torch.Tensor:
    """Rank ``rank``'s part of ``whole`` along ``dim`` (as ``shard``, for a known rank)."""
    n_local = whole.shape[dim] // size
    parts = [whole.narrow(dim, g0, g1 - g0) for g0, g1, _ in chunks(layout, rank, size, n_local)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def gather_whole(x: torch.Tensor, group: Group, layout: str, dim: int, what: str,
                 dst: int | None = None) -> torch.Tensor | None:
    """The whole sequence from every rank's ``x``, on every rank (``dst=None``) or only on group
    rank ``dst`` (None elsewhere). Not differentiable."""
    if group.size == 1:
        return x
    moved = x.movedim(dim, 0)
    parts = all_gather(moved, group, what) if dst is None else gather(moved, group, dst, what)
    if parts is None:
        return None
    return reorder(parts, layout, 0).movedim(0, dim)


class _Unshard(torch.autograd.Function):
    """All-gather along the sequence; backward: reduce-scatter (each rank gets the sum of
    everyone's gradient for its own positions)."""

    @staticmethod
    def forward(ctx, x, group: Group, layout: str, dim: int):
        ctx.group, ctx.layout, ctx.dim = group, layout, dim
        return gather_whole(x, group, layout, dim, "the shards")

    @staticmethod
    def backward(ctx, grad):
        return scatter_sum(grad, ctx.group, ctx.layout, ctx.dim), None, None, None


def scatter_sum(grad: torch.Tensor, group: Group, layout: str, dim: int) -> torch.Tensor:
    """Each rank's part of ``grad`` (a whole-sequence tensor every rank holds), summed over
    ranks: the backward of ``gather_whole``."""
    if group.size == 1:
        return grad
    parts = [take_local(grad, layout, r, group.size, dim).contiguous() for r in range(group.size)]
    out = torch.empty_like(parts[group.rank])
    if out.numel():
        with failing(group, "summing gradients of the shards"):
            dist.reduce_scatter(out, parts, group=group.pg)
    return out
