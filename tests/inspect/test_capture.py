"""attnkit.capture: patterns recomputed from the recorded q, k and lse equal Hugging Face eager
``output_attentions`` (MiniLM, random decoders on a padded batch) and the plain softmax of our own
AttentionHead; selection, slices and every user-facing error."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import attnkit
from attnkit.core.head import AttentionHead
from attnkit.core.multihead import MultiHeadAttention

transformers = pytest.importorskip("transformers")
import attnkit.hf  # noqa: E402,F401  (registers "attnkit")

NOTES = "a fluffy blue creature roamed the verdant forest"



def eager_attentions(model, **inputs):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("attnkit")


def test_minilm_every_layer_and_head_equals_eager_float64(minilm):
    model, tokenizer = minilm
    model.double()
    try:
        inputs = tokenizer(NOTES, return_tensors="pt")
        with torch.no_grad(), attnkit.capture(model) as cap:
            model(**inputs)
        eager = eager_attentions(model, **inputs)
    finally:
        model.float()
    assert cap.layers == list(range(6)) and cap.heads == list(range(12))
    assert (cap.n_layers, cap.n_heads, cap.seq_len()) == (6, 12, inputs["input_ids"].shape[1])
    for layer in range(6):
        for head in range(12):
            assert (cap.pattern(layer, head) - eager[layer][0, head]).abs().max() <= 1e-6


def test_minilm_float32_patterns_are_as_exact_as_float32_allows(minilm):
    """DESIGN's oracle rule: against the float64 truth, our float32 patterns err at most twice
    what Hugging Face's float32 eager attention errs, plus a floor of 1e-6 and the rounding of
    the float32 lse they are recomputed from (eps * |lse|; MiniLM's layer-0 lse reaches ~31, so
    ~2e-6). A fixed 1e-6 against eager float32 is more than a float32 lse can promise; in float64
    (above) the two agree to 1e-6. On the CPU the capture runs the fused backend, whose lse
    carries that kernel's own float32 dot products, which pattern() cannot repeat: a further
    2 sqrt(D) S 2**-24 (S bounds |scale q.k|; docs/backends.md, "Exactness"), as in the fuzz."""
    model, tokenizer = minilm
    inputs = tokenizer(NOTES, return_tensors="pt")
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(**inputs)
    eager = eager_attentions(model, **inputs)
    truth = eager_attentions(model.double(), **inputs)
    model.float()
    for layer in range(6):
        for head in range(12):
            t = truth[layer][0, head]
            ours = (cap.pattern(layer, head).double() - t).abs().max()
            peer = (eager[layer][0, head].double() - t).abs().max()
            lse_rounding = torch.finfo(torch.float32).eps * cap.lse(layer)[0, head].abs().max()
            q, k = cap.queries(layer)[0, head], cap.keys(layer)[0, head]  # (S, D)
            d = q.shape[-1]
            scale = cap.options(layer).get("scale") or d**-0.5
            big_s = abs(scale) * q.double().norm(dim=-1).max() * k.double().norm(dim=-1).max()
            fused_dots = 2 * d**0.5 * big_s * 2.0**-24
            assert ours <= 2 * peer + 1e-6 + lse_rounding + fused_dots, (layer, head, ours, peer)


def tiny_decoder(kind: str) -> nn.Module:
    t = transformers
    common = dict(vocab_size=64, max_position_embeddings=64, num_hidden_layers=2)
    if kind == "gpt2":
        config = t.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        cls = t.GPT2Model
    elif kind == "llama":
        config = t.LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                               num_key_value_heads=2, **common)
        cls = t.LlamaModel
    else:  # qwen2: layer 1 slides with a window of 3
        config = t.Qwen2Config(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                               num_key_value_heads=1, sliding_window=3, use_sliding_window=True,
                               max_window_layers=1, **common)
        cls = t.Qwen2Model
    torch.manual_seed(0)
    model = cls(config).eval()
    model.set_attn_implementation("attnkit")
    return model


def padded_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 8:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_random_decoders_on_a_padded_batch_equal_eager(kind):
    model = tiny_decoder(kind)
    inputs = padded_batch()
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(**inputs)
    eager = eager_attentions(model, **inputs)
    real = inputs["attention_mask"].bool()
    for layer in cap.layers:
        for head in cap.heads:
            for b in range(3):
                ours = cap.pattern(layer, head, batch=b)[real[b]]  # rows of real queries only:
                theirs = eager[layer][b, head][real[b]]  # eager fills padding rows its own way
                assert (ours - theirs).abs().max() <= 1e-6
    assert [cap.seq_len(b) for b in range(3)] == [11, 8, 7]


def test_llama_queries_keys_and_lse_as_the_model_used_them():
    model = tiny_decoder("llama")  # 4 query heads share 2 key/value heads
    inputs = padded_batch()
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(**inputs)
    q, k, lse = cap.queries(1), cap.keys(1), cap.lse(1)
    assert q.shape == (3, 4, 11, 8) and k.shape == (3, 2, 11, 8) and lse.shape == (3, 4, 11)
    # the scores from the recorded (rotated) q and k, softmaxed in float64, give the pattern
    s = cap.scores(1, 3, batch=2)  # head 3 reads key head 1
    manual = (q[2, 3].double() @ k[2, 1].double().T) * 8 ** -0.5
    visible = torch.isfinite(s)
    assert torch.allclose(s[visible].double(), manual[visible], atol=1e-5)
    assert not visible[:, :4].any()  # left padding: no query sees keys 0..3
    assert not visible[6, 7:].any()  # causal: query 6 sees nothing later
    real = slice(4, None)
    assert torch.allclose(torch.softmax(s[real], -1), cap.pattern(1, 3, batch=2)[real], atol=1e-6)


def test_layers_heads_rows_and_cols_select_exactly_the_same_numbers():
    model = tiny_decoder("llama")
    inputs = padded_batch()
    with torch.no_grad(), attnkit.capture(model) as full:
        model(**inputs)
    with torch.no_grad(), attnkit.capture(model, layers=[1], heads=[1, 2]) as part:
        model(**inputs)
    assert part.layers == [1] and part.heads == [1, 2] and part.n_heads == 4
    assert part.queries(1).shape == (3, 2, 11, 8) and part.keys(1).shape == (3, 2, 11, 8)
    for head in (1, 2):
        assert torch.equal(part.pattern(1, head, batch=1), full.pattern(1, head, batch=1))
    # a slice is computed on its own, so vectorized exp may round its last bit differently
    # from the same cell in the whole pattern: equal to float32 rounding, not bit for bit
    def same(a, b):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)

    whole = full.pattern(0, 2, batch=0)
    same(full.pattern(0, 2, rows=slice(-1, None)), whole[-1:])
    same(full.pattern(0, 2, rows=slice(3, 7), cols=slice(0, 5)), whole[3:7, :5])
    picks = torch.tensor([0, 5, 10])
    same(full.pattern(0, 2, rows=picks, cols=picks), whole[picks][:, picks])
    scores = full.scores(0, 2, batch=1)
    same(full.scores(0, 2, batch=1, rows=picks, cols=slice(2, 9)), scores[picks][:, 2:9])
    with pytest.raises(attnkit.errors.OutOfRangeError,
                       match=r"layer 0 was not captured; captured layers: \[1\]"):
        part.pattern(0, 1)
    with pytest.raises(IndexError, match=r"head 3 of layer 1 was not captured; captured heads: "
                                       r"\[1, 2\]"):
        part.pattern(1, 3)


class TwoLayers(nn.Module):
    """A small model from attnkit's own modules: a grouped MultiHeadAttention, then one head."""

    def __init__(self):
        super().__init__()
        self.first = MultiHeadAttention(16, n_heads=4, n_kv_heads=2)
        self.second = AttentionHead(16, 8)

    def forward(self, E):
        return self.second(self.first(E))


