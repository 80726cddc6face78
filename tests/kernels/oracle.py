"""The oracle rule from DESIGN.md, shared by the kernel tests.

A fast result passes when its max error against the float64 reference is at most ``factor`` times
the error of the reference backend run in the input dtype, plus a 1e-6 floor (2x for outputs and
lse, 3x for gradients).

Gradients get a floor of 1e-5 times the largest reference gradient of the call (``grad_scale``):
the FlashAttention-2 backward forms ``dP - rowsum(dO * O)``, a difference of two equal sums, whose
float32 rounding the materialized reference can avoid exactly — with one visible key dQ and dK
are exactly 0 there and ~1e-5 of the other gradients here.
"""

from __future__ import annotations

import torch


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference over entries where both are finite; infinities must match exactly."""
    a, b = a.double(), b.double()
    assert torch.equal(torch.isinf(a), torch.isinf(b)), "infinite entries (lse = -inf) differ"
    assert not torch.isnan(a).any(), "NaN in the result"
    finite = torch.isfinite(b)
    return (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0


def assert_oracle(fast: torch.Tensor, same_dtype_ref: torch.Tensor, ref64: torch.Tensor,
                  factor: float, what: str, grad_scale: float | None = None) -> None:
    """``factor`` is 2 for outputs and lse, 3 for gradients (pass their ``grad_scale``)."""
    floor = 1e-6 if grad_scale is None else 1e-5 * max(1.0, grad_scale)
    err_fast = max_err(fast, ref64)
    err_ref = max_err(same_dtype_ref, ref64)
    assert err_fast <= factor * err_ref + floor, (
        f"{what}: error {err_fast:.3g} > {factor} x reference-in-dtype error {err_ref:.3g} "
        f"+ {floor}")


def grad_scale(grads) -> float:
    """The largest magnitude among a call's reference gradients."""
    return max(g.abs().max().item() for g in grads if g.numel())
