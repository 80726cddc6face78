"""The CUDA backends without a GPU: their code against the float64 oracle through CPU stand-ins of
torch's ops (cuda_emulation.py), their calls to the real ops on fake CUDA tensors (the ops'
own shape functions check every argument), their refusals, and the automatic choice per device.
The same properties on a real GPU are in test_cuda.py (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import attnkit
import attnkit.kernels.fused_cuda as fused_cuda
from attnkit.kernels import api
from attnkit.kernels.api import validate
from tests.kernels.cuda_emulation import emulated_cuda_ops
from tests.kernels.oracle import assert_oracle, grad_scale
from tests.kernels.test_oracle import make_qkv, problems, rounded_to

KERNELS = {"flash": fused_cuda.flash_attention, "efficient": fused_cuda.efficient_attention}


def run(kernel, q, k, v, opts, dtype, grad_out, lse_weights):
    """Output, lse and gradients (q, k, v, and the bias if it needs one) of one kernel; the
    reference goes through attnkit.attention."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    opts = dict(opts)
    if "bias" in opts:
        opts["bias"] = opts["bias"].detach().to(dtype).requires_grad_()
        leaves.append(opts["bias"])
    with emulated_cuda_ops():
        if kernel == "reference":
            out, lse = attnkit.attention(*leaves[:3], return_lse=True, backend="reference",
                                         **opts)
        else:
            spec, scale = validate(*leaves[:3], **opts)
            out, lse = KERNELS[kernel](*leaves[:3], spec, scale)
        loss = (out.double() * grad_out).sum() + (
            lse.masked_fill(torch.isneginf(lse), 0.0).double() * lse_weights).sum()
        grads = torch.autograd.grad(loss, leaves)
    return out, lse, grads


def supported(kernel: str, opts: dict) -> bool:
    if kernel == "flash":
        return "mask" not in opts and "bias" not in opts
    return opts.get("window") is None


@pytest.mark.parametrize("kernel,dtype", [("flash", torch.bfloat16), ("flash", torch.float16),
                                          ("efficient", torch.float32),
                                          ("efficient", torch.bfloat16)])
@settings(max_examples=25)
@given(problem=problems(max_len=120), data=st.data())
def test_emulated_kernels_follow_the_oracle_rule(kernel, dtype, problem, data):
    shape, opts, g, strided = problem
    if not supported(kernel, opts):
        opts = {"causal": opts["causal"]} if kernel == "efficient" else {
            key: value for key, value in opts.items() if key in ("causal", "window")}
    q, k, v = make_qkv(shape, g, strided=strided)
    grad_out = torch.randn(shape[0], shape[1], shape[3], shape[6], generator=g,
                           dtype=torch.float64)
    weights = torch.randn(shape[0], shape[1], shape[3], generator=g, dtype=torch.float64)
    q, k, v, opts, grad_out = rounded_to(dtype, q, k, v, opts, grad_out)
    ref = run("reference", q, k, v, opts, torch.float64, grad_out, weights)
    ref_dtype = run("reference", q, k, v, opts, dtype, grad_out, weights)
    fast = run(kernel, q, k, v, opts, dtype, grad_out, weights)
    assert fast[0].dtype == dtype and fast[1].dtype == torch.float32
    assert fast[0].shape == ref[0].shape
    assert_oracle(fast[0], ref_dtype[0], ref[0], 2, "output")
    assert_oracle(fast[1], ref_dtype[1], ref[1], 2, "lse")
    for name, a, b, c in zip(["dq", "dk", "dv", "dbias"], fast[2], ref_dtype[2], ref[2]):
        assert_oracle(a, b, c, 3, name, grad_scale(ref[2]))


def test_emulated_rows_that_see_no_key_and_head_dims_apart():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 30, 20, generator=g)
    k, v = torch.randn(2, 2, 10, 20, generator=g), torch.randn(2, 2, 10, 7, generator=g)
    mask = torch.rand(2, 1, 30, 10, generator=g) > 0.3
    mask[1, :, 25] = False
    for kernel, dtype, opts in [("flash", torch.bfloat16, {"causal": True}),
                                ("flash", torch.bfloat16, {"window": (2, 1)}),
                                ("efficient", torch.float32, {"causal": True, "mask": mask})]:
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        spec, scale = validate(*leaves, **opts)
        with emulated_cuda_ops():
            out, lse = KERNELS[kernel](*leaves, spec, scale)
            (out.float().square().sum() + lse.masked_fill(torch.isneginf(lse), 0).sum()
             ).backward()
        ref, ref_lse = attnkit.attention(*[t.detach().double() for t in leaves],
                                         return_lse=True, backend="reference", **opts)
        assert out.shape == (2, 4, 30, 7)
        assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), (kernel, opts)
        # aligned bottom-right (Sk - Sq = -20): causal queries 0..19 see nothing; window (2, 1)
        # ones 0..18 (query 19 sees key 0)
        assert torch.isneginf(lse[:, :, :19]).all() and torch.isfinite(ref_lse[0, :, 20]).all()
        assert not torch.isnan(out).any()
        torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)
        for t in leaves:
            assert torch.isfinite(t.grad).all()