def test_attnkit_modules_equal_the_plain_softmax_of_attention_head():
    torch.manual_seed(0)
    model = TwoLayers().eval()
    E = torch.randn(2, 9, 16)
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(E)
        E1 = model.first(E)
    assert cap.layers == [0, 1] and cap.n_layers == 2
    with torch.no_grad():
        for h, head in enumerate(model.first.heads()):
            plain = head.pattern(E)  # (2, 9, 9): the notes' softmax, materialized
            for b in range(2):
                assert (cap.pattern(0, h, batch=b) - plain[b]).abs().max() <= 1e-6
        plain = model.second.pattern(E1)
        assert (cap.pattern(1, 0, batch=1) - plain[1]).abs().max() <= 1e-6


def test_capture_sees_only_its_own_model_and_keeps_the_last_call():
    torch.manual_seed(0)
    mine, other = TwoLayers().eval(), TwoLayers().eval()
    E, F = torch.randn(1, 5, 16), torch.randn(1, 6, 16)
    with torch.no_grad(), attnkit.capture(mine) as cap:
        other(F)
        mine(F)
        mine(E)  # the last call of each layer is what stays
    assert cap.queries(0).shape[2] == 5
    with torch.no_grad():
        assert (cap.pattern(0, 1) - mine.first.heads()[1].pattern(E)[0]).abs().max() <= 1e-6


