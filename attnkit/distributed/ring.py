"""Ring attention: key/value blocks travel around the ring of ranks while each rank attends its
own queries to the block it holds; partial results are combined with ``attnkit.merge``.

Forward, step ``t``: rank ``r`` posts the send of its current block to ``r + 1`` and the receive
of the next one from ``r - 1``, computes its tiles on the current block meanwhile, then waits.
A block is passed on only while a rank further along needs it (``RingPlan.reach``).

Backward (an ``autograd.Function``, as FlashAttention ring implementations do): the blocks go
around again; each rank recomputes its tiles' gradients against the saved global ``(out, lse)``,
keeps ``dQ``, and adds ``dK, dV`` into an accumulator that travels with the block, one step
behind it, and finally goes home to the block's owner. Memory per rank stays ``O(N / W)``.
"""

from __future__ import annotations

import torch

from attnkit.distributed.comm import Transfers
from attnkit.distributed.groups import Group
from attnkit.distributed.plan import RingPlan
from attnkit.distributed.tiles import Local, call_grads, merge_into, run_call
from attnkit.runtime import work_dtype

__all__ = ["ring_attention"]

# message kinds, kept apart by tag (Transfers adds the tensor index)
_KV, _DKV, _HOME = 0, 1, 2


def _tag(kind: int, step: int) -> int:
    return 4 * step + kind


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   key_mask: torch.Tensor | None, plan: RingPlan, group: Group,
                   local: Local) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Sq, Dv)`` in q's dtype and ``lse (B, Hq, Sq)`` (float32; float64 for float64)
    of this rank's queries over every rank's keys; differentiable in q, k, v."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _RingFunction.apply(q, k, v, key_mask, plan, group, local)
    out, lse = _forward(q, k, v, key_mask, plan, group, local)
    return out.to(q.dtype), lse


def _block(k, v, key_mask):
    return [k, v] if key_mask is None else [k, v, key_mask]


def _forward(q, k, v, key_mask, plan: RingPlan, group: Group, local: Local):
    """Running ``(out, lse)`` in the work dtype over the blocks this rank's queries see."""
    work = work_dtype(q.dtype)
    b, hq, sq, _ = q.shape
    acc_out = q.new_zeros(b, hq, sq, v.shape[-1], dtype=work)  # (B, Hq, Sq, Dv)
    acc_lse = q.new_full((b, hq, sq), float("-inf"), dtype=work)  # (B, Hq, Sq): no key seen yet
    mine = current = _block(k.contiguous(), v.contiguous(), key_mask)  # every block is this shape
    r = plan.rank
    for t in range(plan.steps):
        moves = Transfers(group, f"key/value blocks (ring step {t + 1} of {plan.steps})")
        incoming = None
        if plan.holds(t) and t + 1 <= plan.reach[plan.source(t)]:
            moves.send(current, to=r + 1, tag=_tag(_KV, t + 1))
        if t + 1 < plan.steps and t + 1 <= plan.reach[plan.source(t + 1)]:
            incoming = moves.recv(mine, frm=r - 1, tag=_tag(_KV, t + 1))
        for call in plan.my_calls(t):  # computed while the next block is on its way
            kb, vb = current[0], current[1]
            out, lse = run_call(q, kb, vb, current[2] if key_mask is not None else None, call,
                                local)
            merge_into(acc_out, acc_lse, call, out, lse)
        moves.wait()
        current = incoming
    return acc_out, acc_lse


def _backward(q, k, v, key_mask, out, lse, dout, dlse, plan: RingPlan, group: Group,
              local: Local):
    """``dq, dk, dv`` of this rank's q, k, v (in their dtypes) from the global ``out``, ``lse``
    (work dtype) and the incoming ``dout``, ``dlse`` (dlse may be None)."""
    work = out.dtype
    dout = dout.to(work)
    dlse = None if dlse is None else dlse.to(work)
    r = plan.rank
    dq = torch.zeros_like(q, dtype=work)
    grads_like = [torch.empty_like(k, dtype=work), torch.empty_like(v, dtype=work)]
    own = None  # this rank's dK, dV once they are home
    home = Transfers(group, "the gradients of this rank's keys and values")
    returned = None
    if plan.reach[r] > 0:  # the last rank to use our block sends its gradients home
        returned = home.recv(grads_like, frm=r + plan.reach[r], tag=_tag(_HOME, 0))
    previous = None  # last step's transfers: their sends are waited for one step later
    mine = current = _block(k.contiguous(), v.contiguous(), key_mask)
    for t in range(plan.steps):
        src = plan.source(t)
        moves = Transfers(group, f"key/value blocks (backward ring step {t + 1} of {plan.steps})")
        incoming = None
        if plan.holds(t) and t + 1 <= plan.reach[src]:
            moves.send(current, to=r + 1, tag=_tag(_KV, t + 1))
        if t + 1 < plan.steps and t + 1 <= plan.reach[plan.source(t + 1)]:
            incoming = moves.recv(mine, frm=r - 1, tag=_tag(_KV, t + 1))
        carried = None
        if plan.holds(t) and t > 0:  # the block's gradient accumulator, from the last holder
            carried = moves.recv(grads_like, frm=r - 1, tag=_tag(_DKV, t))
        dk_b = dv_b = None
        for call in plan.my_calls(t):
            mask_b = current[2] if key_mask is not None else None
            dq_c, dk_c, dv_c = call_grads(q, current[0], current[1], mask_b, call, local, out,
                                          lse, dout, dlse)
            dq[:, :, call.q0:call.q1] += dq_c
            if dk_b is None:
                dk_b, dv_b = torch.zeros_like(grads_like[0]), torch.zeros_like(grads_like[1])
            dk_b[:, :, call.k0:call.k1] += dk_c
            dv_b[:, :, call.k0:call.k1] += dv_c
        moves.wait_received()
        if previous is not None:  # last step's accumulator has arrived: free its buffer
            previous.wait_sent()
        if plan.holds(t):
            acc = carried if carried is not None else [torch.zeros_like(g) for g in grads_like]
            if dk_b is not None:
                acc[0] += dk_b
                acc[1] += dv_b
            if t < plan.reach[src]:  # on with the block
                moves.send(acc, to=r + 1, tag=_tag(_DKV, t + 1))
            elif t > 0:  # the block goes no further: its gradients go home
                moves.send(acc, to=src, tag=_tag(_HOME, 0))
            else:  # nobody else uses this rank's block
                own = acc
        previous = moves
        current = incoming
    if returned is not None:
        home.wait()
        own = returned
    if previous is not None:
        previous.wait_sent()
    return dq.to(q.dtype), own[0].to(k.dtype), own[1].to(v.dtype)


class _RingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_mask, plan: RingPlan, group: Group, local: Local):
        out, lse = _forward(q, k, v, key_mask, plan, group, local)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.key_mask, ctx.plan, ctx.group, ctx.local = key_mask, plan, group, local
        ctx.set_materialize_grads(False)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _backward(q, k, v, ctx.key_mask, out, lse, dout, dlse, ctx.plan, ctx.group,
                               ctx.local)
        return dq, dk, dv, None, None, None, None
