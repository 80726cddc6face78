"""On a CUDA GPU: every CUDA backend against the float64 oracle computed on the GPU, the automatic
choice, rows that see no key, SDPA as a peer, and pattern(), capture and a Hugging Face model
on CUDA tensors with nothing copied to the CPU. Skipped without CUDA; ``benchmarks/gpu_check.py``
runs this file when a GPU is lent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

import attnkit
from attnkit.kernels.api import _choose, validate
from tests.kernels.oracle import assert_oracle, grad_scale
from tests.kernels.test_oracle import make_qkv, problems

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def on_gpu(shape, opts, g, strided, dtype):
    """float64 inputs on the GPU, rounded once to ``dtype``; options moved along."""
    q, k, v = (t.to(dtype).double().to(CUDA) for t in make_qkv(shape, g, strided=strided))
    opts = {key: (value.to(dtype).double() if key == "bias" else value).to(CUDA)
            if isinstance(value, torch.Tensor) else value for key, value in opts.items()}
    return q, k, v, opts


def run(q, k, v, opts, backend, dtype, grad_out, weights):
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    opts = dict(opts)
    bias_grad = backend in ("reference", "blockwise", "efficient")
    if "bias" in opts:
        opts["bias"] = opts["bias"].detach().to(dtype).requires_grad_(bias_grad)
        if bias_grad:
            leaves.append(opts["bias"])
    out, lse = attnkit.attention(*leaves[:3], return_lse=True, backend=backend, **opts)
    loss = (out.double() * grad_out).sum() + (
        lse.masked_fill(torch.isneginf(lse), 0.0).double() * weights).sum()
    return out, lse, torch.autograd.grad(loss, leaves)


def restrict(backend: str, opts: dict) -> dict:
    """The problem's options that ``backend`` takes (the others are dropped, not refused)."""
    if backend == "flash":
        return {key: opts[key] for key in ("causal", "window") if key in opts}
    if backend == "efficient":
        return {key: value for key, value in opts.items() if key != "window"}
    return opts


@pytest.mark.parametrize("backend,dtype", [
    ("flash", torch.bfloat16), ("flash", torch.float16), ("efficient", torch.float32),
    ("efficient", torch.bfloat16), (None, torch.bfloat16), (None, torch.float32)])
@settings(max_examples=20)
@given(problem=problems(max_len=300))
def test_cuda_backends_follow_the_oracle_rule(backend, dtype, problem):
    check_problem(backend, dtype, problem)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@settings(max_examples=6)  # (each new shape compiles a Flex kernel: tens of seconds)
@given(problem=problems(max_len=300))
def test_flex_follows_the_oracle_rule(dtype, problem):
    check_problem("flex", dtype, problem)


def check_problem(backend, dtype, problem):
    shape, opts, g, strided = problem
    opts = restrict(backend, opts) if backend else opts
    grad_out = torch.randn(shape[0], shape[1], shape[3], shape[6], generator=g,
                           dtype=torch.float64).to(dtype).double().to(CUDA)
    weights = torch.randn(shape[0], shape[1], shape[3], generator=g, dtype=torch.float64).to(CUDA)
    q, k, v, opts = on_gpu(shape, opts, g, strided, dtype)
    ref = run(q, k, v, opts, "reference", torch.float64, grad_out, weights)
    ref_dtype = run(q, k, v, opts, "reference", dtype, grad_out, weights)
    fast = run(q, k, v, opts, backend, dtype, grad_out, weights)
    assert fast[0].device.type == "cuda" and fast[0].dtype == dtype
    assert_oracle(fast[0], ref_dtype[0], ref[0], 2, "output")
    assert_oracle(fast[1], ref_dtype[1], ref[1], 2, "lse")
    for name, a, b, c in zip(["dq", "dk", "dv", "dbias"], fast[2], ref_dtype[2], ref[2]):
        assert_oracle(a, b, c, 3, name, grad_scale(ref[2]))


