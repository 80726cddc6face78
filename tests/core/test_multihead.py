"""MultiHeadAttention against torch.nn.MultiheadAttention (copied weights) and as a sum of heads."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import attnkit
from attnkit import MultiHeadAttention


def torch_peer(mha: MultiHeadAttention) -> nn.MultiheadAttention:
    """An nn.MultiheadAttention holding the same weights (it computes x @ W.T, we compute x @ W)."""
    d = mha.d_model
    peer = nn.MultiheadAttention(d, mha.n_heads, bias=mha.has_bias, batch_first=True,
                                 dtype=mha.W_Q.dtype)
    with torch.no_grad():
        peer.in_proj_weight.copy_(torch.cat([mha.W_Q, mha.W_K, mha.W_V], dim=1).T)
        peer.out_proj.weight.copy_(mha.W_O.T)
        if mha.has_bias:
            peer.in_proj_bias.copy_(torch.cat([mha.b_Q, mha.b_K, mha.b_V]))
            peer.out_proj.bias.copy_(mha.b_O)
    return peer


def randomize_biases(mha: MultiHeadAttention) -> None:
    with torch.no_grad():
        for b in (mha.b_Q, mha.b_K, mha.b_V, mha.b_O):
            if b is not None:
                b.normal_()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", ["blockwise", "reference"])
def test_self_attention_matches_nn_multiheadattention_outputs_and_gradients(causal, bias, backend):
    mha = MultiHeadAttention(24, n_heads=4, causal=causal, bias=bias, dtype=torch.float64)
    randomize_biases(mha)
    peer = torch_peer(mha)
    E = torch.randn(3, 11, 24, dtype=torch.float64, requires_grad=True)
    with attnkit.use_backend(backend):
        ours = mha(E) - E  # ΔE
    hidden = torch.ones(11, 11, dtype=torch.bool).triu(1) if causal else None  # True = masked
    theirs, _ = peer(E, E, E, attn_mask=hidden, need_weights=False)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-10)

    g = torch.randn_like(ours)
    ours_params = [mha.W_Q, mha.W_K, mha.W_V, mha.W_O] + ([mha.b_Q, mha.b_K, mha.b_V, mha.b_O]
                                                         if bias else [])
    theirs_params = [peer.in_proj_weight, peer.out_proj.weight] + (
        [peer.in_proj_bias, peer.out_proj.bias] if bias else [])
    ours_grads = torch.autograd.grad(ours, [E, *ours_params], g)
    theirs_grads = torch.autograd.grad(theirs, [E, *theirs_params], g)
    # theirs: in_proj = [W_Q; W_K; W_V] transposed, out_proj = W_O transposed
    mapped = [ours_grads[0], torch.cat(ours_grads[1:4], dim=1).T, ours_grads[4].T]
    if bias:
        mapped += [torch.cat(ours_grads[5:8]), ours_grads[8]]
    assert len(mapped) == len(theirs_grads)
    for a, b in zip(mapped, theirs_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)


def test_cross_attention_with_key_padding_matches_nn_multiheadattention():
    mha = MultiHeadAttention(16, n_heads=2, causal=False, bias=True, dtype=torch.float64)
    randomize_biases(mha)
    peer = torch_peer(mha)
    E = torch.randn(2, 5, 16, dtype=torch.float64)
    context = torch.randn(2, 9, 16, dtype=torch.float64)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 6:] = False  # the second context is 6 tokens long, padded to 9
    ours = mha(E, context=context, mask=keep[:, None, None, :]) - E  # (2, 5, 16)
    theirs, _ = peer(E, context, context, key_padding_mask=~keep, need_weights=False)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-10)


@given(n_kv=st.sampled_from([1, 2, 3, 6]), seq=st.integers(1, 8), d_key=st.integers(1, 5),
       causal=st.booleans(), batch=st.sampled_from([None, 2]))
def test_output_is_E_plus_the_sum_of_each_heads_update(n_kv, seq, d_key, causal, batch):
    mha = MultiHeadAttention(10, n_heads=6, d_key=d_key, n_kv_heads=n_kv, causal=causal,
                             dtype=torch.float64)
    E = torch.randn((seq, 10) if batch is None else (batch, seq, 10), dtype=torch.float64)
    heads = mha.heads()
    assert len(heads) == 6 and all(h.causal == causal for h in heads)
    # every head proposes a change; the layer adds them all to E
    torch.testing.assert_close(mha(E), E + sum(h.update(E) for h in heads), atol=1e-12, rtol=1e-10)


def test_grouped_heads_equal_full_heads_with_repeated_key_value_weights():
    grouped = MultiHeadAttention(12, n_heads=4, d_key=3, n_kv_heads=2, dtype=torch.float64)
    full = MultiHeadAttention(12, n_heads=4, d_key=3, dtype=torch.float64)
    with torch.no_grad():
        full.W_Q.copy_(grouped.W_Q)
        full.W_O.copy_(grouped.W_O)
        # query heads 0, 1 read kv head 0; heads 2, 3 read kv head 1
        for W_full, W_grouped in ((full.W_K, grouped.W_K), (full.W_V, grouped.W_V)):
            kv = W_grouped.view(12, 2, 3)
            W_full.copy_(kv[:, [0, 0, 1, 1]].reshape(12, 12))
    E = torch.randn(2, 7, 12, dtype=torch.float64)
    torch.testing.assert_close(grouped(E), full(E), atol=1e-12, rtol=1e-10)


def test_parameter_shapes():
    mha = MultiHeadAttention(32, n_heads=8, n_kv_heads=2)
    assert mha.d_key == 4
    shapes = {n: tuple(p.shape) for n, p in mha.named_parameters()}
    assert shapes == {"W_Q": (32, 32), "W_K": (32, 8), "W_V": (32, 8), "W_O": (32, 32)}
    assert sum(p.numel() for p in mha.parameters()) == attnkit.count_attention_params(
        32, d_key=4, n_heads=8, n_layers=1, n_kv_heads=2).total


def test_d_value_sets_each_heads_value_bottleneck():
    """value↓ and value↑ of width d_value != d_key: the layer is still E + the heads' updates, and
    the KV cache holds values of that width."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, n_heads=4, d_key=3, d_value=5, n_kv_heads=2, dtype=torch.float64)
    shapes = {n: tuple(p.shape) for n, p in mha.named_parameters()}
    assert shapes == {"W_Q": (12, 12), "W_K": (12, 6), "W_V": (12, 10), "W_O": (20, 12)}
    assert sum(p.numel() for p in mha.parameters()) == attnkit.count_attention_params(
        12, d_key=3, d_value=5, n_heads=4, n_kv_heads=2).total
    E = torch.randn(2, 7, 12, dtype=torch.float64)
    heads = mha.heads()
    assert heads[0].d_value == 5
    torch.testing.assert_close(mha(E), E + sum(h.update(E) for h in heads), atol=1e-12,
                               rtol=1e-10)
    cache = mha.new_cache(batch=2, max_len=7)
    with torch.no_grad():
        steps = torch.cat([mha(E[:, i:i + 1], cache=cache) for i in range(7)], dim=1)
    assert cache.values().shape == (2, 2, 7, 5)
    torch.testing.assert_close(steps, mha(E).detach(), atol=1e-12, rtol=1e-10)