# ---- errors ---------------------------------------------------------------------------------

def test_hf_model_not_on_attnkit_is_refused_with_the_fix():
    model = tiny_decoder("llama")
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match=r"LlamaModel runs attn_implementation='sdpa'.*"
                                         r"set_attn_implementation\('attnkit'\)"):
        with attnkit.capture(model):
            pass


def test_model_without_attention_interface_is_refused_naming_its_class():
    class HandRolledModel(transformers.PreTrainedModel):
        config_class = transformers.PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    with pytest.raises(ValueError, match="HandRolledModel does not compute attention through "
                                         "transformers' AttentionInterface"):
        with attnkit.capture(HandRolledModel(transformers.PretrainedConfig())):
            pass


def test_capture_used_before_any_forward_says_so():
    model = TwoLayers()
    with attnkit.capture(model) as cap:
        with pytest.raises(attnkit.AttnkitError,
                           match="recorded nothing inside its `with` block: run"):
            cap.pattern(0, 0)
    assert cap.layers == []
    with pytest.raises(attnkit.AttnkitError,
                       match="TwoLayers has recorded nothing after its `with` block"):
        cap.queries(0)


def test_module_whose_attention_attnkit_cannot_see_is_refused_at_once():
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, batch_first=True)).eval()
    with pytest.raises(attnkit.errors.UnsupportedModelError,
                       match="Sequential is neither a Hugging Face model nor built from attnkit's "
                             "MultiHeadAttention/AttentionHead"):
        with attnkit.capture(model):
            pass


def test_bad_selection_and_positions_are_refused_clearly():
    model = TwoLayers().eval()
    with pytest.raises(ValueError, match=r"capture\(layers=...\) takes a list of ints"):
        with attnkit.capture(model, layers=3):
            pass
    with pytest.raises(ValueError, match=r"capture\(layers=\[0, 2\]\): TwoLayers has 2 attention "
                                         r"layers \(0..1\); no layer \[2\]"):
        with attnkit.capture(model, layers=[2, 0]):
            pass
    with pytest.raises(ValueError, match=r"capture\(heads=\[7\]\): layer 0 of TwoLayers has 4 "
                                         r"heads \(0..3\); no head \[7\]"):
        with torch.no_grad(), attnkit.capture(model, heads=[7]):
            model(torch.randn(1, 3, 16))
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(torch.randn(1, 3, 16))
    with pytest.raises(IndexError, match=r"batch 1 out of range: the capture holds 1 sequence "
                                         r"\(0..0\)"):
        cap.pattern(0, 0, batch=1)
    with pytest.raises(ValueError, match="rows has positions outside 0..2"):
        cap.pattern(0, 0, rows=torch.tensor([5]))


# ---- decoding over a KV cache ---------------------------------------------------------------

