"""Every user-facing error of attention(): the message names the problem, the shapes and a fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnkit
from attnkit.errors import AttnkitError, BackendUnsupportedError, InputTypeError


def qkv(hq=4, hkv=2, sq=5, sk=7, d=8):
    return torch.randn(2, hq, sq, d), torch.randn(2, hkv, sk, d), torch.randn(2, hkv, sk, d)


def test_not_a_tensor_and_wrong_rank():
    q, k, v = qkv()
    with pytest.raises(InputTypeError, match="q must be a torch.Tensor, got list"):
        attnkit.attention([1.0], k, v)
    with pytest.raises(AttnkitError, match=r"k must be 4-D \(batch, heads, seq, head_dim\); got "
                       r"shape \(7, 8\)\. For one sequence use k\[None, None\]"):
        attnkit.attention(q, k[0, 0], v)


def test_shape_mismatches():
    q, k, v = qkv()
    with pytest.raises(AttnkitError,
                       match=r"batch sizes differ: q \(2, 4, 5, 8\), k \(1, 2, 7, 8\)"):
        attnkit.attention(q, k[:1], v)
    with pytest.raises(AttnkitError, match=r"q and k must have the same head_dim.*q \(2, 4, 5, 8\) "
                       r"and k \(2, 2, 7, 6\)"):
        attnkit.attention(q, k[..., :6], v)
    with pytest.raises(AttnkitError, match=r"k and v must have the same heads and length.*k "
                       r"\(2, 2, 7, 8\) and v \(2, 2, 6, 8\)"):
        attnkit.attention(q, k, v[:, :, :6])


def test_heads_not_a_multiple():
    q, k, v = qkv(hq=6, hkv=4)
    with pytest.raises(AttnkitError, match=r"q has 6 heads and k/v have 4; query heads must be a "
                       r"multiple of key/value heads.*one of \[1, 2, 3, 6\]"):
        attnkit.attention(q, k, v)


def test_dtypes_and_devices():
    q, k, v = qkv()
    with pytest.raises(InputTypeError, match=r"q, k, v must share one dtype; got q torch.float32, "
                       r"k torch.bfloat16.*k.to\(torch.float32\)"):
        attnkit.attention(q, k.bfloat16(), v)
    with pytest.raises(InputTypeError, match="v must be floating point"):
        attnkit.attention(q, k, v.long())
    with pytest.raises(AttnkitError,
                       match=r"q, k, v must be on one device; got q on cpu, k on meta"):
        attnkit.attention(q, k.to("meta"), v)
    with pytest.raises(AttnkitError, match=r"mask is on meta but q is on cpu"):
        attnkit.attention(q, k, v, mask=torch.ones(5, 7, dtype=torch.bool, device="meta"))


def test_masks_and_bias():
    q, k, v = qkv()
    with pytest.raises(AttnkitError, match=r"mask of shape \(3, 7\) does not broadcast to "
                       r"\(B, Hq, Sq, Sk\) = \(2, 4, 5, 7\); use e.g. \(5, 7\).*\(2, 1, 1, 7\)"):
        attnkit.attention(q, k, v, mask=torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(AttnkitError, match=r"bias of shape \(2, 3, 5, 7\) does not broadcast"):
        attnkit.attention(q, k, v, bias=torch.zeros(2, 3, 5, 7))
    with pytest.raises(InputTypeError, match=r"mask must be boolean \(True = may attend\); got "
                       r"torch.float32\. For an additive float mask pass it as bias="):
        attnkit.attention(q, k, v, mask=torch.zeros(5, 7))
    with pytest.raises(InputTypeError,
                       match=r"bias must be a floating-point tensor.*pass it as mask="):
        attnkit.attention(q, k, v, bias=torch.ones(5, 7, dtype=torch.bool))


def test_window_and_scale():
    q, k, v = qkv()
    with pytest.raises(AttnkitError, match=r"window=\(-1, 0\): the left size must be an int >= 0, "
                       r"or None for unbounded"):
        attnkit.attention(q, k, v, window=(-1, 0))
    with pytest.raises(AttnkitError, match=r"window must be a pair \(left, right\).*got 3"):
        attnkit.attention(q, k, v, window=3)
    with pytest.raises(AttnkitError, match="scale must be a finite number; got nan"):
        attnkit.attention(q, k, v, scale=float("nan"))


def test_backend_registry():
    q, k, v = qkv()
    assert list(attnkit.backends("cpu")) == ["fused", "blockwise", "sdpa", "reference"]
    assert attnkit.backends()["fused"].endswith("(cpu)")
    assert attnkit.backends()["blockwise"].endswith("(cpu, cuda)")
    with pytest.raises(AttnkitError, match=r"unknown backend 'nowhere'; available backends: "
                       r"flash, efficient, flex, fused, blockwise, sdpa, reference"):
        attnkit.attention(q, k, v, backend="nowhere")
    with pytest.raises(AttnkitError, match="unknown backend 'nope'"):
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


# ---- one error family (issue 9) -----------------------------------------------------------------


def test_every_refusal_is_an_attnkit_error_of_the_right_kind():
    q, k, v = qkv()
    with pytest.raises(InputTypeError):
        attnkit.attention([1.0], k, v)
    with pytest.raises(AttnkitError, match=r"q has 4 heads and k/v have 3"):
        attnkit.attention(q, torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8))
    with pytest.raises(BackendUnsupportedError, match=r"backends that can: blockwise, fused, "
                       r"reference"):
        attnkit.attention(q, k, v, return_lse=True, backend="sdpa")
    with pytest.raises(AttnkitError, match="unknown backend 'flash3'"):
        attnkit.attention(q, k, v, backend="flash3")
    with pytest.raises(BackendUnsupportedError, match=r"backend 'flash' does not support tensors "
                       r"on cpu \(it runs on CUDA\)"):
        attnkit.attention(q, k, v, backend="flash")


def test_kv_without_heads():
    q = torch.randn(1, 0, 5, 8)
    with pytest.raises(AttnkitError, match=r"k and v have 0 heads \(k \(1, 0, 7, 8\)\); attention "
                       r"needs at least one key/value head"):
        attnkit.attention(q, torch.randn(1, 0, 7, 8), torch.randn(1, 0, 7, 8))


@pytest.mark.parametrize("backend", ["blockwise", "reference"])
def test_no_query_heads_or_no_head_dim_are_computed_not_refused(backend):
    # Hq = 0: empty results; D = 0: every score is 0 (plus bias), so each query averages values
    empty, lse = attnkit.attention(torch.randn(2, 0, 5, 8), torch.randn(2, 1, 7, 8),
                                   torch.randn(2, 1, 7, 3), return_lse=True, backend=backend)
    assert empty.shape == (2, 0, 5, 3) and lse.shape == (2, 0, 5)
    q = torch.randn(2, 4, 5, 0, requires_grad=True)
    k, v = torch.randn(2, 2, 7, 0), torch.randn(2, 2, 7, 3, requires_grad=True)
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True, backend=backend)
    seen = torch.arange(7)[None, :] <= torch.arange(5)[:, None] + 2  # (Sq, Sk) causal, bottom-right
    mean = (seen.float() / seen.sum(-1, keepdim=True)) @ v.detach().repeat_interleave(2, dim=1)
    torch.testing.assert_close(out, mean)
    torch.testing.assert_close(lse, seen.sum(-1).log().expand(2, 4, 5))
    out.sum().backward()
    assert q.grad.shape == q.shape and torch.isfinite(v.grad).all()


@pytest.mark.parametrize("backend", ["blockwise", "reference", "sdpa"])
def test_meta_tensors_with_a_mask_give_shapes(backend):
    q, k, v = (torch.empty(2, 4, 5, 8, device="meta"), torch.empty(2, 2, 7, 8, device="meta"),
               torch.empty(2, 2, 7, 6, device="meta"))
    mask = torch.empty(2, 1, 5, 7, dtype=torch.bool, device="meta")
    out = attnkit.attention(q, k, v, mask=mask, backend=backend)
    assert out.shape == (2, 4, 5, 6) and out.device.type == "meta"


def test_merge_errors_name_the_fix():
    out, lse = torch.zeros(2, 5, 4), torch.zeros(2, 5)
    with pytest.raises(InputTypeError, match=r"merge: out1 must be a torch.Tensor, got list; pass "
                       r"the \(out, lse\) pairs from attention\(\.\.\., return_lse=True\)"):
        attnkit.merge([[0.0]], lse, out, lse)
    with pytest.raises(InputTypeError, match="merge: lse2 must be a torch.Tensor, got float"):
        attnkit.merge(out, lse, out, 0.0)
    with pytest.raises(AttnkitError, match=r"merge: out2 is on meta but out1 is on cpu; move both "
                       r"halves to one device with \.to\(device\)"):
        attnkit.merge(out, lse, out.to("meta"), lse)
    with pytest.raises(InputTypeError, match="merge: lse1 must be floating point; got torch.int64"):
        attnkit.merge(out, lse.long(), out, lse)


@pytest.mark.parametrize("scale", [torch.tensor(0.3), torch.tensor(0.3, dtype=torch.float64),
                                   np.float32(0.3), np.float64(0.3), 0.3])
def test_scale_may_be_a_zero_dim_tensor_or_a_numpy_number(scale):
    q, k, v = qkv()
    torch.testing.assert_close(attnkit.attention(q, k, v, scale=scale),
                               attnkit.attention(q, k, v, scale=float(scale)))


def test_scale_refusals():
    q, k, v = qkv()
    with pytest.raises(AttnkitError, match=r"scale must be a finite number; got inf\. Leave "
                       r"scale=None for 1/sqrt\(head_dim\)"):
        attnkit.attention(q, k, v, scale=torch.tensor(float("inf")))
    with pytest.raises(InputTypeError, match=r"scale must be a real number, e.g. scale=0.125; got "
                       r"'0.1' \(str\)"):
        attnkit.attention(q, k, v, scale="0.1")
    with pytest.raises(InputTypeError, match=r"got True \(bool\)"):
        attnkit.attention(q, k, v, scale=True)
    with pytest.raises(InputTypeError, match=r"scale must be a number or a 0-d real tensor; got a "
                       r"torch.float32 tensor of shape \(1,\)"):
        attnkit.attention(q, k, v, scale=torch.tensor([0.3]))
    with pytest.raises(InputTypeError, match=r"scale is a tensor that requires grad, but no "
                       r"gradient flows to scale; pass scale=float\(scale\)"):
        attnkit.attention(q, k, v, scale=torch.tensor(0.3, requires_grad=True))


def test_window_takes_numpy_ints_and_refuses_floats_and_bools():
    q, k, v = qkv()
    torch.testing.assert_close(attnkit.attention(q, k, v, window=(np.int64(3), np.int32(1))),
                               attnkit.attention(q, k, v, window=(3, 1)))
    with pytest.raises(InputTypeError, match=r"window=\(2.0, 0\): the left size must be an int "
                       r">= 0 or None for unbounded; got float"):
        attnkit.attention(q, k, v, window=(2.0, 0))
    with pytest.raises(InputTypeError, match=r"the right size must be an int >= 0 or None for "
                       r"unbounded; got bool"):
        attnkit.attention(q, k, v, window=(2, True))
    with pytest.raises(AttnkitError, match=r"window=\(2, -1\): the right size must be an int >= 0"):
        attnkit.attention(q, k, v, window=(2, -1))


def test_causal_and_return_lse_must_be_bools():
    q, k, v = qkv()
    with pytest.raises(InputTypeError, match=r"causal must be True or False; got 'no' \(str\)\. "
                       r"Pass causal=True or causal=False"):
        attnkit.attention(q, k, v, causal="no")
    with pytest.raises(InputTypeError, match=r"causal must be True or False; got 1 \(int\)"):
        attnkit.attention(q, k, v, causal=1)
    with pytest.raises(InputTypeError, match=r"return_lse must be True or False; got None"):
        attnkit.attention(q, k, v, return_lse=None)
    with pytest.raises(InputTypeError, match=r"causal must be True or False; got 'no'"):
        attnkit.pattern(q, k, torch.zeros(2, 4, 5), causal="no")
    assert attnkit.attention(q, k, v, causal=np.bool_(True)).shape == (2, 4, 5, 8)


def test_pattern_rows_and_cols_in_any_direction():
    q, k, v = qkv()
    _, lse = attnkit.attention(q, k, v, return_lse=True, causal=True)
    full = attnkit.pattern(q, k, lse, causal=True)
    reverse = attnkit.pattern(q, k, lse, causal=True, rows=slice(None, None, -1),
                              cols=slice(5, 0, -2))
    torch.testing.assert_close(reverse, full.flip(2)[..., [5, 3, 1]])
    torch.testing.assert_close(attnkit.pattern(q, k, lse, causal=True, rows=np.int64(-1)),
                               full[:, :, -1:])
    with pytest.raises(AttnkitError, match=r"rows=slice\(None, None, 0\) is not a usable slice "
                       r"\(slice step cannot be zero\); use e.g. rows=slice\(0, 5\)"):
        attnkit.pattern(q, k, lse, rows=slice(None, None, 0))
    with pytest.raises(InputTypeError, match=r"lse must be a torch.Tensor of shape \(B, Hq, Sq\) "
                       r"= \(2, 4, 5\); got list"):
        attnkit.pattern(q, k, [0.0])


@pytest.mark.parametrize("backend", ["reference", "blockwise", "sdpa"])
def test_a_bias_of_minus_inf_on_every_key_gives_zeros_never_nan(backend):
    q, k, v = qkv()
    q.requires_grad_()
    bias = torch.randn(2, 4, 5, 7)
    bias[0, 1, 2] = float("-inf")
    bias[1, :, 4, :] = float("-inf")
    out = attnkit.attention(q, k, v, bias=bias, backend=backend)
    assert torch.equal(out[0, 1, 2], torch.zeros(8))
    assert torch.equal(out[1, :, 4], torch.zeros(4, 8))
    assert not torch.isnan(out).any()
    if backend != "sdpa":
        _, lse = attnkit.attention(q, k, v, bias=bias, backend=backend, return_lse=True)
        assert torch.isneginf(lse[0, 1, 2]) and torch.isneginf(lse[1, :, 4]).all()
        assert torch.isfinite(lse[0, 0]).all()
    out.square().sum().backward()
    assert torch.isfinite(q.grad).all() and torch.equal(q.grad[0, 1, 2], torch.zeros(8))


# ---- softcap, sinks, dropout (issue 11) -----------------------------------------------------


def test_softcap_refusals():
    q, k, v = qkv()
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(AttnkitError, match=r"softcap must be a finite number > 0 \(scores "
                           r"become softcap \* tanh\(score / softcap\), e.g. softcap=50.0\); got "
                           r".*Pass softcap=None for no capping"):
            attnkit.attention(q, k, v, softcap=bad)
    with pytest.raises(InputTypeError, match=r"softcap must be a real number, e.g. softcap=50.0; "
                       r"got '30' \(str\)"):
        attnkit.attention(q, k, v, softcap="30")
    with pytest.raises(InputTypeError, match=r"got True \(bool\)"):
        attnkit.attention(q, k, v, softcap=True)
    with pytest.raises(InputTypeError, match=r"softcap is a tensor that requires grad, but no "
                       r"gradient flows to softcap; pass softcap=float\(softcap\)"):
        attnkit.attention(q, k, v, softcap=torch.tensor(30.0, requires_grad=True))
    with pytest.raises(AttnkitError, match=r"softcap must be a finite number > 0"):
        attnkit.pattern(q, k, torch.zeros(2, 4, 5), softcap=-2.0)
    torch.testing.assert_close(attnkit.attention(q, k, v, softcap=np.float32(30.0)),
                               attnkit.attention(q, k, v, softcap=30.0))


def test_sinks_refusals():
    q, k, v = qkv()
    with pytest.raises(InputTypeError, match=r"sinks must be a torch.Tensor of shape \(Hq,\) = "
                       r"\(4,\), one logit per query head, or None; got list"):
        attnkit.attention(q, k, v, sinks=[0.0] * 4)
    with pytest.raises(InputTypeError, match=r"sinks must be a floating-point tensor \(one logit "
                       r"per query head\); got torch.int64"):
        attnkit.attention(q, k, v, sinks=torch.zeros(4, dtype=torch.long))
    with pytest.raises(AttnkitError, match=r"sinks must have shape \(Hq,\) = \(4,\), one logit "
                       r"per query head; got \(1, 4, 1, 1\)\. A model's per-head sinks of shape "
                       r"\(1, 4, 1, 1\) can be passed as sinks.reshape\(-1\)"):
        attnkit.attention(q, k, v, sinks=torch.zeros(1, 4, 1, 1))
    with pytest.raises(AttnkitError, match=r"sinks must have shape \(Hq,\) = \(4,\).*got \(2,\)"):
        attnkit.attention(q, k, v, sinks=torch.zeros(2))
    with pytest.raises(AttnkitError, match=r"sinks is on meta but q is on cpu; move it with "
                       r"\.to\(q\.device\)"):
        attnkit.attention(q, k, v, sinks=torch.zeros(4, device="meta"))


def test_dropout_refusals():
    q, k, v = qkv()
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(AttnkitError, match=r"dropout_p must be in \[0, 1\) \(the chance that "
                           r"a probability is dropped\); got .*Pass dropout_p=0.0 for no dropout"):
            attnkit.attention(q, k, v, dropout_p=bad)
    with pytest.raises(InputTypeError, match=r"dropout_p must be a real number, e.g. "
                       r"dropout_p=0.1; got '0.1' \(str\)"):
        attnkit.attention(q, k, v, dropout_p="0.1")
    with pytest.raises(InputTypeError, match=r"dropout_p must be a real number.*got False"):
        attnkit.attention(q, k, v, dropout_p=False)
    with pytest.raises(InputTypeError, match=r"dropout_seed must be an int in \[0, 2\*\*63\) or "
                       r"None \(drawn from torch's generator\); got 1.5 \(float\)"):
        attnkit.attention(q, k, v, dropout_p=0.1, dropout_seed=1.5)
    with pytest.raises(InputTypeError, match=r"dropout_seed must be an int.*got True \(bool\)"):
        attnkit.attention(q, k, v, dropout_p=0.1, dropout_seed=True)
    for bad in (-1, 2**63, 2**70):
        with pytest.raises(AttnkitError, match=r"dropout_seed must be an int in \[0, 2\*\*63\); "
                           rf"got {bad}\. Reduce it, e.g. dropout_seed % 2\*\*63"):
            attnkit.attention(q, k, v, dropout_p=0.1, dropout_seed=bad)
    assert attnkit.attention(q, k, v, dropout_p=np.float64(0.1),
                             dropout_seed=np.int64(3)).shape == (2, 4, 5, 8)


def test_pattern_after_dropout_needs_the_calls_seed():
    q, k, v = qkv()
    _, lse = attnkit.attention(q, k, v, dropout_p=0.1, return_lse=True)
    with pytest.raises(AttnkitError, match=r"pattern\(\): dropout_p=0.1 needs the dropout_seed "
                       r"the attention call used \(pass the same dropout_seed= to both\); for "
                       r"the probabilities before dropout pass dropout_p=0"):
        attnkit.pattern(q, k, lse, dropout_p=0.1)


def test_sdpa_refuses_softcap_sinks_and_dropout_by_name():
    q, k, v = qkv(hq=2, hkv=2)
    with pytest.raises(BackendUnsupportedError, match=r"backend 'sdpa' does not support "
                       r"softcap=30.0 \(SDPA cannot soft-cap the scores\); use "
                       r"backend='blockwise' \(backends that can: blockwise, reference\)"):
        attnkit.attention(q, k, v, softcap=30.0, backend="sdpa")
    with pytest.raises(BackendUnsupportedError, match=r"does not support sinks \(SDPA has no "
                       r"sink logit in its softmax\); use backend='blockwise'"):
        attnkit.attention(q, k, v, sinks=torch.zeros(2), backend="sdpa")
    with pytest.raises(BackendUnsupportedError, match=r"does not support dropout_p=0.1 \(SDPA's "
                       r"dropout draws its own mask, not attnkit's seeded one.*use "
                       r"backend='blockwise'"):
        attnkit.attention(q, k, v, dropout_p=0.1, backend="sdpa")
    with attnkit.use_backend("sdpa"):
        with pytest.raises(BackendUnsupportedError, match=r"does not support softcap=2.0"):
            attnkit.attention(q, k, v, softcap=2.0)


def test_a_backend_that_does_not_list_an_option_is_never_given_it():
    """A backend registered without knowing the softmax options (e.g. a newer peer) is refused
    them by name, and the automatic choice passes it over for calls that use them."""
    from attnkit.kernels import api

    calls = []
    reference = api._REGISTRY["reference"]

    def eager(q, k, v, spec, scale):
        calls.append(spec.score_options)
        return reference.kernel(q, k, v, spec, scale)

    api.register_backend(api.Backend("eager-test", eager, lambda spec, lse, q: None,
                                     priority=100, description="test"))
    try:
        q, k, v = qkv()
        attnkit.attention(q, k, v)
        assert calls == [()]  # the highest priority: chosen when no option is used
        for opts in ({"softcap": 5.0}, {"sinks": torch.zeros(4)}, {"dropout_p": 0.2}):
            attnkit.attention(q, k, v, **opts)  # blockwise takes these
        assert calls == [()]
        with pytest.raises(BackendUnsupportedError, match=r"backend 'eager-test' does not "
                           r"support softcap=5.0 \(not implemented by this backend\); use "
                           r"backend='blockwise'"):
            attnkit.attention(q, k, v, softcap=5.0, backend="eager-test")
        with pytest.raises(BackendUnsupportedError, match=r"does not support sinks \(a \(4,\) "
                           r"tensor\) \(not implemented by this backend\)"):
            attnkit.attention(q, k, v, sinks=torch.zeros(4), backend="eager-test")
        with pytest.raises(BackendUnsupportedError, match=r"does not support dropout_p=0.2 \(not "
                           r"implemented by this backend\)"):
            attnkit.attention(q, k, v, dropout_p=0.2, backend="eager-test")
    finally:
        del api._REGISTRY["eager-test"]
