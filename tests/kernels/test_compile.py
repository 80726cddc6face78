"""attention() under torch.compile: the custom op (its schema, fake implementation and autograd),
whole-graph compilation forward and backward equal to eager, and no more graph breaks than SDPA
in an attnkit MultiHeadAttention and a Hugging Face model."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.kernels import compiled  # noqa: F401  (registers attnkit::attention)

CASES = {
    "causal": dict(shape=(2, 4, 4, 20, 20, 8), opts=dict(causal=True)),
    "window": dict(shape=(1, 2, 2, 33, 40, 8), opts=dict(window=(5, 0))),
    "grouped, Sq != Sk, padding": dict(shape=(2, 4, 2, 6, 24, 8), opts=dict(causal=True),
                                       padding=True),
}


def inputs(shape, padding=False, dtype=torch.float32):
    b, hq, hkv, sq, sk, d = shape
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, hq, sq, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, sk, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, sk, d, generator=g, dtype=dtype)
    mask = None
    if padding:
        mask = torch.rand(b, 1, 1, sk, generator=g) > 0.2
    return q, k, v, mask


def run(fn, q, k, v, **opts):
    """Output, lse and the gradients of a loss on both."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = fn(*leaves, **opts)
    weights = torch.linspace(-1, 1, lse.numel()).view(lse.shape)
    (out.square().sum() + (lse.masked_fill(torch.isneginf(lse), 0) * weights).sum()).backward()
    return out, lse, [t.grad for t in leaves]


def attend(q, k, v, **opts):
    return attnkit.attention(q, k, v, return_lse=True, **opts)


@pytest.mark.parametrize("backend", [None, "blockwise"])
@pytest.mark.parametrize("case", list(CASES))
def test_whole_graph_compile_forward_and_backward_equal_eager(backend, case):
    """fullgraph=True: attention (its validation, backend choice and the custom op) is traced
    without a break; the compiled result and gradients are eager's."""
    shape, opts = CASES[case]["shape"], dict(CASES[case]["opts"])
    q, k, v, mask = inputs(shape, CASES[case].get("padding", False))
    if mask is not None:
        opts["mask"] = mask
    torch._dynamo.reset()
    compiled_fn = torch.compile(attend, fullgraph=True, backend="aot_eager")
    got = run(compiled_fn, q, k, v, backend=backend, **opts)
    want = run(attend, q, k, v, backend=backend, **opts)
    for a, b in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_inductor_compiles_a_causal_grouped_call():
    """The default backend (inductor, generating C++ around the op) too."""
    q, k, v, mask = inputs((1, 4, 2, 16, 16, 8), padding=True)
    torch._dynamo.reset()
    compiled_fn = torch.compile(attend, fullgraph=True)
    got = run(compiled_fn, q, k, v, causal=True, mask=mask)
    want = run(attend, q, k, v, causal=True, mask=mask)
    for a, b in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["fused", "blockwise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_custom_op_passes_torch_opcheck(backend, dtype):
    """torch.library.opcheck: the schema, the fake implementation (shapes, dtypes, strides of
    every output, residuals included) and the autograd registration agree with the real op."""
    q, k, v, mask = inputs((2, 4, 2, 9, 13, 8), padding=True, dtype=dtype)
    bias = torch.randn(1, 4, 9, 13, dtype=dtype)
    sinks = torch.randn(4, dtype=dtype)
    for needs_grad in (False, True):
        general = needs_grad and backend == "blockwise"  # bias gradients, softmax options
        args = (q.requires_grad_(needs_grad), k.requires_grad_(needs_grad),
                v.requires_grad_(needs_grad), mask, bias.clone().requires_grad_(general),
                sinks.clone().requires_grad_(general) if general else None, True, True, 4, None,
                0.3, 30.0 if general else None, 0.0, None, backend, needs_grad, general, general)
        torch.library.opcheck(torch.ops.attnkit.attention.default, args)


def test_the_compiled_op_gives_a_bias_its_gradient():
    q, k, v, _ = inputs((1, 2, 2, 10, 12, 8))
    bias = torch.randn(1, 2, 10, 12)

    def f(q, k, v, bias):
        return attnkit.attention(q, k, v, bias=bias, window=(3, 2))

    grads = []
    for fn in (torch.compile(f, fullgraph=True, backend="aot_eager"), f):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
        fn(*leaves).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# ---- graph breaks --------------------------------------------------------------------------


def graph_breaks(fn, *args, **kwargs) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args, **kwargs).graph_break_count


def test_a_multihead_attention_compiles_without_graph_breaks():
    mha = attnkit.MultiHeadAttention(32, n_heads=4, n_kv_heads=2)
    E = torch.randn(2, 10, 32)
    peer = torch.nn.MultiheadAttention(32, 4, batch_first=True)  # torch's own, on SDPA
    assert graph_breaks(mha, E) == 0
    assert graph_breaks(lambda x: peer(x, x, x, need_weights=False)[0], E) == 0
    torch._dynamo.reset()
    compiled_mha = torch.compile(mha, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled_mha(E), mha(E))


def test_a_hugging_face_model_on_attnkit_breaks_no_more_than_on_sdpa():
    transformers = pytest.importorskip("transformers")
    import attnkit.hf  # noqa: F401  (registers "attnkit")

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 12))
    attention_mask = torch.ones_like(ids)
    attention_mask[0, :3] = 0  # left padding: the mask path, not just causal
    breaks, logits = {}, {}
    for implementation in ("sdpa", "attnkit"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            breaks[implementation] = graph_breaks(model, input_ids=ids,
                                                  attention_mask=attention_mask)
            logits[implementation] = model(input_ids=ids, attention_mask=attention_mask).logits
    assert breaks["attnkit"] <= breaks["sdpa"], breaks
    torch._dynamo.reset()
    compiled_model = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        got = compiled_model(input_ids=ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(got[1], logits["attnkit"][1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0, 3:], logits["sdpa"][0, 3:], rtol=1e-4, atol=1e-4)
