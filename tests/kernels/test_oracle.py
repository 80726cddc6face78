"""Blockwise (and sdpa where it applies) against the float64 reference, by the oracle rule."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from tests.kernels.oracle import assert_oracle, grad_scale


@st.composite
def problems(draw, max_len=300):
    """Random attention problems: odd sizes, Sq != Sk, groups, masks, windows, bias, strides."""
    b = draw(st.integers(1, 2))
    hkv = draw(st.integers(1, 3))
    hq = hkv * draw(st.integers(1, 3))
    sq, sk = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    d, dv = draw(st.integers(1, 80)), draw(st.integers(1, 40))
    opts = {"causal": draw(st.booleans())}
    if draw(st.booleans()):
        side = st.one_of(st.none(), st.integers(0, 60))
        opts["window"] = (draw(side), draw(side))
    mask_kind = draw(st.sampled_from(["none", "keys", "full", "heads"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    if mask_kind == "keys":
        opts["mask"] = torch.rand(b, 1, 1, sk, generator=g) > 0.3
    elif mask_kind == "full":
        opts["mask"] = torch.rand(sq, sk, generator=g) > 0.3
    elif mask_kind == "heads":
        opts["mask"] = torch.rand(b, hq, sq, sk, generator=g) > 0.5
    if draw(st.booleans()):
        opts["bias"] = torch.randn(1, hq, 1 if draw(st.booleans()) else sq, sk, generator=g)
    strided = draw(st.booleans())
    return (b, hq, hkv, sq, sk, d, dv), opts, g, strided


def make_qkv(shape, g, dtype=torch.float64, strided=False):
    b, hq, hkv, sq, sk, d, dv = shape
    def rand(h, s, e):
        if strided:  # (B, S, H, E) memory seen as (B, H, S, E): non-contiguous, like a model's
            return torch.randn(b, s, h, e, generator=g, dtype=dtype).transpose(1, 2)
        return torch.randn(b, h, s, e, generator=g, dtype=dtype)
    return rand(hq, sq, d), rand(hkv, sk, d), rand(hkv, sk, dv)


def rounded_to(dtype, q, k, v, opts, grad_out):
    """Inputs rounded to ``dtype`` once, so the float64 oracle sees what the fast path sees."""
    def r(t):
        return t.to(dtype).double()
    opts = {**opts, "bias": r(opts["bias"])} if "bias" in opts else opts
    return r(q), r(k), r(v), opts, r(grad_out)


def run(q, k, v, opts, backend, dtype, grad_out=None):
    """Output, lse and gradients of q, k, v (and bias) for one backend, in ``dtype``."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    opts = dict(opts)
    if "bias" in opts:
        opts["bias"] = opts["bias"].detach().to(dtype).requires_grad_()
        leaves.append(opts["bias"])
    out, lse = attnkit.attention(*leaves[:3], return_lse=True, backend=backend, **opts)
    grads = torch.autograd.grad(out, leaves, grad_out.to(dtype))
    return out, lse, grads


@given(problems())
def test_blockwise_float32_matches_float64_reference(tiling, problem):
    shape, opts, g, strided = problem
    q, k, v = make_qkv(shape, g, strided=strided)
    grad_out = torch.randn(shape[0], shape[1], shape[3], shape[6], generator=g, dtype=torch.float64)
    q, k, v, opts, grad_out = rounded_to(torch.float32, q, k, v, opts, grad_out)
    ref = run(q, k, v, opts, "reference", torch.float64, grad_out)
    ref32 = run(q, k, v, opts, "reference", torch.float32, grad_out)
    fast = run(q, k, v, opts, "blockwise", torch.float32, grad_out)
    assert_oracle(fast[0], ref32[0], ref[0], 2, "output")
    assert_oracle(fast[1], ref32[1], ref[1], 2, "lse")
    for name, a, b, c in zip(["dq", "dk", "dv", "dbias"], fast[2], ref32[2], ref[2]):
        assert_oracle(a, b, c, 3, name, grad_scale(ref[2]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@settings(max_examples=20)
@given(problems(max_len=200))
def test_blockwise_half_precision(dtype, problem):
    shape, opts, g, strided = problem
    q, k, v = make_qkv(shape, g, strided=strided)
    grad_out = torch.randn(shape[0], shape[1], shape[3], shape[6], generator=g, dtype=torch.float64)
    q, k, v, opts, grad_out = rounded_to(dtype, q, k, v, opts, grad_out)
    ref = run(q, k, v, opts, "reference", torch.float64, grad_out)
    ref_half = run(q, k, v, opts, "reference", dtype, grad_out)
    fast = run(q, k, v, opts, "blockwise", dtype, grad_out)
    assert fast[0].dtype == dtype and fast[1].dtype == torch.float32
    assert_oracle(fast[0], ref_half[0], ref[0], 2, "output")
    assert_oracle(fast[1], ref_half[1], ref[1], 2, "lse")
    for name, a, b, c in zip(["dq", "dk", "dv", "dbias"], fast[2], ref_half[2], ref[2]):
        assert_oracle(a, b, c, 3, name, grad_scale(ref[2]))


def test_long_sequences_cross_several_tiles():
    """Lengths beyond one default tile in both directions, causal with Sq != Sk (decode-like)."""
    g = torch.Generator().manual_seed(1)
    for sq, sk, opts in [(1100, 2100, {"causal": True}), (3, 2500, {"causal": True}),
                         (700, 1500, {"window": (300, 20)})]:
        q, k, v = make_qkv((1, 4, 2, sq, sk, 24, 16), g)
        grad_out = torch.randn(1, 4, sq, 16, generator=g, dtype=torch.float64)
        q, k, v, opts, grad_out = rounded_to(torch.float32, q, k, v, opts, grad_out)
        ref = run(q, k, v, opts, "reference", torch.float64, grad_out)
        ref32 = run(q, k, v, opts, "reference", torch.float32, grad_out)
        fast = run(q, k, v, opts, "blockwise", torch.float32, grad_out)
        assert_oracle(fast[0], ref32[0], ref[0], 2, "output")
        for name, a, b, c in zip(["dq", "dk", "dv"], fast[2], ref32[2], ref[2]):
            assert_oracle(a, b, c, 3, name, grad_scale(ref[2]))
