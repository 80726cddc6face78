"""The shipped induction model: two attnkit attention layers of one head each, and the heads are
what the data forces — a previous-token head in layer 0, an induction head in layer 1 — which
the detectors find on held-out sequences. Ground truth for ``find_heads``."""

import os
from importlib import resources

import pytest
import torch

import attnkit
from attnkit.core.multihead import MultiHeadAttention
from attnkit.experiments.induction import repeat_accuracy, repeating_batch
from attnkit.inspect.families import describe
from attnkit.inspect.relations import HELD_OUT_SEED


@pytest.fixture(scope="module")
def induction_model():
    return attnkit.load_model("induction")


def test_weights_ship_in_the_package(induction_model):
    data = resources.files("attnkit") / "data"
    with resources.as_file(data / "induction.safetensors") as path:
        assert os.path.getsize(path) < 1_000_000
    model, tokenizer = induction_model
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert len(layers) == 2 and all(m.causal and m.n_heads == 1 for m in layers)
    info = describe(model)
    assert (info.name, info.n_layers, info.n_heads, info.max_len) == ("induction", 2, 1, 128)
    assert tokenizer("ko ma ri")["input_ids"] == [tokenizer.ids[w] for w in ("ko", "ma", "ri")]


def test_it_predicts_repeats_and_nothing_else(induction_model):
    model, _ = induction_model
    accuracy = repeat_accuracy(model, n=200, seed=777)  # fresh sequences
    assert accuracy.repeat >= 0.95 and accuracy.first <= 0.1


def test_training_data_repeats_distinct_tokens():
    x, periods = repeating_batch(50, 128, 65, min_period=4, max_period=64,
                                 generator=torch.Generator().manual_seed(0))
    assert x.shape == (50, 128) and int(x.min()) >= 1 and int(x.max()) <= 64
    assert int(periods.min()) >= 4 and int(periods.max()) <= 64
    for row, period in zip(x, periods.tolist(), strict=True):
        assert torch.equal(row[period:], row[:-period])  # the segment repeats
        assert len(set(row[:period].tolist())) == period  # of distinct tokens


@pytest.mark.parametrize("relation, layer", [("induction", 1), ("previous-token", 0)])
def test_detectors_find_the_known_heads(relation, layer):
    """The issue's acceptance: on held-out sequences the right layer's head ranks first, >= 0.9."""
    result = attnkit.find_heads("induction", relation=relation)
    assert str(HELD_OUT_SEED) in result.inputs  # generated here, not the training data
    top_layer, top_head, score = result.ranking[0]
    assert (top_layer, top_head) == (layer, 0) and score >= 0.9, result.table(2)
    other = result.score(1 - layer, 0)
    assert other < 0.2 and score > 10 * result.baseline


def test_no_head_is_a_duplicate_token_head():
    """The detector does not see what is not there: each repeated token's attention on its
    earlier copy stays near the uniform baseline in both heads."""
    result = attnkit.find_heads("induction", relation="duplicate-token")
    assert max(s for _, _, s in result.ranking) < 0.1
