"""The fused CPU backend: the facts about torch's op it stands on, its plan of pieces, the float64
oracle rule on random problems, rows that see no key, refusals and the fall-back when the op is
missing."""

from __future__ import annotations

import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
import attnkit.kernels.fused_cpu as fused_cpu
from attnkit.errors import BackendUnsupportedError
from attnkit.kernels import api
from attnkit.kernels.api import validate
from tests.kernels.oracle import assert_oracle, grad_scale
from tests.kernels.test_oracle import make_qkv, problems, rounded_to
from tests.kernels.tiles import small_blocks

pytestmark = pytest.mark.skipif(fused_cpu.find_ops() is None,
                                reason="this torch has no fused CPU flash kernel")


@pytest.fixture(params=["default blocks", "small blocks"])
def blocks(request):
    if request.param == "default blocks":
        yield request.param
    else:
        with small_blocks():
            yield request.param


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- what the op does (torch 2.13; a release that changes any of it fails here first) -------


def test_the_facts_about_the_op_that_the_backend_stands_on():
    forward, backward = fused_cpu.find_ops()
    b, h, s, d = 2, 4, 37, 16
    q, k, v = rand(b, h, s, d, seed=1), rand(b, h, s, d, seed=2), rand(b, h, s, d, seed=3)
    out, lse = forward(q, k, v, 0.0, False, scale=0.25)
    # lse: float32, natural log, (B, H, S) laid out as (B, S, H)
    assert lse.dtype == torch.float32 and lse.shape == (b, h, s)
    assert lse.stride() == (h * s, 1, h)
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 0.25, dim=-1))
    # grouped-query heads: k, v with fewer heads, forward and backward, as SDPA's enable_gqa
    k2, v2 = rand(b, 2, s, d, seed=4), rand(b, 2, s, d, seed=5)
    out, lse = forward(q, k2, v2, 0.0, False)
    leaves = [t.clone().requires_grad_() for t in (q, k2, v2)]
    peer = torch.nn.functional.scaled_dot_product_attention(*leaves, enable_gqa=True)
    torch.testing.assert_close(out, peer)
    grad_out = rand(b, h, s, d, seed=6)
    peer.backward(grad_out)
    for ours, theirs in zip(backward(grad_out, q, k2, v2, out, lse, 0.0, False), leaves):
        torch.testing.assert_close(ours, theirs.grad)
    # causal is top-left: with 5 queries and 37 keys, query i sees keys 0..i
    top_left = torch.ones(5, s, dtype=torch.bool).tril()
    torch.testing.assert_close(forward(q[:, :, :5], k, v, 0.0, True)[0],
                               torch.nn.functional.scaled_dot_product_attention(
                                   q[:, :, :5], k, v, attn_mask=top_left))
    # a boolean mask is refused; a float one works
    with pytest.raises(RuntimeError, match="same data type as query"):
        forward(q, k, v, 0.0, False, attn_mask=torch.ones(s, s, dtype=torch.bool))
    # a row whose mask hides every key: out 0, but lse 0 — not -inf
    hide = torch.zeros(1, 1, s, s)
    hide[..., 3, :] = float("-inf")
    out, lse = forward(q, k, v, 0.0, False, attn_mask=hide)
    assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3]))
    assert torch.equal(lse[:, :, 3], torch.zeros_like(lse[:, :, 3]))
    # a float mask gets no gradient
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument "
                       "'attn_mask'"):
        forward(q, k, v, 0.0, False, attn_mask=torch.zeros(s, s, requires_grad=True))
    # the backward per key block, given the whole call's (out, lse), sums to the whole backward
    out, lse = forward(q, k, v, 0.0, False)
    whole = backward(grad_out, q, k, v, out, lse, 0.0, False)
    first = backward(grad_out, q, k[:, :, :20], v[:, :, :20], out, lse, 0.0, False)
    second = backward(grad_out, q, k[:, :, 20:], v[:, :, 20:], out, lse, 0.0, False)
    torch.testing.assert_close(first[0] + second[0], whole[0])
    torch.testing.assert_close(torch.cat([first[1], second[1]], dim=2), whole[1])
    torch.testing.assert_close(torch.cat([first[2], second[2]], dim=2), whole[2])


# ---- the plan: pieces are the band, exactly ------------------------------------------------


