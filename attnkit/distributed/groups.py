"""Which processes share one sequence: a process group, a 1-D ``DeviceMesh``, or one dimension of a
mesh. Resolved per call; nothing is kept between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from attnkit.errors import AttnkitError, InputTypeError

__all__ = ["Group", "resolve"]


@dataclass(frozen=True)
class Group:
    """A resolved group: this process is ``rank`` of ``size``; ``peers[r]`` is the global rank of
    group rank ``r`` (point-to-point calls address global ranks); ``timeout`` is the process
    group's own timeout when torch tells it (None: unknown)."""

    pg: Any  # torch.distributed.ProcessGroup
    rank: int
    size: int
    peers: tuple[int, ...]
    timeout: timedelta | None

    def peer(self, group_rank: int) -> int:
        """Global rank of group rank ``group_rank`` (taken modulo the size: ring neighbours)."""
        return self.peers[group_rank % self.size]

    def describe_timeout(self) -> str:
        if self.timeout is None:
            return "the process group's timeout"
        return f"the process group's timeout of {self.timeout.total_seconds():g} s"


def resolve(group: Any = None) -> Group:
    """``group`` as a ``Group``: None (the default group), a ``ProcessGroup``, a 1-D ``DeviceMesh``
    (e.g. ``mesh["cp"]``) or a pair ``(mesh, dim)`` naming one dimension of a mesh."""
    if not (dist.is_available() and dist.is_initialized()):
        raise AttnkitError(
            "attnkit.distributed needs torch.distributed to be initialized first: call "
            "torch.distributed.init_process_group('gloo') (or 'nccl' on GPUs) in every process; "
            "torchrun sets the environment it reads")
    pg = _process_group(group)
    rank = dist.get_rank(pg)
    if rank < 0:
        raise AttnkitError("this process is not a member of the process group passed as group=; "
                           "call attnkit.distributed only on the group's own ranks")
    size = dist.get_world_size(pg)
    peers = tuple(dist.get_global_rank(pg, r) for r in range(size))
    return Group(pg=pg, rank=rank, size=size, peers=peers, timeout=_timeout(pg))


def _process_group(group: Any) -> Any:
    from torch.distributed.device_mesh import DeviceMesh

    if group is None:
        return dist.distributed_c10d._get_default_group()
    if isinstance(group, dist.ProcessGroup):
        return group
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            names = group.mesh_dim_names or tuple(range(group.ndim))
            raise AttnkitError(
                f"group is a {group.ndim}-D DeviceMesh (dims {names}); pass the one dimension that "
                f"holds the sequence, e.g. group=mesh[{names[-1]!r}] or group=(mesh, "
                f"{names[-1]!r})")
        return group.get_group()
    if isinstance(group, tuple) and len(group) == 2 and isinstance(group[0], DeviceMesh):
        mesh, dim = group
        names = mesh.mesh_dim_names or ()
        if not ((isinstance(dim, str) and dim in names)
                or (isinstance(dim, int) and not isinstance(dim, bool) and 0 <= dim < mesh.ndim)):
            raise AttnkitError(f"group=(mesh, {dim!r}): the mesh has dims "
                               f"{names or tuple(range(mesh.ndim))}; name one of them")
        return mesh.get_group(dim)
    raise InputTypeError(
        "group must be None (the default process group), a torch.distributed ProcessGroup, a 1-D "
        f"DeviceMesh or a pair (mesh, dim); got {type(group).__name__}")


def _timeout(pg: Any) -> timedelta | None:
    """The timeout the group was created with (gloo and NCCL keep it in their options)."""
    for device in ("cpu", "cuda"):
        try:
            backend = pg._get_backend(torch.device(device))
            timeout = backend.options._timeout
        except (AttributeError, RuntimeError, ValueError):
            continue
        if isinstance(timeout, timedelta):
            return timeout
    return None
