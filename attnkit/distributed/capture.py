"""``attnkit.capture`` under context parallelism: a layer's record holds the whole sequence.

Each rank has its own queries and keys. When some rank's capture wants a layer, every rank sends
its ``q``, ``k`` and lse (and key padding) to the ranks that capture — all ranks learn who does
in the agreement step of that layer's ``akd.attention``, so nobody waits for a transfer that
never comes. A capturing rank then records the whole ``q (B, Hq, N, D)``, ``k (B, Hkv, N, D)``,
``lse (B, Hq, N)`` and the options in global positions: an ordinary record, from which
``cap.pattern``, ``cap.why``, ``cap.save`` and the explorer read any rows exactly. Memory
O(N·d) per layer on a capturing rank; open the capture on rank 0 only to keep it there.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.distributed.groups import Group
from attnkit.distributed.layouts import gather_whole

__all__ = ["record_whole"]


def record_whole(group: Group, layout: str, module: Any, recorder: Any, q: torch.Tensor,
                 k: torch.Tensor, lse: torch.Tensor, options: dict[str, Any], padded: bool,
                 recorders: list[int]) -> None:
    """Gather this layer's ``q (B, Hq, n, D)``, ``k (B, Hkv, n, D)``, ``lse (B, Hq, n)`` and key
    padding on the capturing ranks ``recorders`` (one of them: a gather to it; several: an
    all-gather) and hand the whole-sequence record to this rank's ``recorder`` (None when this
    rank does not capture). Every rank of the group calls this."""
    dst = recorders[0] if len(recorders) == 1 else None
    q_all = gather_whole(q.detach(), group, layout, 2, "the queries to capture", dst)
    k_all = gather_whole(k.detach(), group, layout, 2, "the keys to capture", dst)
    lse_all = gather_whole(lse.detach(), group, layout, 2, "the log-sum-exp to capture", dst)
    mask_all = None
    if padded:  # some rank pads its keys: the whole (B, 1, 1, N) key-padding mask
        local = options.get("mask")  # (B, 1, 1, n) or None
        b, n = q.shape[0], k.shape[2]
        mine = (torch.ones(b, n, dtype=torch.bool, device=q.device) if local is None
                else local[:, 0, 0, :].expand(b, n))
        mask_all = gather_whole(mine, group, layout, 1, "the key padding to capture", dst)
        if mask_all is not None:
            mask_all = mask_all[:, None, None, :]
    if recorder is None:
        return
    scores = {name: options[name] for name in ("softcap", "sinks") if options.get(name) is not None}
    recorder.record(module, q_all, k_all, lse_all,
                    {"causal": options["causal"], "window": options.get("window"),
                     "mask": mask_all, "scale": options.get("scale"), **scores})