@settings(max_examples=300)
@given(sq=st.integers(1, 90), sk=st.integers(1, 90), causal=st.booleans(),
       left=st.one_of(st.none(), st.integers(0, 40)),
       right=st.one_of(st.none(), st.integers(0, 40)), block=st.sampled_from([1, 7, 16, 128]))
def test_the_pieces_cover_exactly_what_the_band_shows(sq, sk, causal, left, right, block):
    """Every visible (query, key) lies in one piece of its query's block; a "full" piece shows
    all its keys to every query of the block; a "causal" one shows keys 0..a to query a; and
    no piece is only hidden cells."""
    spec, _ = validate(torch.zeros(1, 1, sq, 1), torch.zeros(1, 1, sk, 1), torch.zeros(1, 1, sk, 1),
                       causal=causal, window=(left, right))
    band = spec.band(torch.arange(sq), torch.arange(sk))  # (Sq, Sk)
    covered = torch.zeros(sq, sk, dtype=torch.int64)
    for blk in fused_cpu.plan(spec, block_q=block):
        for piece in blk.pieces:
            covered[blk.q0:blk.q1, piece.k0:piece.k1] += 1
            seen = band[blk.q0:blk.q1, piece.k0:piece.k1]
            assert seen.any(), (blk, piece)
            if piece.kind == "full":
                assert seen.all(), (blk, piece)
            elif piece.kind == "causal":
                rows, cols = seen.shape
                assert torch.equal(seen, torch.ones(rows, cols, dtype=torch.bool).tril())
    assert (covered <= 1).all()  # no cell twice
    assert torch.equal(covered.bool() | ~band, torch.ones_like(band))  # every visible cell


def test_a_sliding_window_computes_little_beyond_the_band():
    """At 8,192 tokens with window (512, 0) the pieces hold the band's cells (each row sees 513
    keys) and a block's length (128) more, not the 8,192 x 8,192 a masked SDPA computes; the
    interior blocks, all alike, make one call of the op."""
    n = 8192
    spec, _ = validate(torch.zeros(1, 1, n, 1), torch.zeros(1, 1, n, 1), torch.zeros(1, 1, n, 1),
                       causal=True, window=(512, 0))
    cells = 0
    for blk in fused_cpu.plan(spec):
        for piece in blk.pieces:
            area = (blk.q1 - blk.q0) * (piece.k1 - piece.k0)
            cells += area // 2 if piece.kind == "causal" else area
    band = n * 513
    assert band <= cells < 1.3 * band, cells / band
    assert cells < n * n / 10
    groups = fused_cpu._groups(spec, fused_cpu.plan(spec))
    sizes = [len(g) for g in groups]  # the first blocks' bands are cut by the sequence's start
    assert len(sizes) <= 6 and max(sizes) >= n // 128 - 5, sizes


# ---- the oracle rule -----------------------------------------------------------------------