# ---- the real ops, on meta tensors ---------------------------------------------------------


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


@pytest.fixture
def fake_cuda():
    """A function making fake CUDA tensors (shapes, dtypes and a CUDA device; no data) inside a
    fake tensor mode: enough for validation and the choice of a backend (copies would need a
    CUDA build)."""
    mode = FakeTensorMode()

    def make(*shape, dtype=torch.bfloat16):
        return FakeTensor(mode, torch.empty(*shape, dtype=dtype, device="meta"),
                          torch.device("cuda", 0))

    with mode:
        yield make


@pytest.mark.parametrize("opts", [{"causal": True}, {"window": (16, 0)}, {}])
def test_flash_calls_the_real_ops_with_arguments_they_accept(opts):
    """torch registers shape functions for the CUDA ops on the meta device: every argument the
    backend passes is parsed and checked against the schema, and the shapes flow through."""
    q, k, v = meta(2, 8, 100, 64), meta(2, 2, 120, 64), meta(2, 2, 120, 40)
    spec, scale = validate(q, k, v, **opts)
    out, lse, rng = fused_cuda._flash_forward(q, k, v, spec, scale)
    assert out.shape == (2, 8, 100, 40)
    assert lse.shape == (2, 8, 100) and lse.dtype == torch.float32
    dq, dk, dv = fused_cuda._flash_backward(q, k, v, spec, scale, out, lse, meta(
        2, 8, 100, 40), meta(2, 8, 100, dtype=torch.float32), rng)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    assert dq.dtype == dk.dtype == dv.dtype == torch.bfloat16


@pytest.mark.parametrize("opts", [{"causal": True, "mask": "keys"}, {"bias": True}, {}])
def test_efficient_calls_the_real_ops_with_arguments_they_accept(opts):
    q, k, v = (meta(2, 4, 33, 24, dtype=torch.float32), meta(2, 2, 50, 24, dtype=torch.float32),
               meta(2, 2, 50, 16, dtype=torch.float32))
    opts = dict(opts)
    if opts.get("mask") == "keys":
        opts["mask"] = meta(2, 1, 1, 50, dtype=torch.bool)
    if opts.get("bias"):
        opts["bias"] = meta(1, 4, 33, 50, dtype=torch.float32)
    spec, scale = validate(q, k, v, **opts)
    out, lse, philox = fused_cuda._efficient_forward(q, k, v, spec, scale)
    assert out.shape == (2, 4, 33, 16) and lse.shape == (2, 4, 33)
    # torch 2.13's meta function for the backward is stale (it lacks the schema's ``out`` and
    # ``window_size``, so it fails on any call): the call is checked against the schema
    # itself, and shapes come from a stand-in
    real_forward, real_backward = fused_cuda._EFFICIENT

    def backward(*args, **kwargs):
        matches_schema(real_backward, args, kwargs)
        grad_out, query, key, value, bias = args[:5]
        dbias = torch.empty(bias.shape, device="meta") if bias is not None else None
        return (torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), dbias)

    fused_cuda._EFFICIENT = (real_forward, backward)
    try:
        dq, dk, dv, dbias = fused_cuda._efficient_backward(
            q, k, v, spec, scale, out, lse, meta(2, 4, 33, 16, dtype=torch.float32),
            meta(2, 4, 33, dtype=torch.float32), "bias" in opts, philox)
    finally:
        fused_cuda._EFFICIENT = (real_forward, real_backward)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    if "bias" in opts:
        assert dbias.shape == (1, 4, 33, 50)


def matches_schema(op, args, kwargs) -> None:
    """The call ``op(*args, **kwargs)`` binds to the op's schema: arity, keyword names, no None
    for a required tensor."""
    schema = op.default._schema  # (the packet's one overload)
    positional = [a for a in schema.arguments if not a.kwarg_only]
    keywords = {a.name: a for a in schema.arguments if a.kwarg_only}
    assert len(args) == len(positional), (len(args), [a.name for a in positional])
    for arg, value in zip(positional, args):
        if str(arg.type) == "Tensor":
            assert isinstance(value, torch.Tensor), f"{arg.name} must be a tensor"
    assert set(kwargs) <= set(keywords), set(kwargs) - set(keywords)


# ---- refusals and the choice per device ----------------------------------------------------


def test_on_cpu_tensors_the_cuda_backends_refuse_by_name():
    q = torch.randn(1, 2, 5, 8)
    for name in ("flash", "efficient", "flex"):
        with pytest.raises(attnkit.AttnkitError, match=rf"backend '{name}' does not support "
                           r"(tensors on cpu|CPU tensors).*use backend='blockwise'"):
            attnkit.attention(q, q, q, backend=name)


