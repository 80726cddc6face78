"""attnkit's backends against torch SDPA, a peer that is not us, on inputs SDPA supports."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.errors import BackendUnsupportedError


def qkv(b, hq, hkv, sq, sk, d, dv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, sq, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, sk, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, sk, dv or d, generator=g, dtype=dtype))


@pytest.mark.parametrize("backend", ["blockwise", "fused", "reference", "sdpa"])
@pytest.mark.parametrize("case", [
    dict(shape=(2, 4, 4, 77, 77, 40), causal=True),
    dict(shape=(1, 6, 2, 33, 301, 24), causal=False),  # GQA, Sq != Sk
    dict(shape=(2, 3, 3, 130, 130, 17), causal=False, mask="keys"),
    dict(shape=(1, 2, 1, 65, 90, 16), causal=False, bias=True),
])
def test_agrees_with_torch_sdpa(backend, case):
    b, hq, hkv, sq, sk, d = case["shape"]
    q, k, v = qkv(b, hq, hkv, sq, sk, d, dtype=torch.float64)
    mask = bias = None
    if case.get("mask") == "keys":
        mask = torch.rand(b, 1, 1, sk) > 0.2
        mask[..., 0] = True
    if case.get("bias"):
        bias = torch.randn(1, hq, sq, sk, dtype=torch.float64)
    peer = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias if bias is not None else mask, is_causal=case["causal"],
        enable_gqa=hq != hkv)
    ours = attnkit.attention(q, k, v, causal=case["causal"], mask=mask, bias=bias, backend=backend)
    torch.testing.assert_close(ours, peer, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["blockwise", "fused"])
def test_gradients_agree_with_torch_sdpa(backend):
    q, k, v = qkv(2, 4, 2, 150, 150, 32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    peer_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grad_out = torch.randn(2, 4, 150, 32)
    attnkit.attention(*leaves, causal=True, backend=backend).backward(grad_out)
    F.scaled_dot_product_attention(*peer_leaves, is_causal=True, enable_gqa=True).backward(grad_out)
    for ours, peer in zip(leaves, peer_leaves):
        torch.testing.assert_close(ours.grad, peer.grad, rtol=1e-4, atol=1e-5)


def test_sdpa_backend_refuses_what_it_cannot_do_and_names_who_can():
    q, k, v = qkv(1, 2, 2, 5, 9, 8)
    with pytest.raises(BackendUnsupportedError, match=r"backend 'sdpa' does not support "
                       r"causal=True with Sq=5 != Sk=9 .*use backend='blockwise'"):
        attnkit.attention(q, k, v, causal=True, backend="sdpa")
    with pytest.raises(BackendUnsupportedError,
                       match=r"does not support window=\(2, 0\).*blockwise"):
        attnkit.attention(q, k, v, window=(2, 0), backend="sdpa")
    with pytest.raises(BackendUnsupportedError, match=r"does not support return_lse=True"):
        attnkit.attention(q, k, v, return_lse=True, backend="sdpa")
    with pytest.raises(BackendUnsupportedError, match=r"causal=True together with mask="):
        attnkit.attention(q, q, q, causal=True, mask=torch.ones(5, 5, dtype=torch.bool),
                          backend="sdpa")
