"""``akd.attention``: exact attention over a sequence split between the ranks of a group.

Every call first checks its inputs locally, then agrees with the other ranks (one small
all-gather of shapes and options), so a bad input raises on every rank before any data moves;
then it runs one of three modes: ``"ring"``, ``"allgather"`` or ``"ulysses"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attnkit.distributed.agree import agree
from attnkit.distributed.allgather import allgather_attention
from attnkit.distributed.groups import Group, resolve
from attnkit.distributed.layouts import check_layout, chunks, local_error
from attnkit.distributed.plan import Band, RingPlan, calls
from attnkit.distributed.ring import ring_attention
from attnkit.distributed.tiles import Local, with_sinks
from attnkit.distributed.ulysses import ulysses_attention
from attnkit.errors import AttnkitError, InputTypeError
from attnkit.kernels.api import attention as local_attention
from attnkit.kernels.api import validate

__all__ = ["attention", "MODES"]

MODES = ("ring", "allgather", "ulysses")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    layout: str,
    mode: str = "ring",
    causal: bool = False,
    window: tuple[int | None, int | None] | None = None,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    return_lse: bool = False,
    group: Any = None,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention of this rank's queries over the keys of every rank in ``group``.

    Each rank passes its own shard of the sequence (``akd.shard(x, layout=...)``); the result is
    this rank's shard of what ``attnkit.attention`` gives on the whole tensors.

    Args:
        q: ``(B, Hq, nq, D)`` this rank's queries; the whole sequence has ``Nq = W * nq``.
        k: ``(B, Hkv, nk, D)`` this rank's keys (``Nk = W * nk``); ``Hq % Hkv == 0``.
        v: ``(B, Hkv, nk, Dv)`` this rank's values.
        layout: how the sequence was split: ``"contiguous"`` or ``"zigzag"`` (required: a
            mismatch with the layout the tensors were sharded with would be silently wrong).
        mode: ``"ring"`` (key/value blocks travel around the ring, memory O(N/W) per rank),
            ``"allgather"`` (keys/values gathered once, O(N) per rank) or ``"ulysses"``
            (all-to-all to head shards; needs ``Hq % W == 0``).
        causal, window: as ``attnkit.attention``, in global positions (bottom-right aligned:
            query ``i`` sees key ``j <= i + Nk - Nq``).
        key_mask: ``(B, nk)`` bool, this rank's part of a key-padding mask (True = may attend),
            sharded like the keys; ``(B, 1, 1, nk)`` is accepted too.
        scale: multiplies the dot products; default ``1/sqrt(D)``.
        softcap: as ``attnkit.attention`` (Gemma 2): each scaled score becomes
            ``softcap * tanh(s / softcap)``; every local call applies it to its own scores.
        sinks: ``(Hq,)``, as ``attnkit.attention`` (GPT-OSS): one logit per query head in every
            row's softmax denominator, the same tensor on every rank. It is joined once to each
            row's final ``(out, lse)``, after all key blocks are merged. Its gradient on each
            rank is that rank's rows' share: sum it over the group (as for any parameter every
            rank holds) to get one process's.
        dropout_p: must be 0: attnkit's dropout mask is drawn per (batch, head, query, key)
            position of one call, and a shard's calls see their own positions, so it would not
            be one process's mask. Refused by name otherwise.
        return_lse: also return the log-sum-exp of each of this rank's queries.
        group: None (the default process group), a ``ProcessGroup``, a 1-D ``DeviceMesh`` or
            ``(mesh, dim)``.
        backend: the local backend by name; None lets ``attnkit.attention`` choose.

    Returns:
        ``out (B, Hq, nq, Dv)`` in q's dtype; with ``return_lse`` also ``lse (B, Hq, nq)``
        (float32; float64 for float64 inputs). Differentiable in q, k and v.

    Raises:
        AttnkitError (a ValueError) on every rank, before any data is sent, when some rank's
        inputs are invalid or the ranks disagree (shapes, options, layout, mode).
        CommunicationError when another rank stops answering (within the group's timeout).
    """
    out, lse, _ = run(q, k, v, layout=layout, mode=mode, causal=causal, window=window,
                      key_mask=key_mask, scale=scale, softcap=softcap, sinks=sinks,
                      dropout_p=dropout_p, return_lse=return_lse, group=group, backend=backend)
    return (out, lse) if return_lse else out


