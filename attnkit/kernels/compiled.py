"""``attention()`` under ``torch.compile``: one ``torch.library`` custom op, ``attnkit::attention``,
with a fake implementation (shapes only) and its autograd, the lse's gradient included.

Dynamo cannot trace the fast kernels themselves (blockwise runs tiles on Python threads; the
fused kernels call private ops on pieces chosen by Python logic, with their own autograd), so
``attention()``, when compiling, validates and chooses a backend as usual and then calls the op:
the graph holds one node per attention call, and nothing breaks it.

A backend that has a ``Split`` (``Backend.split``) computes the op's forward and backward
through it: ``forward`` returns ``(out, lse, residuals)`` (what its backward needs beyond q, k,
v, out and lse: e.g. blockwise's row max and sum), ``backward`` turns them and ``(dout, dlse)``
into gradients, and ``residuals_like`` gives their shapes for the fake implementation. A backend
without one ("reference", "sdpa": plain torch operations) is traced by Dynamo like any code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attnkit.kernels.masks import MaskSpec


@dataclass(frozen=True)
class Split:
    """A backend's forward and backward as separate functions (see the module docstring).

    ``forward(q, k, v, spec, scale, needs_grad) -> (out, lse, residuals)``;
    ``backward(q, k, v, spec, scale, out, lse, residuals, dout, dlse, bias_grad, sinks_grad)
    -> (dq, dk, dv, dbias or None, dsinks or None)`` (``dout``/``dlse`` may be None: that
    output was unused);
    ``residuals_like(q, k, v, spec, needs_grad) -> list[Tensor]`` (empty tensors, right shapes).
    """

    forward: Callable
    backward: Callable
    residuals_like: Callable


def compiled_attention(name: str, q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec,
                       scale: float) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of backend ``name`` through the custom op (what ``attention()`` calls
    while compiling)."""
    bias_grad = spec.bias is not None and spec.bias.requires_grad
    sinks_grad = spec.sinks is not None and spec.sinks.requires_grad
    needs_grad = torch.is_grad_enabled() and (
        q.requires_grad or k.requires_grad or v.requires_grad or bias_grad or sinks_grad)
    left, right = spec.window if spec.window is not None else (None, None)
    out, lse, _ = torch.ops.attnkit.attention(
        q, k, v, spec.mask, spec.bias, spec.sinks, spec.causal, spec.window is not None, left,
        right, scale, spec.softcap, spec.dropout_p, spec.dropout_seed, name, needs_grad,
        bias_grad, sinks_grad)
    return out, lse


def _spec(q: Tensor, k: Tensor, mask: Tensor | None, bias: Tensor | None,
          sinks: Tensor | None, causal: bool, windowed: bool, left: int | None,
          right: int | None, softcap: float | None, dropout_p: float,
          dropout_seed: int | None) -> MaskSpec:
    return MaskSpec(sq=q.shape[2], sk=k.shape[2], hq=q.shape[1], hkv=k.shape[1], causal=causal,
                    window=(left, right) if windowed else None, mask=mask, bias=bias,
                    softcap=softcap, sinks=sinks, dropout_p=dropout_p, dropout_seed=dropout_seed)