def run(q, k, v, opts, backend, dtype, grad_out, lse_weights=None):
    """Output, lse and the gradients of q, k, v of a loss on the output (and on the lse)."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    opts = dict(opts)
    if "bias" in opts:
        opts["bias"] = opts["bias"].to(dtype)  # the fused kernel gives the bias no gradient
    out, lse = attnkit.attention(*leaves, return_lse=True, backend=backend, **opts)
    loss = (out.double() * grad_out).sum()
    if lse_weights is not None:
        loss = loss + (lse.masked_fill(torch.isneginf(lse), 0.0).double() * lse_weights).sum()
    return out, lse, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@settings(max_examples=25)
@given(problem=problems(max_len=200), with_lse=st.booleans())
def test_fused_matches_the_float64_reference(blocks, dtype, problem, with_lse):
    shape, opts, g, strided = problem
    q, k, v = make_qkv(shape, g, strided=strided)
    grad_out = torch.randn(shape[0], shape[1], shape[3], shape[6], generator=g,
                           dtype=torch.float64)
    q, k, v, opts, grad_out = rounded_to(dtype, q, k, v, opts, grad_out)
    weights = torch.randn(shape[0], shape[1], shape[3], generator=g,
                          dtype=torch.float64) if with_lse else None
    ref = run(q, k, v, opts, "reference", torch.float64, grad_out, weights)
    ref_dtype = run(q, k, v, opts, "reference", dtype, grad_out, weights)
    fast = run(q, k, v, opts, "fused", dtype, grad_out, weights)
    assert fast[0].dtype == dtype and fast[1].dtype == torch.float32
    assert_oracle(fast[0], ref_dtype[0], ref[0], 2, "output")
    assert_oracle(fast[1], ref_dtype[1], ref[1], 2, "lse")
    for name, a, b, c in zip(["dq", "dk", "dv"], fast[2], ref_dtype[2], ref[2]):
        assert_oracle(a, b, c, 3, name, grad_scale(ref[2]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@settings(max_examples=25)
@given(problem=problems(max_len=200))
def test_half_precision_forward_without_autograd_follows_the_rule(blocks, dtype, problem):
    """Without autograd a half-precision call runs the op in its own dtype (NATIVE_FORWARD)."""
    shape, opts, g, strided = problem
    q, k, v = make_qkv(shape, g, strided=strided)
    q, k, v, opts, _ = rounded_to(dtype, q, k, v, opts, q)
    ref = attnkit.attention(q, k, v, return_lse=True, backend="reference", **opts)
    opts_d = {**opts, "bias": opts["bias"].to(dtype)} if "bias" in opts else opts
    ref_dtype = attnkit.attention(q.to(dtype), k.to(dtype), v.to(dtype), return_lse=True,
                                  backend="reference", **opts_d)
    with torch.no_grad():
        fast = attnkit.attention(q.to(dtype), k.to(dtype), v.to(dtype), return_lse=True,
                                 backend="fused", **opts_d)
    assert fast[0].dtype == dtype and fast[1].dtype == torch.float32
    assert_oracle(fast[0], ref_dtype[0], ref[0], 2, "output")
    assert_oracle(fast[1], ref_dtype[1], ref[1], 2, "lse")


@settings(max_examples=20)
@given(problem=problems(max_len=150))
def test_float64_inputs_give_the_reference_to_rounding(problem):
    shape, opts, g, strided = problem
    q, k, v = make_qkv(shape, g, strided=strided)
    grad_out = torch.randn(shape[0], shape[1], shape[3], shape[6], generator=g,
                           dtype=torch.float64)
    ref = run(q, k, v, opts, "reference", torch.float64, grad_out)
    fast = run(q, k, v, opts, "fused", torch.float64, grad_out)
    assert fast[1].dtype == torch.float64
    for a, b in zip([fast[0], fast[1], *fast[2]], [ref[0], ref[1], *ref[2]]):
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite)
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-9, atol=1e-9)


def test_long_calls_across_blocks_and_pieces(blocks):
    """Lengths beyond one block in both directions: decoding-like Sq < Sk causal, Sq > Sk causal,
    a window with Sq != Sk, a window narrower than a block, and grouped heads."""
    g = torch.Generator().manual_seed(3)
    for sq, sk, opts in [(300, 700, {"causal": True}), (700, 300, {"causal": True}),
                         (1, 900, {"causal": True}), (500, 650, {"window": (200, 10)}),
                         (400, 400, {"window": (3, 2), "causal": True})]:
        q, k, v = make_qkv((1, 4, 2, sq, sk, 24, 16), g)
        grad_out = torch.randn(1, 4, sq, 16, generator=g, dtype=torch.float64)
        weights = torch.randn(1, 4, sq, generator=g, dtype=torch.float64)
        q, k, v, opts, grad_out = rounded_to(torch.float32, q, k, v, opts, grad_out)
        ref = run(q, k, v, opts, "reference", torch.float64, grad_out, weights)
        ref32 = run(q, k, v, opts, "reference", torch.float32, grad_out, weights)
        fast = run(q, k, v, opts, "fused", torch.float32, grad_out, weights)
        assert_oracle(fast[0], ref32[0], ref[0], 2, f"output {sq}x{sk} {opts}")
        assert_oracle(fast[1], ref32[1], ref[1], 2, f"lse {sq}x{sk} {opts}")
        for name, a, b, c in zip(["dq", "dk", "dv"], fast[2], ref32[2], ref[2]):
            assert_oracle(a, b, c, 3, f"{name} {sq}x{sk} {opts}", grad_scale(ref[2]))


def test_the_lse_alone_backpropagates_by_gradcheck(blocks):
    """d lse/dq = sum_j p_j k_j scale and d lse/dk_j = p_j q scale reach the inputs through the
    op's own backward (the extra column carries dlse), checked against finite differences."""
    q, k, v = (rand(1, 2, 19, 3, seed=s, dtype=torch.float64) for s in (1, 2, 3))
    mask = rand(1, 1, 19, 19, seed=4) > -0.7
    mask[..., 5, :] = False

    def f(q, k, v):
        out, lse = attnkit.attention(q, k, v, mask=mask, window=(6, 2), return_lse=True,
                                     backend="fused")
        return out, lse.masked_fill(torch.isneginf(lse), 0.0)

    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert f(*inputs)[1].requires_grad  # (gradcheck skips outputs that do not require grad)
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)  # a random projection of J


