"""What a capture keeps: its own copies of queries, keys and lse (in its arena), so nothing the
model or a KV cache writes later changes a captured pattern; in inference mode too."""

from __future__ import annotations

import pytest
import torch

import attnkit

transformers = pytest.importorskip("transformers")
from tests.inspect.test_capture import NOTES, eager_attentions  # noqa: E402


def captured_with_projections(model, inputs):
    """Capture every layer of MiniLM, and layer 0's query and key projections' outputs
    ``(B, S, H·D)`` (the tensors the model's q and k are views of)."""
    attention = model.encoder.layer[0].attention.self
    projected = {}
    hooks = [getattr(attention, name).register_forward_hook(
        lambda module, args, out, name=name: projected.__setitem__(name, out))
        for name in ("query", "key")]
    try:
        with torch.no_grad(), attnkit.capture(model) as cap:
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return cap, projected


def same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_the_capture_keeps_copies_in_its_arena_not_the_models_tensors(minilm):
    model, tokenizer = minilm
    inputs = tokenizer(NOTES, return_tensors="pt")
    eager = eager_attentions(model, **inputs)
    cap, projected = captured_with_projections(model, inputs)
    assert not same_memory(cap.queries(0), projected["query"])
    assert not same_memory(cap.keys(0), projected["key"])
    # every layer's q, k and lse share the capture's arena (~250 KiB here: one block)
    assert len({cap.queries(layer).untyped_storage().data_ptr() for layer in range(6)}) == 1
    for layer in range(6):
        for head in (0, 11):
            assert (cap.pattern(layer, head) - eager[layer][0, head]).abs().max() <= 1e-5


@pytest.mark.parametrize("written", ["query", "key"])
def test_writing_into_the_models_tensors_after_the_forward_changes_nothing(minilm, written):
    model, tokenizer = minilm
    inputs = tokenizer(NOTES, return_tensors="pt")
    eager = eager_attentions(model, **inputs)
    cap, projected = captured_with_projections(model, inputs)
    with torch.no_grad():
        projected[written].mul_(2)  # code writing into the model's tensors after the forward
    for head in range(12):
        assert (cap.pattern(0, head) - eager[0][0, head]).abs().max() <= 1e-5


def test_a_capture_in_inference_mode_keeps_copies(minilm):
    """Inference tensors count no versions: the capture copies them, and stays exact."""
    model, tokenizer = minilm
    inputs = tokenizer(NOTES, return_tensors="pt")
    eager = eager_attentions(model, **inputs)
    attention = model.encoder.layer[0].attention.self
    projected = []
    hook = attention.key.register_forward_hook(lambda m, a, out: projected.append(out))
    try:
        with torch.inference_mode(), attnkit.capture(model) as cap:
            model(**inputs)
    finally:
        hook.remove()
    assert projected[0].is_inference() and not same_memory(cap.keys(0), projected[0])
    assert (cap.pattern(0, 5) - eager[0][0, 5]).abs().max() <= 1e-5


def test_a_static_cache_prefill_stays_exact_after_the_cache_is_written_again():
    """transformers' StaticCache hands attention its own buffers and writes the next positions
    into them: the capture copied them, so the prompt's patterns survive the next step."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    model.set_attn_implementation("attnkit")
    ids = torch.randint(2, 64, (1, 7), generator=torch.Generator().manual_seed(1))
    cache = transformers.StaticCache(config=model.config, max_cache_len=12)
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    with torch.no_grad():  # the next step writes position 7 of the cache's buffers
        model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True,
              cache_position=torch.tensor([7]))
    eager = eager_attentions(model, input_ids=ids)
    for layer in (0, 1):
        for head in range(4):
            ours = cap.pattern(layer, head)  # (7, 12): the cache's empty slots are hidden
            assert ours[:, 7:].abs().max() == 0
            assert (ours[:, :7] - eager[layer][0, head]).abs().max() <= 1e-5


def test_decoding_steps_do_not_pile_up_in_the_arena():
    """Only a layer's first call is copied into the arena; each decoding step replaces the
    layer's record, so its copies are plain ones, freed with the record they replace."""
    from attnkit.core.multihead import MultiHeadAttention

    torch.manual_seed(0)
    mha = MultiHeadAttention(16, n_heads=4, n_kv_heads=2).eval()
    E = torch.randn(1, 40, 16)
    cache = mha.new_cache(1, 40)
    with torch.no_grad(), attnkit.capture(mha) as cap:
        mha(E[:, :5], cache=cache)
        used = cap._arena._used
        for t in range(5, 40):
            mha(E[:, t:t + 1], cache=cache)
    assert cap.seq_len() == 40 and cap._arena._used == used
    with torch.no_grad():
        for h, head in enumerate(mha.heads()):
            assert (cap.pattern(0, h) - head.pattern(E)[0]).abs().max() <= 1e-6
