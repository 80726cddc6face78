"""The shipped toy model: built from attnkit's attention, small, and it learned what the notes
imagine — nouns attend to their own adjectives in sentences it never saw."""

import os
from importlib import resources

import pytest
import torch

import attnkit
from attnkit.core.multihead import MultiHeadAttention
from attnkit.experiments.adjectives import (
    EXAMPLE,
    generate,
    head_view,
    load_toy,
    measure,
)


@pytest.fixture(scope="module")
def toy():
    return load_toy()


def test_weights_ship_in_the_package_under_one_megabyte():
    data = resources.files("attnkit") / "data"
    with resources.as_file(data / "toy_adjectives.safetensors") as path:
        assert os.path.getsize(path) < 1_000_000
    assert (data / "toy_adjectives.json").is_file()


def test_built_from_attnkit_multihead_attention(toy):
    model, _ = toy
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert len(layers) == 1 and layers[0].causal and layers[0].d_key < model.config.d_model


def test_nouns_attend_to_their_own_adjectives_in_held_out_sentences(toy):
    # Fresh sentences (a seed used nowhere else), every adjective–noun pair unseen in training.
    result = measure(*toy, n=400, seed=8675309)
    assert result.share.mean >= 0.9, str(result)


def test_noun_queries_align_with_adjective_keys(toy):
    a = measure(*toy, n=200, seed=99991).alignment
    assert a.own_adjectives > a.other_keys + 1.0
    assert a.own_adjectives > a.other_adjectives + 1.0


def test_capture_gives_the_same_pattern_as_the_plain_head(toy):
    # capture recomputes the pattern from q, k and the kernel's lse; head_view uses the notes'
    # AttentionHead.pattern (plain softmax of the scores).
    model, tokenizer = toy
    sentence = generate(1, seed=11, held_out=True)[0]
    enc = tokenizer(sentence.text, return_tensors="pt")
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(**enc)
    plain = head_view(model, tokenizer, [sentence]).pattern[0]  # (S, S)
    torch.testing.assert_close(cap.pattern(0, 0), plain, atol=1e-5, rtol=1e-5)


def test_padded_batch_matches_one_at_a_time(toy):
    model, tokenizer = toy
    texts = ["a cat roamed the forest .", EXAMPLE]
    batch = model(**tokenizer(texts, return_tensors="pt")).logits  # (2, S, vocab)
    for i, text in enumerate(texts):
        alone = model(**tokenizer(text, return_tensors="pt")).logits[0]  # (S_i, vocab)
        torch.testing.assert_close(batch[i, : alone.shape[0]], alone)


def test_predicts_the_verb_from_the_adjectives(toy):
    model, tokenizer = toy
    for phrase, verbs in [("a fluffy blue creature", {"roamed", "wandered", "drifted"}),
                          ("a jagged crimson dragon", {"stormed", "attacked", "crushed"}),
                          ("a fluffy angry wolf", {"crossed", "watched", "guarded"})]:
        logits = model(**tokenizer(phrase, return_tensors="pt")).logits[0, -1]
        assert tokenizer.convert_ids_to_tokens([int(logits.argmax())])[0] in verbs


def test_explain_shows_the_notes_example(toy):
    exp = attnkit.explain(EXAMPLE, model="toy")
    words = EXAMPLE.split()
    assert exp.tokens == words
    P = exp.pattern  # (8, 8) [query, key]
    creature, forest = words.index("creature"), words.index("forest")
    assert P[creature, [1, 2]].sum() > 0.9 and min(P[creature, 1], P[creature, 2]) > 0.2
    assert P[forest, words.index("verdant")] > 0.9


def test_load_model_toy_and_run_and_capture():
    from attnkit.inspect.families import describe
    from attnkit.inspect.running import run_and_capture
    from attnkit.models import load_model

    model, tokenizer = load_model("toy")
    info = describe(model)
    assert (info.n_layers, info.n_heads, info.causal) == (1, 1, True)
    cap = run_and_capture(model, tokenizer, EXAMPLE)
    assert cap.tokens == EXAMPLE.split() and cap.pattern(0, 0).shape == (8, 8)


def test_unknown_words_name_them():
    with pytest.raises(ValueError, match="'purple', 'unicorn'"):
        attnkit.explain("a purple unicorn roamed the forest", model="toy")


def test_too_long_and_missing_weights_are_clear_errors(toy, tmp_path):
    model, tokenizer = toy
    with pytest.raises(ValueError, match="at most 16 tokens"):
        model(input_ids=torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="attnkit train-toy --out"):
        load_toy(tmp_path / "nothing.safetensors")
