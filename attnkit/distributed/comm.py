"""Talking to the other ranks: point-to-point transfers posted together and waited on later,
gathers along the sequence, and one error for a group that stops answering.

Every wait honours the process group's timeout (gloo's receives do; the timeout is passed to
``Work.wait`` too), so a rank that dies makes the others fail with ``CommunicationError``
instead of hanging.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from attnkit.distributed.groups import Group

__all__ = ["CommunicationError", "failing", "Transfers", "all_gather", "gather"]


class CommunicationError(RuntimeError):
    """Another process of the group stopped, crashed or did not answer within the process group's
    timeout; the message says which transfer on which rank, and the original error is chained."""


@contextlib.contextmanager
def failing(group: Group, what: str) -> Iterator[None]:
    """Turn a failed torch.distributed call into a ``CommunicationError`` that says what failed."""
    try:
        yield
    except CommunicationError:
        raise
    except (RuntimeError, ConnectionError) as error:  # DistBackendError is a RuntimeError
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CommunicationError(
            f"attnkit.distributed: {what} failed on rank {group.rank} of {group.size}: another "
            f"process of the group stopped, crashed or did not answer within "
            f"{group.describe_timeout()}. Every rank must make the same calls in the same order; "
            f"look for an error on the other ranks. ({type(error).__name__}: {first})") from error


class Transfers:
    """Sends and receives posted at once and completed later (a ring step's traffic).

    Tags keep apart messages between the same two ranks; empty tensors are not sent at all
    (both sides know every shape in advance, from the agreement step).
    """

    def __init__(self, group: Group, what: str):
        self.group = group
        self.what = what
        self._recvs: list[dist.Work] = []
        self._sends: list[dist.Work] = []
        self._keep: list[torch.Tensor] = []  # buffers that must live until their send completes

    def send(self, tensors: Sequence[torch.Tensor], to: int, tag: int) -> None:
        """Post sends of ``tensors`` to group rank ``to``."""
        with failing(self.group, f"sending {self.what} to rank {to % self.group.size}"):
            for i, t in enumerate(tensors):
                if t.numel():
                    t = t.contiguous()
                    self._keep.append(t)
                    self._sends.append(dist.isend(t, self.group.peer(to), group=self.group.pg,
                                                  tag=tag * 8 + i))

    def recv(self, like: Sequence[torch.Tensor], frm: int, tag: int) -> list[torch.Tensor]:
        """Post receives from group rank ``frm`` into fresh tensors shaped like ``like``."""
        out = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in like]
        with failing(self.group, f"receiving {self.what} from rank {frm % self.group.size}"):
            for i, t in enumerate(out):
                if t.numel():
                    self._recvs.append(dist.irecv(t, self.group.peer(frm), group=self.group.pg,
                                                  tag=tag * 8 + i))
        return out

    def wait_received(self) -> None:
        """Block until every posted receive has arrived (or fail within the timeout)."""
        with failing(self.group, f"waiting for {self.what}"):
            for work in self._recvs:
                _wait(work, self.group)
        self._recvs = []

    def wait_sent(self) -> None:
        """Block until every posted send has completed (its buffer may then be reused)."""
        with failing(self.group, f"waiting for {self.what} to be sent"):
            for work in self._sends:
                _wait(work, self.group)
        self._sends, self._keep = [], []

    def wait(self) -> None:
        self.wait_received()
        self.wait_sent()


def _wait(work: dist.Work, group: Group) -> None:
    if group.timeout is not None:
        work.wait(timeout=group.timeout)
    else:
        work.wait()


def all_gather(x: torch.Tensor, group: Group, what: str) -> list[torch.Tensor]:
    """Every rank's ``x`` (all of one shape), in group-rank order."""
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(group.size)]
    if x.numel() == 0:
        return out
    with failing(group, f"gathering {what}"):
        dist.all_gather(out, x, group=group.pg)
    return out


def gather(x: torch.Tensor, group: Group, dst: int, what: str) -> list[torch.Tensor] | None:
    """Every rank's ``x`` on group rank ``dst`` (None on the others)."""
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(group.size)] if group.rank == dst else None
    if x.numel() == 0:
        return out
    with failing(group, f"gathering {what} on rank {dst}"):
        dist.gather(x, out, dst=group.peer(dst), group=group.pg)
    return out