# ---- rows that see no key, the edges ----------------------------------------------------------


def test_rows_that_see_no_key_get_zeros_and_minus_infinity_never_nan(blocks):
    q, k, v = (rand(2, 2, 40, 8, seed=s).requires_grad_() for s in (1, 2, 3))
    mask = rand(2, 1, 40, 40, seed=4) > 0.0
    mask[0, :, 5] = False  # query 5 of batch 0 sees nothing
    bias = rand(1, 2, 40, 40, seed=5)
    bias[:, :, 7] = float("-inf")  # query 7 is biased away from every key
    out, lse = attnkit.attention(q, k, v, mask=mask, bias=bias, window=(9, 1), return_lse=True,
                                 backend="fused")
    for row, where in ((5, (0,)), (7, (0, 1))):
        for b in where:
            assert torch.equal(out[b, :, row], torch.zeros_like(out[b, :, row]))
            assert torch.isneginf(lse[b, :, row]).all()
    (out.square().sum() + lse.masked_fill(torch.isneginf(lse), 0).sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[0, :, 5], torch.zeros_like(q.grad[0, :, 5]))
    # causal with Sq > Sk (bottom-right): the first Sq - Sk queries see nothing
    q2, k2, v2 = rand(1, 1, 30, 8, seed=6), rand(1, 1, 10, 8, seed=7), rand(1, 1, 10, 8, seed=8)
    out, lse = attnkit.attention(q2, k2, v2, causal=True, return_lse=True, backend="fused")
    assert torch.equal(out[:, :, :20], torch.zeros(1, 1, 20, 8))
    assert torch.isneginf(lse[..., :20]).all() and torch.isfinite(lse[..., 20:]).all()
    # no keys, no queries, no heads
    empty = attnkit.attention(q2, k2[:, :, :0], v2[:, :, :0], return_lse=True, backend="fused")
    assert torch.equal(empty[0], torch.zeros(1, 1, 30, 8)) and torch.isneginf(empty[1]).all()
    none = attnkit.attention(q2[:, :, :0], k2, v2, return_lse=True, backend="fused")
    assert none[0].shape == (1, 1, 0, 8) and none[1].shape == (1, 1, 0)
    heads = attnkit.attention(q2[:, :0], k2, v2, return_lse=True, backend="fused")
    assert heads[0].shape == (1, 0, 30, 8) and heads[1].shape == (1, 0, 30)


def test_the_issue_9_reproducer_on_fused():
    q = torch.tensor([[[[1.0], [1.0]]]])
    k = torch.tensor([[[[1.0], [-200.0]]]])
    v = torch.tensor([[[[1.0], [2.0]]]])
    out, lse = attnkit.attention(q, k, v, window=(0, None), scale=1.0, backend="fused",
                                 return_lse=True)
    assert out.flatten().tolist() == [1.0, 2.0]
    assert lse.flatten().tolist() == [1.0, -200.0]


def test_value_head_dim_other_than_the_query_head_dim(blocks):
    q, k, v = rand(1, 4, 33, 24, seed=1), rand(1, 2, 50, 24, seed=2), rand(1, 2, 50, 7, seed=3)
    for opts in ({"causal": True}, {"window": (10, 0)}):
        ours = attnkit.attention(q, k, v, backend="fused", **opts)
        ref = attnkit.attention(q.double(), k.double(), v.double(), backend="reference", **opts)
        assert ours.shape == (1, 4, 33, 7)
        torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


# ---- refusals and the fall-back ------------------------------------------------------------