@dataclass(frozen=True)
class Checked:
    """A call's validated options."""

    scale: float
    window: tuple[int | None, int | None] | None
    key_mask: torch.Tensor | None  # (B, nk) bool
    softcap: float | None
    sinks: torch.Tensor | None  # (Hq,)


def run(q, k, v, *, layout, mode, causal, window, key_mask, scale, return_lse, group, backend,
        softcap=None, sinks=None, dropout_p=0.0, anyone: dict[str, Any] | None = None,
        what: str = "akd.attention") -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """``attention`` that also shares ``anyone`` (per-rank facts, e.g. who records) during the
    agreement step and returns every rank's. Returns ``(out, lse, everyone's anyone)``."""
    grp = resolve(group)
    error, described, checked = None, {}, None
    try:
        checked, described = _check(q, k, v, layout, mode, causal, window, key_mask, scale,
                                    softcap, sinks, dropout_p, return_lse, grp, backend)
    except AttnkitError as caught:
        error = caught
    everyone = agree(grp, what, described, error,
                     {"key_mask": key_mask is not None, **(anyone or {})})
    mask = checked.key_mask
    if mask is None and any(e["key_mask"] for e in everyone):  # another rank pads its keys
        mask = torch.ones(q.shape[0], k.shape[2], dtype=torch.bool, device=q.device)
    local = Local(scale=checked.scale, backend=backend, softcap=checked.softcap)
    nq, nk = q.shape[2], k.shape[2]
    band = Band.of(causal, checked.window, grp.size * nq, grp.size * nk)
    if grp.size == 1:
        m = None if mask is None else mask[:, None, None, :]
        out, lse = local_attention(q, k, v, causal=causal, window=checked.window, mask=m,
                                   scale=checked.scale, softcap=checked.softcap,
                                   return_lse=True, backend=backend)
    elif mode == "ring":
        plan = RingPlan.build(band, layout, grp.rank, grp.size, nq, nk)
        out, lse = ring_attention(q, k, v, mask, plan, grp, local)
    elif mode == "allgather":
        out, lse = allgather_attention(q, k, v, mask, band, layout, grp, local)
    else:
        out, lse = ulysses_attention(q, k, v, mask, band, layout, grp, local)
    if checked.sinks is not None:  # once per row, after every key block (no collective)
        out, lse = with_sinks(out, lse, checked.sinks)
    return out, lse, everyone


