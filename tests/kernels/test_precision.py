"""Accuracy where rounding bites: huge lse, half-precision outputs, and what pattern() can do."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.kernels.api import validate
from attnkit.kernels.reference import reference_pattern
from tests.kernels.oracle import assert_oracle, grad_scale


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def grads(backend, dtype, inputs, grad_out, **opts):
    """``(dq, dk, dv[, dbias])`` of ``attention(...)`` in ``dtype`` (a bias is a leaf too, but
    for the fused backend, which gives it no gradient)."""
    leaves = [t.to(dtype).requires_grad_() for t in inputs]
    opts = dict(opts)
    if "bias" in opts:
        opts["bias"] = opts["bias"].detach().to(dtype).requires_grad_(backend != "fused")
        if backend != "fused":
            leaves.append(opts["bias"])
    out = attnkit.attention(*leaves[:3], backend=backend, **opts)
    return torch.autograd.grad(out, leaves, grad_out.to(dtype))


@pytest.mark.parametrize("backend", ["blockwise", "fused"])
@pytest.mark.parametrize("offset", [1e3, 1e4, 1e5])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_at_huge_lse_are_as_accurate_as_naive_float32(tiling, offset, seed, backend):
    """A per-query bias of +-1e3..1e5 puts every lse near it while the pattern stays spread. The
    backward once took P = exp(S - lse) from the float32 lse, whose rounding (6e-4 at 1e4)
    entered every probability: 4x the naive float32 error. Now it takes P from the row's max
    and sum, as the forward made it."""
    b, h, n, d = 1, 2, 96, 16
    inputs = [rand(b, h, n, d, seed=seed + s).float().double() for s in (1, 2, 3)]
    row = (rand(1, 1, n, 1, seed=seed + 4).sign() * offset).expand(1, h, n, n)
    bias = (row + rand(1, h, n, n, seed=seed + 5)).float().double()
    grad_out = rand(b, h, n, d, seed=seed + 6).float().double()
    ref64 = grads("reference", torch.float64, inputs, grad_out, bias=bias)
    ref32 = grads("reference", torch.float32, inputs, grad_out, bias=bias)
    fast = grads(backend, torch.float32, inputs, grad_out, bias=bias)
    for name, a, r, r64 in zip(["dq", "dk", "dv", "dbias"], fast, ref32, ref64):
        assert_oracle(a, r, r64, 3, name, grad_scale(ref64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("offset", [0.0, 30.0, 300.0])
def test_half_precision_gradients_are_float32_gradients_rounded_once(tiling, dtype, offset):
    """Values with a large common part make rowsum(dO * O) large: computed from O rounded to
    half precision its error swamped the gradients (100x at offset 300). Taken from the float32
    output, a half-precision gradient is the float32 one plus its final rounding."""
    b, h, n, d = 1, 2, 100, 32
    q, k = rand(b, h, n, d, seed=1), rand(b, h, n, d, seed=2)
    v = offset + rand(b, h, n, d, seed=3)
    inputs = [t.to(dtype).double() for t in (q, k, v)]
    grad_out = rand(b, h, n, d, seed=4).to(dtype).double()
    ref64 = grads("reference", torch.float64, inputs, grad_out, causal=True)
    in_float32 = grads("blockwise", torch.float32, inputs, grad_out, causal=True)
    in_dtype = grads("blockwise", dtype, inputs, grad_out, causal=True)
    for name, half, single, exact in zip(["dq", "dk", "dv"], in_dtype, in_float32, ref64):
        rounding = torch.finfo(dtype).eps / 2 * exact.abs().max().item()
        err_half = (half.double() - exact).abs().max().item()
        err_single = (single.double() - exact).abs().max().item()
        assert err_half <= err_single + rounding, (name, err_half, err_single, rounding)


def pattern_cases():
    """(scale, bias offset): huge scores from the scale, or from a constant bias."""
    return [(1e3, 0.0), (1e4, 0.0), (0.125, 1e4), (0.125, -1e4), (1.0, 1e5), (10.0, 0.0)]


@pytest.mark.parametrize("backend", ["blockwise", "fused"])
@pytest.mark.parametrize(("scale", "offset"), pattern_cases())
def test_pattern_is_as_exact_as_its_float32_lse_allows(scale, offset, backend):
    """The documented limit: pattern()'s error is at most 2x naive float32's plus the float32
    lse's own rounding, P * |lse| * 2**-24. An lse made by blockwise carries scores rounded as
    pattern() rounds them, so that is all; one made by the fused kernel carries that kernel's
    float32 dot products, which pattern() cannot repeat: the two differ by up to about
    2 sqrt(D) 2**-24 S per score (S: |scale| sum_d |q_d k_d| + |bias|, the row's largest)."""
    n, d = 128, 64
    q, k, v = (rand(1, 2, n, d, seed=s).float() for s in (1, 2, 3))
    bias = (offset + rand(n, n, seed=4)).float()
    _, lse = attnkit.attention(q, k, v, scale=scale, bias=bias, return_lse=True,
                               backend=backend)
    got = attnkit.pattern(q, k, lse, scale=scale, bias=bias)
    spec, _ = validate(q, k, v, bias=bias, scale=scale)
    exact, _ = reference_pattern(q.double(), k.double(),
                                 validate(q.double(), k.double(), v.double(),
                                          bias=bias.double(), scale=scale)[0], scale)
    naive, _ = reference_pattern(q, k, spec, scale)  # softmax of float32 scores
    err = (got.double() - exact).abs().max().item()
    err_naive = (naive.double() - exact).abs().max().item()
    lse_rounding = (exact * lse.double().abs()[..., None]).max().item() * 2**-24
    floor = lse_rounding + 1e-6
    if backend == "fused":
        sizes = q.double().abs() @ k.double().abs().transpose(-1, -2) * scale + bias.abs()
        largest = sizes.amax(dim=-1, keepdim=True)  # (B, H, Sq, 1): S of each row
        floor += (exact * largest).max().item() * 2 * d**0.5 * 2**-24
    assert err <= 2 * err_naive + floor, (err, err_naive, floor)


def test_pattern_of_float64_inputs_is_exact():
    q, k, v = (rand(1, 2, 50, 8, seed=s) for s in (1, 2, 3))
    _, lse = attnkit.attention(q, k, v, scale=1e4, causal=True, return_lse=True)
    exact, _ = reference_pattern(q, k, validate(q, k, v, causal=True, scale=1e4)[0], 1e4)
    torch.testing.assert_close(attnkit.pattern(q, k, lse, scale=1e4, causal=True), exact,
                               rtol=0, atol=1e-9)