def test_refusals_name_the_backend_that_can():
    q, k, v = rand(1, 2, 5, 8), rand(1, 2, 6, 8), rand(1, 2, 6, 8)
    bias = rand(5, 6).requires_grad_()
    with pytest.raises(BackendUnsupportedError, match=r"backend 'fused' does not support a bias "
                       r"that requires grad .*use backend='blockwise'"):
        attnkit.attention(q, k, v, bias=bias, backend="fused")
    with pytest.raises(BackendUnsupportedError, match=r"backend 'fused' does not support head_dim "
                       r"0.*use backend='blockwise'"):
        attnkit.attention(q[..., :0], k[..., :0], v, backend="fused")
    # the softmax options it does not implement
    for option, message in (({"softcap": 30.0}, "softcap=30.0"), ({"sinks": torch.zeros(2)},
                            r"sinks"), ({"dropout_p": 0.1}, "dropout_p=0.1")):
        with pytest.raises(BackendUnsupportedError, match=rf"backend 'fused' does not support "
                           rf"{message}.*use backend='blockwise'"):
            attnkit.attention(q, k, v, backend="fused", **option)
        spec, _ = validate(q, k, v, **option)
        assert api._choose(None, spec, True, q).name == "blockwise"
    # the automatic choice never picks it for such a call, and the bias gets its gradient
    out = attnkit.attention(q, k, v, bias=bias)
    out.sum().backward()
    assert bias.grad is not None and bias.grad.abs().sum() > 0


def test_a_torch_without_the_op_falls_back_with_a_clear_message(monkeypatch):
    # detection: a torch whose aten namespace lacks either op has none
    backward_only = types.SimpleNamespace(**{fused_cpu.OP_NAMES[1]: object()})
    assert fused_cpu.find_ops(types.SimpleNamespace()) is None
    assert fused_cpu.find_ops(backward_only) is None
    assert fused_cpu.find_ops() is not None
    monkeypatch.setattr(fused_cpu, "_OPS", fused_cpu.find_ops(types.SimpleNamespace()))
    q, k, v = rand(1, 2, 5, 8), rand(1, 2, 6, 8), rand(1, 2, 6, 8)
    with pytest.raises(BackendUnsupportedError, match=r"backend 'fused' does not support this "
                       r"torch \(.*\): it has no aten\._scaled_dot_product_flash_attention_for_cpu"
                       r".*use backend='blockwise'"):
        attnkit.attention(q, k, v, backend="fused")
    # everything else falls back: the automatic choice, and the result is still exact
    chosen = api._choose(None, validate(q, k, v, causal=True)[0], True, q)
    assert chosen.name == "blockwise"
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    ref, ref_lse = attnkit.attention(q, k, v, causal=True, return_lse=True, backend="reference")
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)


def test_with_the_op_the_automatic_choice_on_the_cpu_is_fused():
    q, k, v = rand(1, 2, 5, 8), rand(1, 2, 6, 8), rand(1, 2, 6, 8)
    for opts in ({"causal": True}, {"window": (3, 0)}, {"mask": torch.rand(5, 6) > 0.5}):
        spec, _ = validate(q, k, v, **opts)
        assert api._choose(None, spec, True, q).name == "fused"
    spec, _ = validate(q, k, v, bias=rand(5, 6).requires_grad_())
    assert api._choose(None, spec, True, q).name == "blockwise"


# ---- peers: SDPA (test_peers.py) and Hugging Face eager ------------------------------------


@pytest.mark.parametrize("sliding", [False, True])
def test_a_hugging_face_model_on_fused_equals_eager(sliding):
    """Llama (grouped heads) and Mistral (a sliding window of 5), left and right padding: the
    hidden states of real tokens and the output_attentions patterns equal eager's."""
    transformers = pytest.importorskip("transformers")
    import attnkit.hf  # noqa: F401  (registers "attnkit")

    cls, extra = ((transformers.MistralConfig, transformers.MistralModel), {"sliding_window": 5}
                  ) if sliding else ((transformers.LlamaConfig, transformers.LlamaModel), {})
    config = cls[0](vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                    **extra)
    torch.manual_seed(0)
    model = cls[1](config).eval()
    ids = torch.randint(2, 64, (3, 19), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 19, dtype=torch.long)
    mask[1, 13:] = 0
    mask[2, :5] = 0
    outputs = {}
    for implementation in ("eager", "attnkit"):
        model.set_attn_implementation(implementation)
        with torch.no_grad(), attnkit.use_backend("fused"):
            outputs[implementation] = model(input_ids=ids, attention_mask=mask,
                                            output_attentions=True)
    real = mask.bool()
    ours, eager = outputs["attnkit"], outputs["eager"]
    assert (ours.last_hidden_state - eager.last_hidden_state)[real].abs().max() <= 1e-5
    for a, e in zip(ours.attentions, eager.attentions, strict=True):
        rows = real[:, None, :, None].expand_as(a)
        assert (a - e)[rows].abs().max() <= 1e-5
