"""A rank's local work on one key/value block: the planned calls to ``attnkit.attention`` (the
automatic backend, whichever it is), their results merged into running ``(out, lse)``, and, in
the backward pass, each call's gradients taken against the final, global ``(out, lse)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnkit.distributed.plan import Call
from attnkit.kernels.api import attention
from attnkit.kernels.merge import merge

__all__ = ["Local", "run_call", "merge_into", "call_grads", "with_sinks"]


@dataclass(frozen=True)
class Local:
    """What every call of one ``akd.attention`` shares: the scale, the soft-cap (elementwise on
    the scores, so every tile takes it as is) and the backend asked for."""

    scale: float
    backend: str | None
    softcap: float | None = None


def run_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
             call: Call, local: Local) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out (B, Hq, r, Dv), lse (B, Hq, r))`` of queries ``q[:, :, q0:q1]`` over keys
    ``k[:, :, k0:k1]``; ``key_mask (B, Sk)`` (True = may attend) or None."""
    mask = None if key_mask is None else key_mask[:, None, None, call.k0:call.k1]  # (B,1,1,c)
    return attention(q[:, :, call.q0:call.q1], k[:, :, call.k0:call.k1],
                     v[:, :, call.k0:call.k1], causal=call.causal, window=call.window,
                     mask=mask, scale=local.scale, softcap=local.softcap, return_lse=True,
                     backend=local.backend)


MERGE_ROWS = 1024  # query rows merged at a time: merge's temporaries stay this small


def merge_into(acc_out: torch.Tensor, acc_lse: torch.Tensor, call: Call, out: torch.Tensor,
               lse: torch.Tensor) -> None:
    """Fold one call's result into the running ``acc_out (B, Hq, Sq, Dv)``, ``acc_lse (B, Hq, Sq)``
    (work dtype) on its rows; rows that saw no key so far (lse = -inf) take the call's as is.
    Merged ``MERGE_ROWS`` rows at a time, so the ring's memory stays a few blocks, not a few
    copies of the output."""
    for r0 in range(call.q0, call.q1, MERGE_ROWS):
        r1 = min(r0 + MERGE_ROWS, call.q1)
        part = slice(r0 - call.q0, r1 - call.q0)
        merged_out, merged_lse = merge(acc_out[:, :, r0:r1], acc_lse[:, :, r0:r1],
                                       out[:, :, part].to(acc_out.dtype),
                                       lse[:, :, part].to(acc_lse.dtype))
        acc_out[:, :, r0:r1] = merged_out
        acc_lse[:, :, r0:r1] = merged_lse


def call_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
               call: Call, local: Local, out: torch.Tensor, lse: torch.Tensor,
               dout: torch.Tensor, dlse: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of one call's queries, keys and values, given the global (merged) ``out``,
    ``lse`` and their incoming gradients ``dout``, ``dlse`` (all on the call's rows).

    The global result is ``out = sum_b w_b out_b`` with ``w_b = exp(lse_b - lse)`` over the key
    blocks ``b``, and ``lse = logsumexp_b lse_b``. So this call's own ``(out_b, lse_b)``
    (recomputed here) receives ``w_b * dout`` and ``w_b * (dlse + rowsum(dout * (out_b - out)))``;
    its backward through the local backend then gives exactly FlashAttention's ring gradient
    ``dS = P * (dP - rowsum(dout * out) + dlse)`` with ``P = exp(s - lse)`` of the global lse.
    """
    rows = slice(call.q0, call.q1)
    qs = q[:, :, rows].detach().requires_grad_()
    ks = k[:, :, call.k0:call.k1].detach().requires_grad_()
    vs = v[:, :, call.k0:call.k1].detach().requires_grad_()
    mask = None if key_mask is None else key_mask[:, None, None, call.k0:call.k1]
    with torch.enable_grad():
        out_b, lse_b = attention(qs, ks, vs, causal=call.causal, window=call.window, mask=mask,
                                 scale=local.scale, softcap=local.softcap, return_lse=True,
                                 backend=local.backend)
    work = out.dtype
    lse_all = lse[:, :, rows]  # (B, Hq, r): >= lse_b, and -inf only where lse_b is too
    lse_b_w = lse_b.detach().to(work)
    seen = ~torch.isneginf(lse_b_w)
    weight = torch.where(seen, torch.exp(lse_b_w - torch.where(seen, lse_all, 0.0)), 0.0)
    d_out = dout[:, :, rows]  # (B, Hq, r, Dv)
    g_out = weight[..., None] * d_out
    g_lse = (d_out * (out_b.detach().to(work) - out[:, :, rows])).sum(-1)
    if dlse is not None:
        g_lse = g_lse + dlse[:, :, rows]
    g_lse = weight * g_lse
    dq, dk, dv = torch.autograd.grad((out_b, lse_b), (qs, ks, vs),
                                     (g_out.to(out_b.dtype), g_lse.to(lse_b.dtype)),
                                     allow_unused=True)
    return (_or_zeros(dq, qs), _or_zeros(dk, ks), _or_zeros(dv, vs))


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def with_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """A rank's final ``out (B, Hq, n, Dv)``, ``lse (B, Hq, n)`` (over every key of the group)
    with each row's sink logit ``sinks (Hq,)`` joined to its softmax: ``lse' = logaddexp(lse,
    sink)`` and ``out' = out * exp(lse - lse')``, as ``attnkit.attention(..., sinks=)`` gives.
    Joined once per row, after every key block is merged (``merge``'s rule: sinks go to exactly
    one part). A row that saw no key keeps zeros and gets ``lse' = sink``. Differentiable in all
    three, with no NaN where a row saw no key; the sinks' gradient is this rank's rows' share
    (summed over ranks it is one process's)."""
    work = lse.dtype
    sink = sinks.to(work)[None, :, None].expand_as(lse)  # (B, Hq, n)
    top = torch.maximum(lse, sink)
    base = top.masked_fill(torch.isneginf(top), 0.0)  # -inf only if the sink is -inf too
    keys, sunk = torch.exp(lse - base), torch.exp(sink - base)  # each side's share of the sum
    total = keys + sunk
    seen = total > 0
    safe = torch.where(seen, total, torch.ones_like(total))  # no log(0) or 1/0 in any gradient
    lse_new = torch.where(seen, base + torch.log(safe), float("-inf"))
    out_new = out.to(work) * (keys / safe)[..., None]
    return out_new.to(out.dtype), lse_new
