"""Every user-facing error of attention(): the message names the problem, the shapes and a fix."""

from __future__ import annotations

import pytest
import torch

import attnkit


def qkv(hq=4, hkv=2, sq=5, sk=7, d=8):
    return torch.randn(2, hq, sq, d), torch.randn(2, hkv, sk, d), torch.randn(2, hkv, sk, d)


def test_not_a_tensor_and_wrong_rank():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="q must be a torch.Tensor, got list"):
        attnkit.attention([1.0], k, v)
    with pytest.raises(ValueError, match=r"k must be 4-D \(batch, heads, seq, head_dim\); got "
                       r"shape \(7, 8\)\. For one sequence use k\[None, None\]"):
        attnkit.attention(q, k[0, 0], v)


def test_shape_mismatches():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"batch sizes differ: q \(2, 4, 5, 8\), k \(1, 2, 7, 8\)"):
        attnkit.attention(q, k[:1], v)
    with pytest.raises(ValueError, match=r"q and k must have the same head_dim.*q \(2, 4, 5, 8\) "
                       r"and k \(2, 2, 7, 6\)"):
        attnkit.attention(q, k[..., :6], v)
    with pytest.raises(ValueError, match=r"k and v must have the same heads and length.*k "
                       r"\(2, 2, 7, 8\) and v \(2, 2, 6, 8\)"):
        attnkit.attention(q, k, v[:, :, :6])


def test_heads_not_a_multiple():
    q, k, v = qkv(hq=6, hkv=4)
    with pytest.raises(ValueError, match=r"q has 6 heads and k/v have 4; query heads must be a "
                       r"multiple of key/value heads.*one of \[1, 2, 3, 6\]"):
        attnkit.attention(q, k, v)


def test_dtypes_and_devices():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"q, k, v must share one dtype; got q torch.float32, "
                       r"k torch.bfloat16.*k.to\(torch.float32\)"):
        attnkit.attention(q, k.bfloat16(), v)
    with pytest.raises(TypeError, match="v must be floating point"):
        attnkit.attention(q, k, v.long())
    with pytest.raises(ValueError, match=r"q, k, v must be on one device; got q on cpu, k on meta"):
        attnkit.attention(q, k.to("meta"), v)
    with pytest.raises(ValueError, match=r"mask is on meta but q is on cpu"):
        attnkit.attention(q, k, v, mask=torch.ones(5, 7, dtype=torch.bool, device="meta"))


def test_masks_and_bias():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"mask of shape \(3, 7\) does not broadcast to "
                       r"\(B, Hq, Sq, Sk\) = \(2, 4, 5, 7\); use e.g. \(5, 7\).*\(2, 1, 1, 7\)"):
        attnkit.attention(q, k, v, mask=torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bias of shape \(2, 3, 5, 7\) does not broadcast"):
        attnkit.attention(q, k, v, bias=torch.zeros(2, 3, 5, 7))
    with pytest.raises(TypeError, match=r"mask must be boolean \(True = may attend\); got "
                       r"torch.float32\. For an additive float mask pass it as bias="):
        attnkit.attention(q, k, v, mask=torch.zeros(5, 7))
    with pytest.raises(TypeError, match=r"bias must be a floating-point tensor.*pass it as mask="):
        attnkit.attention(q, k, v, bias=torch.ones(5, 7, dtype=torch.bool))


def test_window_and_scale():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"window=\(-1, 0\): the left size must be an int >= 0, "
                       r"or None for unbounded"):
        attnkit.attention(q, k, v, window=(-1, 0))
    with pytest.raises(ValueError, match=r"window must be a pair \(left, right\).*got 3"):
        attnkit.attention(q, k, v, window=3)
    with pytest.raises(ValueError, match="scale must be a finite number; got nan"):
        attnkit.attention(q, k, v, scale=float("nan"))


def test_backend_registry():
    q, k, v = qkv()
    assert list(attnkit.backends()) == ["blockwise", "sdpa", "reference"]
    with pytest.raises(ValueError, match=r"unknown backend 'flash'; available backends: "
                       r"blockwise, sdpa, reference"):
        attnkit.attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        with attnkit.use_backend("nope"):
            pass


def test_use_backend_scopes_the_choice():
    from attnkit.kernels import api

    seen = []
    original = api._REGISTRY["reference"]
    def spy(q, k, v, spec, scale):
        seen.append("reference")
        return original.kernel(q, k, v, spec, scale)
    api.register_backend(api.Backend("reference", spy, original.unsupported, original.priority,
                                     original.auto, original.description))
    try:
        q, k, v = qkv()
        attnkit.attention(q, k, v)
        assert seen == []  # blockwise by default
        with attnkit.use_backend("reference"):
            attnkit.attention(q, k, v)
        assert seen == ["reference"]
        attnkit.attention(q, k, v)
        assert seen == ["reference"]
    finally:
        api.register_backend(original)
