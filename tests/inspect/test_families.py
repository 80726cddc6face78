"""Model families: one adapter per family reads a model's attention layers and describes it, for
capture and for load_model alike; other modules get a clear refusal."""

from __future__ import annotations

import subprocess
import sys

import pytest
from torch import nn

import attnkit
from attnkit.core.multihead import MultiHeadAttention
from attnkit.inspect.families import ModelInfo, describe, family_of

transformers = pytest.importorskip("transformers")
import attnkit.hf  # noqa: E402  (registers the transformers family)


class Tiny(nn.Module):
    """A causal model from attnkit's own modules, with the ``max_len`` describe reads."""

    max_len = 12

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.blocks = nn.ModuleList([MultiHeadAttention(16, n_heads=4) for _ in range(3)])

    def forward(self, input_ids):
        E = self.embed(input_ids)
        for block in self.blocks:
            E = block(E)
        return E


def test_attnkit_modules_are_layers_in_module_order():
    model = Tiny()
    assert describe(model) == ModelInfo(name="Tiny", n_layers=3, n_heads=4, max_len=12,
                                        causal=True, family="attnkit")
    layers = family_of(model).attention_layers(model)
    assert [layers[id(b)] for b in model.blocks] == [0, 1, 2]
    assert describe(model).to_dict()["family"] == "attnkit"


def test_hugging_face_layers_are_numbered_by_layer_idx():
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=40)
    model = transformers.LlamaModel(config)
    info = describe(model)
    assert (info.n_layers, info.n_heads, info.max_len, info.causal) == (3, 4, 40, True)
    assert info.family == "transformers"
    layers = family_of(model).attention_layers(model)
    assert sorted(layers.values()) == [0, 1, 2]
    assert layers[id(model.layers[2].self_attn)] == 2


def test_other_modules_are_refused_with_what_attnkit_can_do():
    with pytest.raises(attnkit.AttnkitError, match="Linear is neither a Hugging Face model nor "
                                                   "built from attnkit's MultiHeadAttention"):
        describe(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="attnkit works with a torch.nn.Module"):
        describe("minilm")
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, batch_first=True))
    with pytest.raises(attnkit.errors.UnsupportedModelError, match="Sequential is neither"):
        with attnkit.capture(model):
            pass


def test_a_transformers_model_before_attnkit_hf_is_imported_says_so():
    code = ("import transformers, attnkit\n"
            "from attnkit.inspect.families import describe\n"
            "config = transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,"
            " num_attention_heads=2, intermediate_size=8)\n"
            "try:\n"
            "    describe(transformers.BertModel(config))\n"
            "except attnkit.AttnkitError as err:\n"
            "    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "BertModel is a Hugging Face transformers model, but attnkit's transformers " \
           "support is not loaded: `import attnkit.hf`" in done.stdout
