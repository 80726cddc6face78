"""Soft-capping, sinks and dropout: blockwise against the float64 reference by the oracle rule
(outputs, lse, every gradient including dsinks and those through the lse), against their
published definitions (Gemma 2's soft-capping, GPT-OSS's sinks) written out here in float64,
and with partial results combined by ``merge``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit.kernels import dropout
from attnkit.kernels.api import validate
from attnkit.kernels.reference import reference_pattern, visibility
from tests.kernels.oracle import assert_oracle, grad_scale
from tests.kernels.test_oracle import make_qkv, problems

NAMES = ["dq", "dk", "dv", "dbias", "dsinks"]


@st.composite
def option_problems(draw, max_len=150):
    """test_oracle's random problems with soft-capping, sinks and dropout, one or all."""
    shape, opts, g, strided = draw(problems(max_len=max_len))
    which = draw(st.sampled_from(["softcap", "sinks", "dropout", "all"]))
    if which in ("softcap", "all"):
        opts["softcap"] = draw(st.sampled_from([0.3, 2.0, 20.0, 50.0]))
        if draw(st.booleans()):
            opts["scale"] = draw(st.sampled_from([1.0, 10.0]))  # saturate the cap
    if which in ("sinks", "all"):
        opts["sinks"] = torch.randn(shape[1], generator=g, dtype=torch.float64) * draw(
            st.sampled_from([1.0, 5.0]))
    if which in ("dropout", "all"):
        opts["dropout_p"] = draw(st.sampled_from([0.1, 0.5, 0.9]))
        opts["dropout_seed"] = draw(st.integers(0, dropout.SEED_LIMIT - 1))
    return shape, opts, g, strided


def rounded(dtype, *tensors):
    return [t.to(dtype).double() for t in tensors]


def round_opts(dtype, opts):
    return {name: rounded(dtype, value)[0] if name in ("bias", "sinks") else value
            for name, value in opts.items()}


def run(q, k, v, opts, backend, dtype, grad_out, lse_weights):
    """Output, lse and the gradients ``(dq, dk, dv, dbias, dsinks)`` of
    ``sum(out * grad_out) + sum(lse * lse_weights)`` (finite lse only), in ``dtype``."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    opts = dict(opts)
    for name in ("bias", "sinks"):
        if name in opts:
            opts[name] = opts[name].detach().to(dtype).requires_grad_()
            leaves.append(opts[name])
    out, lse = attnkit.attention(*leaves[:3], return_lse=True, backend=backend, **opts)
    loss = (out.double() * grad_out).sum() + (
        lse.double().masked_fill(torch.isneginf(lse), 0.0) * lse_weights).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return out, lse, [torch.zeros_like(t) if d is None else d for t, d in zip(leaves, grads)]


def names_of(opts):
    return NAMES[:3] + [n for n, opt in (("dbias", "bias"), ("dsinks", "sinks")) if opt in opts]


def check_against_oracle(problem, dtype):
    shape, opts, g, strided = problem
    b, hq, _, sq, _, _, dv = shape
    q, k, v = rounded(dtype, *make_qkv(shape, g, strided=strided))
    opts = round_opts(dtype, opts)
    grad_out = rounded(dtype, torch.randn(b, hq, sq, dv, generator=g, dtype=torch.float64))[0]
    weights = torch.randn(b, hq, sq, generator=g, dtype=torch.float64)
    args = (q, k, v, opts)
    ref = run(*args, "reference", torch.float64, grad_out, weights)
    ref_dtype = run(*args, "reference", dtype, grad_out, weights)
    fast = run(*args, "blockwise", dtype, grad_out, weights)
    assert fast[0].dtype == dtype and fast[1].dtype == torch.float32
    assert_oracle(fast[0], ref_dtype[0], ref[0], 2, "output")
    assert_oracle(fast[1], ref_dtype[1], ref[1], 2, "lse")
    for name, a, r, r64 in zip(names_of(opts), fast[2], ref_dtype[2], ref[2]):
        assert_oracle(a, r, r64, 3, name, grad_scale(ref[2]))


@given(option_problems())
def test_options_float32_match_float64_reference(tiling, problem):
    check_against_oracle(problem, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@settings(max_examples=12)
@given(option_problems(max_len=100))
def test_options_half_precision(dtype, problem):
    check_against_oracle(problem, dtype)


# ---- peers: the published definitions, in float64 ------------------------------------------


def eager_gemma2(q, k, v, additive_mask, scaling, softcap):
    """transformers' Gemma 2 eager attention: scale, cap with tanh, add the mask, softmax."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    weights = q @ k.transpose(2, 3) * scaling
    weights = torch.tanh(weights / softcap) * softcap
    weights = torch.softmax(weights + additive_mask, dim=-1)
    return weights @ v, weights