def test_decoding_steps_with_attnkit_kv_cache_join_into_one_pattern():
    """Prompt of 5, then 3 single-token steps through the core's KVCache: the capture holds 8
    query rows, equal to the plain causal softmax over the whole sequence."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, n_heads=4, n_kv_heads=2).eval()
    E = torch.randn(1, 8, 16)
    cache = mha.new_cache(1, 8)
    with torch.no_grad(), attnkit.capture(mha) as cap:
        mha(E[:, :5], cache=cache)
        for t in range(5, 8):
            mha(E[:, t:t + 1], cache=cache)
    assert cap.queries(0).shape == (1, 4, 8, 4) and cap.seq_len() == 8
    with torch.no_grad():
        cache.reset()  # the cache's buffers get reused; the capture kept its own copy
        mha(torch.randn(1, 8, 16), cache=cache)
    with torch.no_grad():
        for h, head in enumerate(mha.heads()):
            assert (cap.pattern(0, h) - head.pattern(E)[0]).abs().max() <= 1e-6
    with torch.no_grad(), attnkit.capture(mha) as again:
        mha(E[:, :5], cache=mha.new_cache(1, 8))
        mha(E[:, :3])  # a new sequence, not a step: it replaces the record
    assert again.queries(0).shape[2] == 3


def test_generate_inside_capture_holds_the_whole_generated_sequence():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=1, bos_token_id=0, eos_token_id=1)
    model = transformers.LlamaForCausalLM(config).eval()
    model.set_attn_implementation("attnkit")
    inputs = padded_batch()
    inputs["attention_mask"][1] = 1
    inputs["attention_mask"][1, :3] = 0  # left padding only, for generation
    with torch.no_grad(), attnkit.capture(model) as cap:
        tokens = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=1,
                                eos_token_id=None)
    fed = tokens[:, :-1]  # the last generated token is never fed back
    mask = torch.cat([inputs["attention_mask"], torch.ones(3, 4, dtype=torch.long)], dim=1)
    assert cap.queries(0).shape[2] == fed.shape[1] == 15
    eager = eager_attentions(model, input_ids=fed, attention_mask=mask)
    real = mask.bool()
    for layer in (0, 1):
        for head in range(4):
            for b in range(3):
                ours = cap.pattern(layer, head, batch=b)[real[b]]
                assert (ours - eager[layer][b, head][real[b]]).abs().max() <= 1e-5


# ---- encoder-decoder models: one number per attention layer ----------------------------------

@pytest.mark.parametrize("name", ["bart", "t5", "whisper"])
def test_encoder_decoder_layers_are_numbered_encoder_first_then_self_and_cross(name):
    """Encoder and decoder both count ``layer_idx`` from 0, and a decoder layer's self- and
    cross-attention share one: capture numbers them 0.. in module order — the encoder's layers,
    then each decoder layer's self-attention and cross-attention — as
    ``attnkit.hf.attention_layer_names`` says; each pattern equals eager's."""
    from tests.hf.models import inputs, setups

    setup = setups()[name]
    if setup.refused:
        pytest.skip("T5 computes attention in its own code before transformers 5.15")
    model = setup.model("attnkit")
    names = attnkit.hf.attention_layer_names(model)
    assert list(names) == list(range(6))
    encoder = [n for n, path in names.items() if re.search(r"(^|\.)encoder\.", path)]
    assert encoder == [0, 1]
    self_attn, cross = [2, 4], [3, 5]
    assert all(re.search(r"(^|\.)decoder\.", names[n]) for n in self_attn + cross)
    assert all(any(w in names[n] for w in ("encoder_attn", "EncDecAttention")) for n in cross)
    batch = inputs(setup, "right")
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(**batch)
    assert cap.layers == list(range(6)) and cap.n_layers == 6
    assert cap.model_info.n_layers == 6
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    model.set_attn_implementation("attnkit")
    expected = dict(zip(encoder + self_attn + cross, [*out.encoder_attentions,
                                                      *out.decoder_attentions,
                                                      *out.cross_attentions], strict=True))
    rows = {n: batch["decoder_attention_mask"].bool() for n in self_attn + cross}
    enc_mask = batch.get("attention_mask")
    for n in encoder:
        rows[n] = (torch.ones(expected[n].shape[0], expected[n].shape[2], dtype=torch.bool)
                   if enc_mask is None else enc_mask.bool())
    for layer, weights in expected.items():
        for b in range(weights.shape[0]):
            for head in range(weights.shape[1]):
                real = rows[layer][b]
                ours = cap.pattern(layer, head, batch=b)[real]
                assert (ours - weights[b, head][real]).abs().max() <= 1e-6, (layer, b, head)