def test_everything_after_d_model_is_a_keyword():
    with pytest.raises(TypeError, match="positional argument"):
        MultiHeadAttention(8, 2)


def test_heads_of_a_biased_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="heads\\(\\) needs a MultiHeadAttention built with "
                                         "bias=False"):
        MultiHeadAttention(8, n_heads=2, bias=True).heads()


@pytest.mark.parametrize("d_model, kwargs, message", [
    (10, {"n_heads": 3}, r"d_model=10 is not divisible by n_heads=3.*pass d_key="),
    (12, {"n_heads": 6, "n_kv_heads": 4},
     r"n_heads=6 is not a multiple of n_kv_heads=4.*one of \[1, 2, 3, 6\]"),
    (0, {"n_heads": 2}, r"d_model must be a positive integer; got 0"),
    (8, {"n_heads": -2}, r"n_heads must be a positive integer; got -2"),
    (8, {"n_heads": 2, "d_key": 0}, r"d_key must be a positive integer; got 0"),
    (8, {"n_heads": 2, "d_value": 1.5}, r"d_value must be a positive integer; got 1.5"),
])
def test_bad_sizes_give_clear_errors(d_model, kwargs, message):
    with pytest.raises(attnkit.AttnkitError, match=message):
        MultiHeadAttention(d_model, **kwargs)


def test_explicit_d_key_allows_any_head_count():
    mha = MultiHeadAttention(10, n_heads=3, d_key=4)
    assert mha(torch.randn(2, 5, 10)).shape == (2, 5, 10)


def test_bad_inputs_give_clear_errors():
    mha = MultiHeadAttention(8, n_heads=2)
    with pytest.raises(ValueError, match=r"E must have shape \(seq, 8\) or \(batch, seq, 8\).*"
                                         r"got \(2, 5, 6\)"):
        mha(torch.randn(2, 5, 6))
    with pytest.raises(TypeError, match="E must be a torch.Tensor"):
        mha("a fluffy blue creature")
    with pytest.raises(TypeError, match=r"E is torch.float16 but this layer's weights are "
                                        r"torch.float32.*E.to\(torch.float32\)"):
        mha(torch.randn(2, 5, 8, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(\.\.\., causal=False\)"):
        mha(torch.randn(2, 5, 8), context=torch.randn(2, 3, 8))
    cross = MultiHeadAttention(8, n_heads=2, causal=False)
    with pytest.raises(ValueError, match="E has batch 2 but context has batch 3"):
        cross(torch.randn(2, 5, 8), context=torch.randn(3, 4, 8))
    with pytest.raises(ValueError,
                       match=r"context must have shape \(seq, 8\) or \(batch, seq, 8\)"):
        cross(torch.randn(2, 5, 8), context=torch.randn(2, 4, 7))