def _check(q, k, v, layout, mode, causal, window, key_mask, scale, softcap, sinks, dropout_p,
           return_lse, grp: Group, backend) -> tuple[Checked, dict[str, Any]]:
    """Local checks (every message names the argument and a fix) → the validated options and the
    description the ranks compare."""
    check_layout(layout)
    if mode not in MODES:
        raise AttnkitError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    if not isinstance(return_lse, bool):
        raise InputTypeError(f"return_lse must be True or False; got {return_lse!r}")
    mask4 = _key_mask_4d(key_mask, q, k)
    spec, scale = validate(q, k, v, causal=causal, window=window, mask=mask4, scale=scale,
                           softcap=softcap, sinks=sinks, dropout_p=dropout_p)
    if spec.dropout_p > 0:
        raise AttnkitError(
            f"akd.attention does not apply dropout across shards (dropout_p={spec.dropout_p}): "
            "attnkit's dropout mask is drawn per (batch, head, query, key) position of one "
            "call, and each rank's calls see their own positions, so the mask would not be one "
            "process's; pass dropout_p=0 (as at evaluation), or run the call on one process")
    for name, t in (("q", q), ("k", k)):
        if t.shape[2] == 0:
            raise AttnkitError(f"{name} has local length 0 ({tuple(t.shape)}); every rank needs "
                               "at least one position of the sequence")
        why = local_error(layout, t.shape[2], name)
        if why:
            raise AttnkitError(why)
    if mode == "ulysses" and spec.hq % grp.size:
        raise AttnkitError(
            f"mode='ulysses' gives each of the {grp.size} ranks an equal share of the query "
            f"heads, but q has {spec.hq} heads (not a multiple of {grp.size}); use mode='ring' "
            "or mode='allgather', or a group whose size divides the heads")
    if backend is not None:
        _check_backend(q, k, v, spec, scale, grp, layout, mode, backend, mask4 is not None)
    given = None if spec.sinks is None else [float(x) for x in spec.sinks.detach().cpu()]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    mask = None if mask4 is None else mask4[:, 0, 0, :].expand(q.shape[0], k.shape[2])
    described = {"q shape": tuple(q.shape), "k shape": tuple(k.shape), "v shape": tuple(v.shape),
                 "dtype": str(q.dtype), "device type": q.device.type, "layout": layout,
                 "mode": mode, "causal": bool(causal), "window": spec.window, "scale": scale,
                 "softcap": spec.softcap, "sinks": given, "backend": backend,
                 "whether gradients are needed": needs_grad}
    return Checked(scale=scale, window=spec.window, key_mask=mask, softcap=spec.softcap,
                   sinks=spec.sinks), described


def _key_mask_4d(key_mask, q, k) -> torch.Tensor | None:
    """``key_mask`` as ``(B|1, 1, 1, nk)`` bool, or an error naming the shapes that work."""
    if key_mask is None:
        return None
    b, nk = q.shape[0], k.shape[2] if k.dim() == 4 else None
    if not isinstance(key_mask, torch.Tensor):
        raise InputTypeError(f"key_mask must be a bool tensor of shape (B, nk) = ({b}, {nk}) or "
                             f"None; got {type(key_mask).__name__}")
    if key_mask.dtype != torch.bool:
        raise InputTypeError(f"key_mask must be boolean (True = a key that may be attended); got "
                             f"{key_mask.dtype}. e.g. key_mask = attention_mask.bool()")
    shape = tuple(key_mask.shape)
    if key_mask.dim() == 2:
        key_mask = key_mask[:, None, None, :]
    if key_mask.dim() != 4 or key_mask.shape[1:3] != (1, 1) or key_mask.shape[0] not in (1, b) \
            or key_mask.shape[3] != nk:
        raise AttnkitError(f"key_mask of shape {shape} is not a key-padding mask for these keys; "
                           f"use (B, nk) = ({b}, {nk}) (or (B, 1, 1, nk)), this rank's part of "
                           "the mask, sharded like the keys")
    return key_mask


def _check_backend(q, k, v, spec, scale, grp: Group, layout, mode, backend, masked) -> None:
    """A backend named by the caller must accept every kind of local call this rank will make;
    try each on one query and one key now, so a refusal comes before any transfer."""
    nq, nk = q.shape[2], k.shape[2]
    band = Band.of(spec.causal, spec.window, grp.size * nq, grp.size * nk)
    if mode == "ring":
        plan = RingPlan.build(band, layout, grp.rank, grp.size, nq, nk)
        kinds = {(c.causal, c.window) for step in range(plan.steps) for c in plan.my_calls(step)}
    elif mode == "allgather":
        kinds = {(c.causal, c.window) for c in calls(
            band, chunks(layout, grp.rank, grp.size, nq), ((0, grp.size * nk, 0),))}
    else:
        kinds = {(spec.causal, spec.window)}
    needs_grad = any(t.requires_grad for t in (q, k, v))
    for causal, window in sorted(kinds, key=repr):
        tiny = [t[:1, :, :1].detach().requires_grad_(needs_grad) for t in (q, k, v)]
        mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=q.device) if masked else None
        local_attention(*tiny, causal=causal, window=window, mask=mask, scale=scale,
                        softcap=spec.softcap, return_lse=True, backend=backend)