def _backend(name: str):
    from attnkit.kernels.api import _lookup  # (api imports this module)

    return _lookup(name)


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.custom_op("attnkit::attention", mutates_args=())
def _attention_op(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None,
                  sinks: Tensor | None, causal: bool, windowed: bool, left: int | None,
                  right: int | None, scale: float, softcap: float | None, dropout_p: float,
                  dropout_seed: int | None, backend: str, needs_grad: bool, bias_grad: bool,
                  sinks_grad: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
    spec = _spec(q, k, mask, bias, sinks, causal, windowed, left, right, softcap, dropout_p,
                 dropout_seed)
    out, lse, residuals = _backend(backend).split.forward(q, k, v, spec, scale, needs_grad)
    # contiguous, as the fake implementation promises: compiled code reads them by its strides
    return (out.contiguous(), lse.contiguous().to(_lse_dtype(q)),
            [r.contiguous() for r in residuals])


@_attention_op.register_fake
def _attention_fake(q, k, v, mask, bias, sinks, causal, windowed, left, right, scale, softcap,
                    dropout_p, dropout_seed, backend, needs_grad, bias_grad, sinks_grad):
    b, hq, sq, _ = q.shape
    out = q.new_empty(b, hq, sq, v.shape[-1])
    lse = q.new_empty(b, hq, sq, dtype=_lse_dtype(q))
    spec = _spec(q, k, mask, bias, sinks, causal, windowed, left, right, softcap, dropout_p,
                 dropout_seed)
    residuals = _backend(backend).split.residuals_like(q, k, v, spec, needs_grad)
    return out, lse, [r.contiguous() for r in residuals]


@torch.library.custom_op("attnkit::attention_backward", mutates_args=())
def _attention_backward_op(dout: Tensor | None, dlse: Tensor | None, q: Tensor, k: Tensor,
                           v: Tensor, mask: Tensor | None, bias: Tensor | None,
                           sinks: Tensor | None, causal: bool, windowed: bool, left: int | None,
                           right: int | None, scale: float, softcap: float | None,
                           dropout_p: float, dropout_seed: int | None, backend: str,
                           bias_grad: bool, sinks_grad: bool, out: Tensor, lse: Tensor,
                           residuals: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """``(dq, dk, dv, [dbias if bias_grad] + [dsinks if sinks_grad])``."""
    spec = _spec(q, k, mask, bias, sinks, causal, windowed, left, right, softcap, dropout_p,
                 dropout_seed)
    dq, dk, dv, dbias, dsinks = _backend(backend).split.backward(
        q, k, v, spec, scale, out, lse, residuals, dout, dlse, bias_grad, sinks_grad)
    extra = ([dbias.contiguous()] if bias_grad else []) + (
        [dsinks.contiguous()] if sinks_grad else [])
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), extra


@_attention_backward_op.register_fake
def _attention_backward_fake(dout, dlse, q, k, v, mask, bias, sinks, causal, windowed, left,
                             right, scale, softcap, dropout_p, dropout_seed, backend, bias_grad,
                             sinks_grad, out, lse, residuals):
    extra = ([torch.empty_like(bias, memory_format=torch.contiguous_format)] if bias_grad
             else []) + ([torch.empty_like(sinks)] if sinks_grad else [])
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format), extra)


def _setup_context(ctx, inputs, output):
    (q, k, v, mask, bias, sinks, causal, windowed, left, right, scale, softcap, dropout_p,
     dropout_seed, backend, needs_grad, bias_grad, sinks_grad) = inputs
    out, lse, residuals = output
    ctx.save_for_backward(q, k, v, mask, bias, sinks, out, lse, *residuals)
    ctx.options = (causal, windowed, left, right, scale, softcap, dropout_p, dropout_seed,
                   backend, bias_grad, sinks_grad)


def _backward(ctx, dout, dlse, _dresiduals):
    q, k, v, mask, bias, sinks, out, lse, *residuals = ctx.saved_tensors
    (causal, windowed, left, right, scale, softcap, dropout_p, dropout_seed, backend, bias_grad,
     sinks_grad) = ctx.options
    dq, dk, dv, extra = torch.ops.attnkit.attention_backward(
        dout, dlse, q, k, v, mask, bias, sinks, causal, windowed, left, right, scale, softcap,
        dropout_p, dropout_seed, backend, bias_grad, sinks_grad, out, lse, residuals)
    extra = list(extra)
    dbias = extra.pop(0) if bias_grad else None
    dsinks = extra.pop(0) if sinks_grad else None
    return (dq, dk, dv, None, dbias, dsinks) + (None,) * 12


_attention_op.register_autograd(_backward, setup_context=_setup_context)
