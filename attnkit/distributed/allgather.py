"""All-gather attention: every rank gathers the whole keys and values once, then attends its own
queries to the keys they may see. The simplest exact mode; each rank holds all ``N`` keys and
values (memory ``O(N)`` per rank, not ``O(N / W)``). Backward: autograd through the local calls,
and a reduce-scatter returns each rank's summed ``dK, dV``.
"""

from __future__ import annotations

import torch

from attnkit.distributed.groups import Group
from attnkit.distributed.layouts import _Unshard, chunks, gather_whole
from attnkit.distributed.plan import Band, calls
from attnkit.distributed.tiles import Local, run_call
from attnkit.runtime import work_dtype

__all__ = ["allgather_attention", "rows_from_calls"]


def allgather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_mask: torch.Tensor | None, band: Band, layout: str, group: Group,
                        local: Local) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Sq, Dv)``, ``lse (B, Hq, Sq)`` of this rank's queries over all keys."""
    k_all = _Unshard.apply(k, group, layout, 2)  # (B, Hkv, Nk, D), global order
    v_all = _Unshard.apply(v, group, layout, 2)  # (B, Hkv, Nk, Dv)
    mask_all = None
    if key_mask is not None:
        mask_all = gather_whole(key_mask, group, layout, 1, "the key masks")  # (B, Nk)
    nk = k_all.shape[2]
    plan = calls(band, chunks(layout, group.rank, group.size, q.shape[2]), ((0, nk, 0),))
    results = [(call, *run_call(q, k_all, v_all, mask_all, call, local)) for call in plan]
    return rows_from_calls(q, v.shape[-1], results)


def rows_from_calls(q: torch.Tensor, dv: int, results) -> tuple[torch.Tensor, torch.Tensor]:
    """Join calls over disjoint query rows into ``(out, lse)`` for all of ``q``'s rows; rows no
    call covers saw no key: zeros and ``lse = -inf``. Differentiable."""
    b, hq, sq, _ = q.shape
    lse_dtype = work_dtype(q.dtype)
    outs, lses, row = [], [], 0
    for call, out, lse in sorted(results, key=lambda x: x[0].q0):
        if call.q0 > row:
            outs.append(q.new_zeros(b, hq, call.q0 - row, dv))
            lses.append(q.new_full((b, hq, call.q0 - row), float("-inf"), dtype=lse_dtype))
        outs.append(out)
        lses.append(lse.to(lse_dtype))
        row = call.q1
    if row < sq:
        outs.append(q.new_zeros(b, hq, sq - row, dv))
        lses.append(q.new_full((b, hq, sq - row), float("-inf"), dtype=lse_dtype))
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)
