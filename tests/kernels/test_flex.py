"""The flex backend's hooks (the BlockMask from the band and the mask, the score_mod for the bias
and soft-capping, padding, the lse) against the float64 oracle, through FlexAttention's own
eager reference on the CPU; its refusal on the CPU. Compiled Flex on a GPU: test_cuda.py."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit.errors import BackendUnsupportedError
from attnkit.kernels import flex
from attnkit.kernels.api import validate
from tests.kernels.oracle import assert_oracle
from tests.kernels.test_oracle import make_qkv, problems, rounded_to

pytestmark = pytest.mark.skipif(flex._flex_module is None, reason="no FlexAttention in torch")


@settings(max_examples=15)
@given(problem=problems(max_len=100), softcap=st.sampled_from([None, 0.5, 20.0]))
def test_flex_hooks_follow_the_oracle_rule(problem, softcap):
    shape, opts, g, strided = problem
    if softcap is not None:
        opts = {**opts, "softcap": softcap}
    q, k, v = make_qkv(shape, g, strided=strided)
    q, k, v, opts, _ = rounded_to(torch.float32, q, k, v, opts, q)
    ref = attnkit.attention(q, k, v, return_lse=True, backend="reference", **opts)
    opts32 = {**opts, "bias": opts["bias"].float()} if "bias" in opts else opts
    ref32 = attnkit.attention(q.float(), k.float(), v.float(), return_lse=True,
                              backend="reference", **opts32)
    spec, scale = validate(q.float(), k.float(), v.float(), **opts32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (Flex warns that its eager path is unfused)
        out, lse = flex.flex_attention_kernel(q.float(), k.float(), v.float(), spec, scale,
                                              compiled=False)
    assert out.shape == ref[0].shape and lse.dtype == torch.float32
    assert_oracle(out, ref32[0], ref[0], 2, "output")
    assert_oracle(lse, ref32[1], ref[1], 2, "lse")


def test_on_the_cpu_flex_refuses_by_name():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(BackendUnsupportedError, match=r"backend 'flex' does not support CPU "
                       r"tensors \(torch compiles FlexAttention on the CPU only for inference "
                       r"and without the lse\); use backend='blockwise'"):
        attnkit.attention(q, q, q, window=(2, 0), backend="flex")


def test_flex_refuses_what_it_cannot_do(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    spec, _ = validate(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8),
                       bias=torch.zeros(4, 4, requires_grad=True))
    with FakeTensorMode() as mode:
        cuda_q = FakeTensor(mode, torch.empty(1, 2, 4, 8, device="meta"), torch.device("cuda"))
        monkeypatch.setattr(flex, "_has_triton", lambda: False)
        assert "Triton, which is missing" in flex.flex_unsupported(spec, True, cuda_q)
        monkeypatch.setattr(flex, "_has_triton", lambda: True)
        assert "a bias that requires grad" in flex.flex_unsupported(spec, True, cuda_q)
        assert "dtype torch.float64" in flex.flex_unsupported(spec, True, cuda_q.double())
        monkeypatch.setattr(flex, "_flex_module", None)
        assert "has no torch.nn.attention.flex_attention" in flex.flex_unsupported(spec, True,
                                                                                  cuda_q)
