"""The first step of every call: the ranks tell each other what they were given, and all refuse
together or go on together.

One small all-gather of a description (shapes, dtype, options, and any error a rank found in its
own inputs) comes before any other transfer. Every rank then runs the same checks on the same
descriptions, so a bad input raises the same ``AttnkitError`` on every rank and no rank is left
waiting for a message that will never come.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from attnkit.distributed.comm import failing
from attnkit.distributed.groups import Group
from attnkit.errors import AttnkitError

__all__ = ["agree"]


def agree(group: Group, what: str, local: dict[str, Any], error: Exception | None,
          anyone: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Exchange ``local`` (fields that must be equal on every rank) and ``anyone`` (fields that
    may differ; the caller combines them) with the whole group; raise on every rank if some rank
    reported ``error`` or the ``local`` fields differ. Returns every rank's ``anyone``."""
    message = None if error is None else str(error).removeprefix(f"{what}: ")
    mine = (message, local if error is None else {}, anyone or {})
    everyone: list[Any] = [None] * group.size
    if group.size == 1:
        everyone = [mine]
    else:
        with failing(group, f"{what}: agreeing on the inputs"):
            dist.all_gather_object(everyone, mine, group=group.pg)
    refused = [(rank, msg) for rank, (msg, _, _) in enumerate(everyone) if msg is not None]
    if refused:
        if error is not None:
            raise error
        rank, msg = refused[0]
        others = f" (and {len(refused) - 1} more rank(s))" if len(refused) > 1 else ""
        raise AttnkitError(f"{what}: rank {rank} of the group refused its inputs{others}, so "
                           f"every rank stops here: {msg}")
    first = everyone[0][1]
    for key, value in first.items():
        differ = [(rank, d[key]) for rank, (_, d, _) in enumerate(everyone) if d[key] != value]
        if differ:
            rank, other = differ[0]
            raise AttnkitError(
                f"{what}: the ranks disagree on {key}: rank 0 has {value!r}, rank {rank} has "
                f"{other!r}. Every rank must pass the same options and an equal share of the "
                "sequence (shard it with akd.shard)")
    return [extra for _, _, extra in everyone]