def eager_gpt_oss(q, k, v, additive_mask, scaling, sinks):
    """transformers' GPT-OSS eager attention: a sink logit per head joins each row's softmax
    and is dropped from the weights."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    weights = q @ k.transpose(2, 3) * scaling + additive_mask
    sink = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[2], 1)
    combined = torch.cat([weights, sink], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    weights = torch.softmax(combined, dim=-1)[..., :-1]
    return weights @ v, weights


def padded_causal(b, sq, sk, g):
    """A boolean causal mask with left padding, and eager's additive form of it."""
    seen = torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq).expand(b, 1, sq, sk).clone()
    seen[0, ..., :3] = False  # sequence 0 is left-padded by 3
    additive = torch.zeros(seen.shape, dtype=torch.float64).masked_fill(
        ~seen, torch.finfo(torch.float64).min)
    return seen, additive


@pytest.mark.parametrize("backend", ["reference", "blockwise"])
def test_softcap_equals_gemma2_eager(tiling, backend):
    g = torch.Generator().manual_seed(3)
    q, k, v = make_qkv((2, 4, 2, 19, 23, 16, 16), g)
    q = q * 4  # scores up to ~30: the cap bites
    mask, additive = padded_causal(2, 19, 23, g)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    peer_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = attnkit.attention(*leaves, mask=mask, scale=0.25, softcap=5.0, return_lse=True,
                                 backend=backend)
    peer, peer_weights = eager_gemma2(*peer_leaves, additive, 0.25, 5.0)
    torch.testing.assert_close(out, peer, rtol=1e-10, atol=1e-10)
    weights = attnkit.pattern(*leaves[:2], lse, mask=mask, scale=0.25, softcap=5.0)
    torch.testing.assert_close(weights, peer_weights, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    w = torch.randn(weights.shape, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((out * grad_out).sum() + (weights * w).sum(), leaves)
    theirs = torch.autograd.grad((peer * grad_out).sum() + (peer_weights * w).sum(), peer_leaves)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "blockwise"])
