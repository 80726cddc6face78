"""The support check tells the truth, at load time: T5, BART, Whisper and StableLM (which run on
attnkit, see test_peers) are accepted; Bloom and Falcon, whose attention is their own code, are
refused at every door — ``from_pretrained``/constructor, ``load_model``, ``use_attnkit``,
``set_attn_implementation``, ``capture`` — naming the class and the eager fix; a model that uses
the mask as a tensor (DeepSeek-V3.2) is refused although transformers would switch it."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402
import attnkit.hf  # noqa: E402
from attnkit.errors import UnsupportedModelError  # noqa: E402
from attnkit.hf import CompactMask, check_supported, is_attnkit, use_attnkit  # noqa: E402
from tests.hf.models import setups, token_batch  # noqa: E402

FIX = r"attn_implementation='eager'.*output_attentions=True"


@pytest.mark.parametrize("name", ["t5", "bart", "whisper", "stablelm"])
def test_models_that_dispatch_every_layer_are_accepted(name):
    setup = setups()[name]
    if setup.refused:  # T5 before transformers 5.15: its attention is its own code
        with pytest.raises(UnsupportedModelError, match=r"^T5ForConditionalGeneration does not "
                                                        r"compute attention through transformers'"
                                                        rf" AttentionInterface.*{FIX}"):
            check_supported(setup.model("eager"))
        return
    model = setup.model("eager")
    check_supported(model)
    assert use_attnkit(model) is model and is_attnkit(model)
    layers = 2 if setup.kind == "decoder" else 6  # encoder-decoder: 2 + 2 + 2 cross
    assert len(attnkit.hf.HuggingFaceFamily().modules(model)) == layers


def test_supports_attention_backend_is_not_what_decides():
    """transformers' own flag says neither: BART leaves it False and runs; DeepSeek-V3.2 sets
    it and cannot (below)."""
    assert not transformers.BartForConditionalGeneration._supports_attention_backend
    check_supported(setups()["bart"].model("eager"))


def test_use_attnkit_says_so_when_transformers_does_not_switch(monkeypatch):
    """transformers decides from a model's source whether it may switch it after loading, and
    only warns when not (ModernBERT in transformers 5.4): use_attnkit does not stay silent."""
    model = setups()["llama"].model("eager")
    monkeypatch.setattr(type(model), "_can_set_attn_implementation", classmethod(lambda c: False))
    with pytest.raises(UnsupportedModelError, match=r"^transformers did not switch "
                                                    r"LlamaForCausalLM to 'attnkit'.*"
                                                    r"from_pretrained\(\.\.\., attn_implementat"
                                                    r"ion='attnkit'\) instead"):
        use_attnkit(model)
    assert not is_attnkit(model)


@pytest.mark.parametrize("name, attention", [("bloom", "BloomAttention"),
                                             ("falcon", "FalconAttention")])
def test_models_with_their_own_attention_are_refused_at_every_door(name, attention, tmp_path):
    setup = setups()[name]
    cls = setup.cls.__name__
    why = (rf"its {attention} computes attention itself instead of calling transformers' "
           rf"attention-function registry, yet takes an attention_mask.*{FIX}")
    eager = setup.model("eager")
    eager.save_pretrained(tmp_path)

    with pytest.raises(UnsupportedModelError, match=rf"^{cls} cannot run on attnkit: {why}"):
        setup.cls.from_pretrained(tmp_path, attn_implementation="attnkit")
    base = type(eager.base_model).__name__  # load_model reads a directory with AutoModel
    with pytest.raises(UnsupportedModelError, match=rf"^{base} cannot run on attnkit: {why}"):
        attnkit.load_model(tmp_path)
    with pytest.raises(UnsupportedModelError, match=rf"^{cls} cannot run on attnkit: {why}"):
        use_attnkit(eager)
    assert not is_attnkit(eager)
    eager.set_attn_implementation("attnkit")  # transformers itself declines (its own source
    assert not is_attnkit(eager)  # check finds no registry lookup) and keeps the model as is
    with pytest.raises(UnsupportedModelError, match=rf"^{cls} cannot run on attnkit: {why}"):
        with attnkit.capture(eager):
            pass
    with torch.no_grad():  # and eager still runs
        assert torch.isfinite(eager(input_ids=token_batch("left")[0]).logits).all()


def _deepseek_v32():
    if not hasattr(transformers, "DeepseekV32Config"):
        pytest.skip("this transformers has no DeepSeek-V3.2")
    config = transformers.DeepseekV32Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=2,
        num_experts_per_tok=1, n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=8,
        q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, index_n_heads=2,
        index_head_dim=8, index_topk=4, max_position_embeddings=64, n_group=1, topk_group=1)
    torch.manual_seed(0)
    return transformers.DeepseekV32ForCausalLM(config).eval()


def test_a_model_that_uses_the_mask_as_a_tensor_is_refused_where_transformers_would_switch():
    """DeepSeek-V3.2 calls the registry, but first slices and fills the mask for its sparse
    indexer: transformers would switch it; the hook refuses, naming the line. Forced past the
    check, the CompactMask itself refuses the first tensor use, saying what to do."""
    model = _deepseek_v32()
    assert type(model)._supports_attention_backend
    why = (r"^DeepseekV32ForCausalLM cannot run on attnkit: its DeepseekV32Attention uses the "
           r"attention mask as a tensor \(`attention_mask\[:, 0, :, :\],`\) before calling the "
           rf"attention function; attnkit hands it a compact mask\. Load it with {FIX}")
    with pytest.raises(UnsupportedModelError, match=why):
        model.set_attn_implementation("attnkit")
    assert not is_attnkit(model)
    with pytest.raises(UnsupportedModelError, match=why):
        check_supported(model)
    model.config._attn_implementation_internal = "attnkit"  # forced, as no user should
    with pytest.raises(UnsupportedModelError, match=r"used attnkit's CompactMask as a tensor "
                                                    r"\(indexing\).*attn_implementation='eager'"):
        with torch.no_grad():
            model(input_ids=token_batch("left", n=1)[0])


def test_compact_mask_refuses_every_tensor_use_by_name():
    mask = CompactMask(q_length=3, kv_length=3, causal=True)
    scores = torch.zeros(1, 1, 3, 3)
    uses = {"torch add": lambda: scores + mask, "arithmetic": lambda: mask * scores,
            "indexing": lambda: mask[..., :2],
            "torch where": lambda: torch.where(mask, scores, 0.0),
            "torch masked_fill": lambda: scores.masked_fill(mask, 0.0), "~": lambda: ~mask}
    for name, use in uses.items():
        with pytest.raises(UnsupportedModelError, match=rf"as a tensor \({name}\): only "
                                                        r"attnkit's attention function can read"):
            use()
    assert mask.shape == (1, 1, 3, 3) and mask.ndim == 4  # what transformers reads is answered