def test_the_automatic_choice_on_a_gpu_picks_per_call(fake_cuda, monkeypatch):
    """Flash for half precision with causal or a window; efficient for float32, masks and
    biases; flex (when Triton is there) or blockwise for a window with a mask; each CUDA
    backend refuses what it cannot do, naming one that can."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(fused_cuda, "_flash_available", lambda: True)
    monkeypatch.setattr(attnkit.kernels.flex, "_has_triton", lambda: True)

    def chosen(dtype=torch.bfloat16, **opts):
        q = fake_cuda(1, 4, 64, 64, dtype=dtype)
        k = fake_cuda(1, 2, 64, 64, dtype=dtype)
        spec, _ = validate(q, k, k, **opts)
        return api._choose(None, spec, True, q).name

    mask = fake_cuda(1, 1, 64, 64, dtype=torch.bool)
    assert chosen(causal=True) == "flash"
    assert chosen(window=(8, 0)) == "flash"
    assert chosen(torch.float32, causal=True) == "efficient"
    assert chosen(mask=mask, causal=True) == "efficient"
    assert chosen(torch.float32, window=(8, 0)) == "flex"
    assert chosen(mask=mask, window=(8, 0)) == "flex"
    assert chosen(softcap=30.0) == "flex"
    assert chosen(torch.float64, causal=True) == "blockwise"
    assert chosen(sinks=fake_cuda(4, dtype=torch.bfloat16)) == "blockwise"
    monkeypatch.setattr(attnkit.kernels.flex, "_has_triton", lambda: False)
    assert chosen(mask=mask, window=(8, 0)) == "blockwise"
    q = fake_cuda(1, 4, 64, 64, dtype=torch.float32)
    spec, _ = validate(q, q, q, window=(8, 0))
    with pytest.raises(attnkit.AttnkitError, match=r"backend 'flash' does not support dtype "
                       r"torch.float32 \(FlashAttention-2 takes float16 and bfloat16\)"):
        api._choose("flash", spec, True, q)
    with pytest.raises(attnkit.AttnkitError, match=r"backend 'efficient' does not support "
                       r"window=\(8, 0\).*use backend='blockwise'"):
        api._choose("efficient", spec, True, q)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    spec, _ = validate(q.bfloat16(), q.bfloat16(), q.bfloat16(), causal=True)
    with pytest.raises(attnkit.AttnkitError, match=r"'flash' does not support this GPU "
                       r"\(compute capability 7.x"):
        api._choose("flash", spec, True, q.bfloat16())


def test_backends_say_where_they_run():
    assert set(attnkit.backends("cuda")) >= {"flash", "efficient", "flex", "blockwise"}
    assert "fused" not in attnkit.backends("cuda")
    assert not {"flash", "efficient", "flex"} & set(attnkit.backends("cpu"))
    assert attnkit.backends()["flash"].endswith("(cuda)")


def test_a_torch_without_the_cuda_ops_falls_back_with_a_clear_message(fake_cuda, monkeypatch):
    """The ops are private, so they are looked up: a torch lacking either of a kernel's two ops
    has that kernel refuse by name, and the automatic choice moves on to the next backend."""
    import types

    backward_only = types.SimpleNamespace(**{fused_cuda.FLASH_OPS[1]: object()})
    assert fused_cuda.find_ops(fused_cuda.FLASH_OPS, types.SimpleNamespace()) is None
    assert fused_cuda.find_ops(fused_cuda.FLASH_OPS, backward_only) is None
    assert fused_cuda.find_ops(fused_cuda.FLASH_OPS) is not None  # torch 2.13 has them
    assert fused_cuda.find_ops(fused_cuda.EFFICIENT_OPS) is not None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(fused_cuda, "_flash_available", lambda: True)
    monkeypatch.setattr(attnkit.kernels.flex, "_has_triton", lambda: True)
    q = fake_cuda(1, 4, 64, 64, dtype=torch.bfloat16)
    spec, _ = validate(q, q, q, causal=True)
    assert api._choose(None, spec, True, q).name == "flash"
    monkeypatch.setattr(fused_cuda, "_FLASH", None)
    with pytest.raises(attnkit.AttnkitError, match=r"backend 'flash' does not support this "
                       r"torch \(.*\): it has no aten\._flash_attention_forward; "
                       r"use backend='blockwise' \(backends that can: .*efficient"):
        api._choose("flash", spec, True, q)
    assert api._choose(None, spec, True, q).name == "efficient"
    monkeypatch.setattr(fused_cuda, "_EFFICIENT", None)
    with pytest.raises(attnkit.AttnkitError, match=r"backend 'efficient' does not support this "
                       r"torch \(.*\): it has no aten\._efficient_attention_forward"):
        api._choose("efficient", spec, True, q)
    assert api._choose(None, spec, True, q).name == "flex"