@pytest.mark.parametrize("backend", ["flash", "efficient", "flex"])
def test_long_calls_on_cuda(backend):
    g = torch.Generator().manual_seed(0)
    dtype = torch.float32 if backend == "efficient" else torch.bfloat16
    for sq, sk, opts in [(2048, 2048, {"causal": True}), (300, 2500, {"causal": True}),
                         (2000, 2000, {"window": (256, 0)})]:
        if backend == "efficient" and "window" in opts:
            continue
        q, k, v, opts = on_gpu((1, 4, 2, sq, sk, 64, 64), opts, g, False, dtype)
        grad_out = torch.randn(1, 4, sq, 64, device=CUDA, dtype=torch.float64)
        weights = torch.zeros(1, 4, sq, device=CUDA, dtype=torch.float64)
        ref = run(q, k, v, opts, "reference", torch.float64, grad_out, weights)
        ref_dtype = run(q, k, v, opts, "reference", dtype, grad_out, weights)
        fast = run(q, k, v, opts, backend, dtype, grad_out, weights)
        assert_oracle(fast[0], ref_dtype[0], ref[0], 2, f"output {sq}x{sk} {opts}")
        assert_oracle(fast[1], ref_dtype[1], ref[1], 2, f"lse {sq}x{sk} {opts}")
        for name, a, b, c in zip(["dq", "dk", "dv"], fast[2], ref_dtype[2], ref[2]):
            assert_oracle(a, b, c, 3, f"{name} {sq}x{sk}", grad_scale(ref[2]))


@pytest.mark.parametrize("backend", ["flash", "efficient", "flex", "blockwise"])
def test_rows_that_see_no_key_on_cuda(backend):
    dtype = torch.float32 if backend == "efficient" else torch.bfloat16
    q = torch.randn(2, 2, 30, 64, device=CUDA, dtype=dtype, requires_grad=True)
    k = torch.randn(2, 2, 10, 64, device=CUDA, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 2, 10, 64, device=CUDA, dtype=dtype, requires_grad=True)
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True, backend=backend)
    assert torch.isneginf(lse[..., :20]).all() and torch.isfinite(lse[..., 20:]).all()
    assert torch.equal(out[:, :, :20], torch.zeros_like(out[:, :, :20]))
    (out.float().square().sum() + lse.masked_fill(torch.isneginf(lse), 0).sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_flash_agrees_with_sdpa_flash():
    q, k, v = (torch.randn(2, 8, 1000, 128, device=CUDA, dtype=torch.bfloat16) for _ in range(3))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        peer = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ours = attnkit.attention(q, k, v, causal=True, backend="flash")
    torch.testing.assert_close(ours, peer, rtol=0, atol=0)  # the same kernel, the same bits


def test_the_automatic_choice_on_cuda():
    q = torch.randn(1, 4, 64, 64, device=CUDA, dtype=torch.bfloat16)
    spec, _ = validate(q, q, q, causal=True)
    assert _choose(None, spec, True, q).name == "flash"
    spec, _ = validate(q.float(), q.float(), q.float(), causal=True)
    assert _choose(None, spec, True, q.float()).name == "efficient"


def test_pattern_capture_and_a_hugging_face_model_stay_on_the_gpu():
    transformers = pytest.importorskip("transformers")
    import attnkit.hf  # noqa: F401

    q = torch.randn(1, 4, 50, 64, device=CUDA, dtype=torch.bfloat16)
    k = torch.randn(1, 2, 50, 64, device=CUDA, dtype=torch.bfloat16)
    _, lse = attnkit.attention(q, k, k, causal=True, return_lse=True)
    p = attnkit.pattern(q, k, lse, causal=True, rows=[49, 3])
    assert p.device.type == "cuda" and torch.allclose(p.sum(-1), torch.ones_like(p.sum(-1)),
                                                      atol=1e-3)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(config).to(CUDA, torch.bfloat16).eval()
    ids = torch.randint(0, 128, (1, 40), device=CUDA)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(ids, output_attentions=True).attentions
    model.set_attn_implementation("attnkit")
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(ids)
    for layer in (0, 1):
        got = cap.pattern(layer, 1)
        assert got.device.type == "cuda" and cap.queries(layer).device.type == "cuda"
        torch.testing.assert_close(got.float(), eager[layer][0, 1].float(), rtol=0, atol=2e-2)


def test_compile_on_cuda_forward_and_backward():
    q, k, v = (torch.randn(1, 4, 256, 64, device=CUDA, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))

    def f(q, k, v):
        out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
        return out.float().sum() + lse.sum()

    compiled = torch.compile(f, fullgraph=True)
    compiled(q, k, v).backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    f(q, k, v).backward()
    for a, t in zip(got, (q, k, v)):
        torch.testing.assert_close(a, t.grad)