def test_sinks_equal_gpt_oss_eager(tiling, backend):
    g = torch.Generator().manual_seed(4)
    q, k, v = make_qkv((2, 6, 2, 17, 17, 8, 8), g)
    sinks = torch.randn(6, generator=g, dtype=torch.float64) * 2
    mask, additive = padded_causal(2, 17, 17, g)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sinks)]
    peer_leaves = [t.clone().requires_grad_() for t in (q, k, v, sinks)]
    out, lse = attnkit.attention(*leaves[:3], mask=mask, sinks=leaves[3], return_lse=True,
                                 backend=backend)
    peer, peer_weights = eager_gpt_oss(*peer_leaves[:3], additive, 8**-0.5, peer_leaves[3])
    torch.testing.assert_close(out, peer, rtol=1e-10, atol=1e-10)
    weights = attnkit.pattern(*leaves[:2], lse, mask=mask, sinks=leaves[3])
    torch.testing.assert_close(weights, peer_weights, rtol=1e-10, atol=1e-10)
    assert (weights.sum(-1) < 1).all()  # the sink takes its share of every row
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    w = torch.randn(weights.shape, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((out * grad_out).sum() + (weights * w).sum(), leaves)
    theirs = torch.autograd.grad((peer * grad_out).sum() + (peer_weights * w).sum(), peer_leaves)
    for name, a, b in zip(["dq", "dk", "dv", "dsinks"], ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


# ---- sinks: rows that see nothing, merge ----------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "blockwise"])
def test_a_row_that_sees_no_key_has_lse_equal_to_its_sink(tiling, backend):
    q, k, v = make_qkv((2, 4, 2, 9, 11, 8, 5), torch.Generator().manual_seed(5))
    sinks = torch.tensor([0.5, -1.0, 2.0, float("-inf")], dtype=torch.float64,
                         requires_grad=True)
    mask = torch.ones(2, 1, 9, 11, dtype=torch.bool)
    mask[1, :, 4] = False  # query 4 of sequence 1 sees nothing
    q.requires_grad_()
    out, lse = attnkit.attention(q, k, v, mask=mask, sinks=sinks, return_lse=True,
                                 backend=backend)
    assert torch.equal(out[1, :, 4], torch.zeros_like(out[1, :, 4]))
    torch.testing.assert_close(lse[1, :3, 4], sinks[:3].detach(), rtol=1e-15, atol=0)
    assert torch.isneginf(lse[1, 3, 4])  # a sink of -inf is no sink: as without sinks
    assert torch.equal(attnkit.pattern(q, k, lse, mask=mask, sinks=sinks)[1, :, 4],
                       torch.zeros(4, 11, dtype=torch.float64))
    # d lse / d sink = 1 in that row; its out and q get nothing from it
    only_there = torch.zeros_like(lse)
    only_there[1, :3, 4] = 1.0
    dq, dsinks = torch.autograd.grad((lse.masked_fill(torch.isneginf(lse), 0) * only_there).sum(),
                                     (q, sinks))
    assert dsinks.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert torch.equal(dq, torch.zeros_like(dq))


def test_sinks_of_minus_inf_change_nothing(tiling):
    q, k, v = make_qkv((1, 3, 3, 20, 30, 8, 8), torch.Generator().manual_seed(6))
    none = torch.full((3,), float("-inf"), dtype=torch.float64)
    for backend in ("reference", "blockwise"):
        with_sinks = attnkit.attention(q, k, v, sinks=none, causal=True, return_lse=True,
                                       backend=backend)
        without = attnkit.attention(q, k, v, causal=True, return_lse=True, backend=backend)
        for a, b in zip(with_sinks, without):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "blockwise"])
@pytest.mark.parametrize("sink_half", [0, 1])
def test_merge_counts_sinks_once_when_one_partial_call_has_them(tiling, backend, sink_half):
    """Split-KV with sinks: the sinks go to exactly one partial call (any one, even one whose
    queries see no key there), and the merged out, lse and every gradient equal one call."""
    b, hq, hkv, sq, sk, d, cut = 1, 4, 2, 30, 50, 8, 21
    q, k, v = make_qkv((b, hq, hkv, sq, sk, d, d), torch.Generator().manual_seed(7))
    sinks = torch.randn(hq, dtype=torch.float64)
    mask = torch.rand(sq, sk, generator=torch.Generator().manual_seed(8)) > 0.2
    mask[:4, :cut] = False  # these queries see nothing in the first half
    grad_out = torch.randn(b, hq, sq, d, dtype=torch.float64)

    def grads(out, lse, leaves):
        return torch.autograd.grad((out * grad_out).sum() + lse.sum(), leaves)

    leaves = [t.clone().requires_grad_() for t in (q, k, v, sinks)]
    whole = attnkit.attention(*leaves[:3], mask=mask, sinks=leaves[3], return_lse=True,
                              backend="reference")
    expected = grads(*whole, leaves)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sinks)]
    halves = []
    for i, keys in enumerate((slice(0, cut), slice(cut, sk))):
        halves.append(attnkit.attention(leaves[0], leaves[1][:, :, keys], leaves[2][:, :, keys],
                                        mask=mask[:, keys], return_lse=True, backend=backend,
                                        sinks=leaves[3] if i == sink_half else None))
    out, lse = attnkit.merge(*halves[0], *halves[1])
    torch.testing.assert_close(out, whole[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, whole[1], rtol=1e-10, atol=1e-12)
    for name, a, e in zip(["dq", "dk", "dv", "dsinks"], grads(out, lse, leaves), expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12, msg=name)


# ---- differentiable patterns --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", [{}, {"softcap": 3.0}, {"sinks": True},
                                     {"softcap": 3.0, "sinks": True, "dropout_p": 0.3}])
