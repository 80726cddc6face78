"""AttentionHead: the notes' names, checked against a float64 formula written out in the test."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attnkit
from attnkit import AttentionHead


def notes_formula(E, head):
    """The lesson in float64, independent of attnkit: softmax(Q K^T / sqrt(d_key)) @ E W_V↓ W_V↑."""
    E = E.double()
    Q, K = E @ head.W_Q.double(), E @ head.W_K.double()  # (..., S, d_key)
    S = torch.einsum("...qd,...kd->...qk", Q, K) / math.sqrt(head.d_key)
    if head.causal:
        n = S.shape[-1]
        S = S.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    P = torch.softmax(S, dim=-1)
    return S, P, P @ (E @ head.W_V_down.double() @ head.W_V_up.double())


def test_parameters_have_the_notes_names_and_shapes():
    head = AttentionHead(d_model=12, d_key=4, d_value=3)
    shapes = {name: tuple(p.shape) for name, p in head.named_parameters()}
    assert shapes == {"W_Q": (12, 4), "W_K": (12, 4), "W_V_down": (12, 3), "W_V_up": (3, 12)}
    assert AttentionHead(12, 4).W_V_down.shape == (12, 4)  # d_value defaults to d_key


def test_keys_are_row_vectors_times_W_K():
    head = AttentionHead(8, 3)
    E = torch.randn(5, 8)
    # E_1 · W_K = K_1, one embedding at a time
    for i in range(5):
        torch.testing.assert_close(head.keys(E)[i], E[i] @ head.W_K)
        torch.testing.assert_close(head.queries(E)[i], E[i] @ head.W_Q)


def test_scores_entry_j_i_is_key_i_dot_query_j():
    head = AttentionHead(8, 4, causal=False).double()
    E = torch.randn(6, 8, dtype=torch.float64)
    K, Q, S = head.keys(E), head.queries(E), head.scores(E)
    assert S.shape == (6, 6)
    # the notes' K_2 · Q_4 (1-based) is scores[query 3, key 1] (0-based), scaled by 1/sqrt(d_key)
    assert S[3, 1].item() == pytest.approx((K[1] @ Q[3]).item() / 2.0, rel=1e-12)


@given(seq=st.integers(1, 9), d_model=st.integers(1, 12), d_key=st.integers(1, 6),
       d_value=st.integers(1, 5), batch=st.sampled_from([None, 1, 3]), causal=st.booleans())
def test_every_method_matches_the_float64_formula(seq, d_model, d_key, d_value, batch, causal):
    head = AttentionHead(d_model, d_key, d_value, causal=causal)
    shape = (seq, d_model) if batch is None else (batch, seq, d_model)
    E = torch.randn(shape)
    S_ref, P_ref, dE_ref = notes_formula(E, head)
    torch.testing.assert_close(head.scores(E).double(), S_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.pattern(E).double(), P_ref, atol=1e-5, rtol=1e-5)
    dE = head.update(E)
    assert dE.shape == E.shape and dE.dtype == E.dtype
    torch.testing.assert_close(dE.double(), dE_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(head(E).double(), E.double() + dE_ref, atol=2e-5, rtol=1e-4)


def test_pattern_rows_sum_to_one_and_causal_hides_later_keys():
    head = AttentionHead(16, 4)
    P = head.pattern(torch.randn(2, 7, 16))
    torch.testing.assert_close(P.sum(-1), torch.ones(2, 7))
    assert torch.all(P.triu(1) == 0)


@pytest.mark.parametrize("backend", ["reference", "blockwise"])
def test_update_fast_path_equals_pattern_times_values_with_gradients(backend):
    """The fast path (attnkit.attention) against the plain path (pattern @ values), float64."""
    head = AttentionHead(10, 4, 3).double()
    E = torch.randn(2, 9, 10, dtype=torch.float64, requires_grad=True)
    with attnkit.use_backend(backend):
        fast = head.update(E)
    plain = head.pattern(E) @ head.values(E)
    torch.testing.assert_close(fast, plain, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(fast)
    grads_fast = torch.autograd.grad(fast, [E, *head.parameters()], g)
    grads_plain = torch.autograd.grad(plain, [E, *head.parameters()], g)
    for a, b in zip(grads_fast, grads_plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)


def test_bad_E_gives_clear_errors():
    head = AttentionHead(8, 2)
    with pytest.raises(ValueError, match=r"E must have shape \(seq, 8\) or \(batch, seq, 8\).*"
                                         r"got \(5, 7\)"):
        head.update(torch.randn(5, 7))
    with pytest.raises(ValueError, match=r"got \(8,\)"):
        head.queries(torch.randn(8))
    with pytest.raises(TypeError, match="E must be a torch.Tensor.*got list"):
        head.keys([[0.0] * 8])
    with pytest.raises(TypeError, match=r"E is torch.float64 but this head's weights are "
                                        r"torch.float32.*head.to\(torch.float64\)"):
        head(torch.randn(3, 8, dtype=torch.float64))


@pytest.mark.parametrize("kwargs, name", [({"d_model": 0, "d_key": 2}, "d_model"),
                                          ({"d_model": 4, "d_key": -1}, "d_key"),
                                          ({"d_model": 4, "d_key": 2, "d_value": 0}, "d_value")])
def test_bad_sizes_give_clear_errors(kwargs, name):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        AttentionHead(**kwargs)
