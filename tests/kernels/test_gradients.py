"""Gradients that flow through the lse: split-KV with ``merge``, losses on the lse, and ``merge``
itself; every backend that returns an lse makes it differentiable."""

from __future__ import annotations

import pytest
import torch

import attnkit
from tests.kernels.oracle import assert_oracle, grad_scale

BACKENDS = ["blockwise", "fused", "reference"]


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_kv_through_merge_gives_the_gradient_of_one_call(tiling, backend):
    # one query, keys [1] and [-1] in two halves: each half has one key, so its output is its
    # value whatever q is, and dq reaches q only through the two lse
    q = torch.tensor([[[[1.0]]]], dtype=torch.float64, requires_grad=True)
    k = torch.tensor([[[[1.0], [-1.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[1.0], [2.0]]]], dtype=torch.float64)
    first = attnkit.attention(q, k[:, :, :1], v[:, :, :1], return_lse=True, backend=backend)
    second = attnkit.attention(q, k[:, :, 1:], v[:, :, 1:], return_lse=True, backend=backend)
    out, _ = attnkit.merge(*first, *second)
    (dq,) = torch.autograd.grad(out.sum(), q)
    assert round(dq.item(), 4) == -0.2100
    whole = attnkit.attention(q, k, v, backend="reference")
    (dq_whole,) = torch.autograd.grad(whole.sum(), q)
    torch.testing.assert_close(dq, dq_whole)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_loss_on_the_lse_alone_backpropagates(tiling, backend):
    """d lse/dq = sum_j p_j k_j scale, d lse/dk_j = p_j q scale, d lse/d bias = p."""
    b, hq, hkv, sq, sk, d = 2, 4, 2, 37, 53, 8
    q, k, v = rand(b, hq, sq, d, seed=1), rand(b, hkv, sk, d, seed=2), rand(b, hkv, sk, 5, seed=3)
    bias = rand(1, hq, sq, sk, seed=4)
    mask = rand(b, 1, sq, sk, seed=5) > -1.0
    mask[0, :, 3] = False  # a row that sees nothing: lse = -inf, gradient 0, never NaN
    # (the fused kernel gives a bias no gradient: there it is a constant)
    leaves = [t.clone().requires_grad_(backend != "fused" or t is not bias)
              for t in (q, k, v, bias)]
    _, lse = attnkit.attention(*leaves[:3], bias=leaves[3], mask=mask, causal=True, scale=0.3,
                               return_lse=True, backend=backend)
    weights = rand(b, hq, sq, seed=6)
    loss = (lse.masked_fill(torch.isneginf(lse), 0.0) * weights).sum()
    wanted = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(loss, wanted, allow_unused=True)  # (reference: v is unused)
    dq, dk, dv, *dbias = [torch.zeros_like(t) if g is None else g for t, g in zip(wanted, grads)]
    # by hand: p = the pattern, each row weighted by the loss's weight on its lse
    p = attnkit.pattern(q, k, lse.detach(), bias=bias, mask=mask, causal=True, scale=0.3)
    wp = p * weights[..., None]  # (B, Hq, Sq, Sk)
    kk = k.repeat_interleave(2, dim=1)
    torch.testing.assert_close(dq, wp @ kk * 0.3)
    dk_by_head = wp.transpose(-1, -2) @ q * 0.3  # (B, Hq, Sk, D)
    torch.testing.assert_close(dk, dk_by_head.view(b, hkv, 2, sk, d).sum(2))
    torch.testing.assert_close(dv, torch.zeros_like(dv))
    if dbias:
        torch.testing.assert_close(dbias[0], wp.sum(0, keepdim=True))
    assert torch.equal(dq[0, :, 3], torch.zeros_like(dq[0, :, 3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_kv_gradients_follow_the_oracle_rule(tiling, dtype):
    """Split the keys at an odd point, merge, and compare every gradient with one float64 call.
    (The halves take the whole call's mask and bias sliced: causal=True would align each half
    on its own.)"""
    b, hq, hkv, sq, sk, d, cut = 1, 4, 2, 70, 130, 16, 57
    ins = [rand(b, hq, sq, d, seed=1), rand(b, hkv, sk, d, seed=2), rand(b, hkv, sk, d, seed=3),
           rand(1, hq, sq, sk, seed=4)]
    ins = [t.to(dtype).double() for t in ins]
    mask = rand(sq, sk, seed=5) > -1.0
    mask[:5, :cut] = False  # some queries see nothing in the first half
    grad_out = rand(b, hq, sq, d, seed=6).to(dtype).double()

    def split_call(backend, dt):
        leaves = [t.to(dt).requires_grad_() for t in ins]
        q, k, v, bias = leaves
        halves = [attnkit.attention(q, k[:, :, keys], v[:, :, keys], mask=mask[:, keys],
                                    bias=bias[..., keys], return_lse=True, backend=backend)
                  for keys in (slice(0, cut), slice(cut, sk))]
        out, _ = attnkit.merge(*halves[0], *halves[1])
        return torch.autograd.grad(out, leaves, grad_out.to(dt))

    leaves = [t.clone().requires_grad_() for t in ins]
    whole = attnkit.attention(*leaves[:3], mask=mask, bias=leaves[3], backend="reference")
    ref64 = torch.autograd.grad(whole, leaves, grad_out)
    ref_dtype = split_call("reference", dtype)
    fast = split_call("blockwise", dtype)
    for name, a, r, r64 in zip(["dq", "dk", "dv", "dbias"], fast, ref_dtype, ref64):
        assert_oracle(a, r, r64, 3, name, grad_scale(ref64))


def test_blockwise_gradcheck_with_the_lse_as_an_output(tiling):
    b, hq, hkv, sq, sk, d = 1, 2, 1, 19, 45, 3
    q, k, v = rand(b, hq, sq, d, seed=1), rand(b, hkv, sk, d, seed=2), rand(b, hkv, sk, 2, seed=3)
    bias = rand(1, hq, sq, sk, seed=4)
    mask = rand(1, 1, sq, sk, seed=5) > -0.5
    mask[..., 4, :] = False

    def f(q, k, v, bias):
        out, lse = attnkit.attention(q, k, v, bias=bias, mask=mask, window=(20, 3),
                                     return_lse=True, backend="blockwise")
        return out, lse.masked_fill(torch.isneginf(lse), 0.0)  # -inf - -inf would be NaN

    inputs = [t.requires_grad_() for t in (q, k, v, bias)]
    assert f(*inputs)[1].requires_grad  # (gradcheck skips outputs that do not require grad)
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)  # a random projection of J


def test_merge_gradcheck_in_float64_with_a_side_that_saw_nothing():
    out1, out2 = rand(2, 5, 3, seed=1).requires_grad_(), rand(2, 5, 3, seed=2).requires_grad_()
    lse1, lse2 = rand(2, 5, seed=3), rand(2, 5, seed=4)
    lse1[0, 1] = float("-inf")  # these queries saw no key on one side
    lse2[1, 2:4] = float("-inf")
    inputs = (out1, lse1.requires_grad_(), out2, lse2.requires_grad_())
    assert torch.autograd.gradcheck(attnkit.merge, inputs)
    assert torch.autograd.gradgradcheck(attnkit.merge, inputs)


def test_merge_of_two_empty_sides_has_zero_gradients_not_nan():
    out1, out2 = rand(2, 5, 3, seed=1).requires_grad_(), rand(2, 5, 3, seed=2).requires_grad_()
    lse1 = torch.full((2, 5), float("-inf"), dtype=torch.float64, requires_grad=True)
    lse2 = torch.full((2, 5), float("-inf"), dtype=torch.float64, requires_grad=True)
    out, lse = attnkit.merge(out1, lse1, out2, lse2)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    grads = torch.autograd.grad(out.sum() + lse.exp().sum(), (out1, lse1, out2, lse2))
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


def test_reference_and_blockwise_lse_gradients_agree_with_bias_of_minus_inf_rows(tiling):
    q, k, v = rand(1, 2, 9, 4, seed=1), rand(1, 2, 11, 4, seed=2), rand(1, 2, 11, 3, seed=3)
    bias = rand(1, 2, 9, 11, seed=4)
    bias[:, :, 2] = float("-inf")  # query 2 is biased away from every key
    grads = []
    for backend in ["blockwise", "reference"]:
        leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
        out, lse = attnkit.attention(*leaves[:3], bias=leaves[3], return_lse=True,
                                     backend=backend)
        assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
        assert torch.isneginf(lse[:, :, 2]).all()
        loss = out.square().sum() + lse.masked_fill(torch.isneginf(lse), 0.0).sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for a, b in zip(*grads):
        assert not torch.isnan(a).any()
        torch.testing.assert_close(a, b)