def test_pattern_gradients_follow_the_oracle_rule(tiling, dtype, options):
    """pattern(q, k, lse) with the lse from attention() on the graph: its gradients to q, k,
    bias and sinks (the lse's own dependence on them included) against the float64 reference's
    softmax, 3x the in-dtype reference's error."""
    b, hq, hkv, sq, sk, d = 2, 4, 2, 41, 67, 16
    g = torch.Generator().manual_seed(9)
    q, k, v = rounded(dtype, *make_qkv((b, hq, hkv, sq, sk, d, d), g))
    bias = rounded(dtype, torch.randn(1, hq, sq, sk, generator=g, dtype=torch.float64))[0]
    mask = torch.rand(b, 1, 1, sk, generator=g) > 0.2
    opts = {"causal": True, "window": (30, None), "mask": mask, **options}
    inputs = [q, k, bias]
    if options.get("sinks"):
        inputs.append(rounded(dtype, torch.randn(hq, generator=g, dtype=torch.float64))[0])
    if options.get("dropout_p"):
        opts["dropout_seed"] = 11
    weights = torch.randn(b, hq, sq, sk, generator=g, dtype=torch.float64)

    def ours(dt):
        leaves = [t.to(dt).requires_grad_() for t in inputs]
        o = {**opts, "bias": leaves[2], "sinks": leaves[3] if len(leaves) > 3 else None}
        _, lse = attnkit.attention(leaves[0], leaves[1], v.to(dt), return_lse=True,
                                   backend="blockwise", **o)
        p = attnkit.pattern(leaves[0], leaves[1], lse, **o)
        return torch.autograd.grad((p.double() * weights).sum(), leaves)

    def reference(dt):
        leaves = [t.to(dt).requires_grad_() for t in inputs]
        o = {**opts, "bias": leaves[2], "sinks": leaves[3] if len(leaves) > 3 else None}
        spec, scale = validate(leaves[0], leaves[1], v.to(dt), **o)
        p, _ = reference_pattern(leaves[0], leaves[1], spec, scale)  # softmax, differentiable
        if spec.dropout_p:
            p = p * dropout.keep_mask(11, spec.dropout_p, *p.shape) * dropout.keep_scale(
                spec.dropout_p)
        return torch.autograd.grad((p.double() * weights).sum(), leaves)

    exact, in_dtype, fast = reference(torch.float64), reference(dtype), ours(dtype)
    for name, a, r, r64 in zip(["dq", "dk", "dbias", "dsinks"], fast, in_dtype, exact):
        assert_oracle(a, r, r64, 3, name, grad_scale(exact))


def test_pattern_without_the_lse_graph_misses_the_normalization_gradient():
    """The lse's own dependence matters: detached, the gradient of a row's sum is not 0."""
    q, k, v = make_qkv((1, 2, 2, 8, 8, 4, 4), torch.Generator().manual_seed(10))
    q.requires_grad_()
    _, lse = attnkit.attention(q, k, v, return_lse=True)
    (dq,) = torch.autograd.grad(attnkit.pattern(q, k, lse).sum(), q)  # rows sum to 1: no change
    assert dq.abs().max() < 1e-12
    (dq_detached,) = torch.autograd.grad(attnkit.pattern(q, k, lse.detach()).sum(), q)
    assert dq_detached.abs().max() > 1e-3


def test_the_options_hide_no_keys():
    """softcap, sinks and dropout do not hide keys: the mask helpers see only masks."""
    q, k, v = make_qkv((1, 2, 2, 5, 6, 4, 4), torch.Generator().manual_seed(1))
    spec, _ = validate(q, k, v, softcap=2.0, sinks=torch.zeros(2), dropout_p=0.5)
    assert visibility(spec, q.device) is None
    assert spec.score_options == ("softcap", "sinks", "dropout")
