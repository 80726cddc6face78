"""Running a model on a text: tokens and patterns equal to eager, and the texts refused up front
(empty, not valid Unicode, too long — a huge one before any tokenizer sees it)."""

from __future__ import annotations

import time

import pytest
import torch

import attnkit
from attnkit.inspect.running import check_text, count_tokens, encode, run_and_capture

pytest.importorskip("transformers")
NOTES = "a fluffy blue creature roamed the verdant forest"


def test_run_and_capture_tokens_and_patterns_match_eager(minilm):
    model, tokenizer = minilm
    cap = run_and_capture(model, tokenizer, NOTES, layers=[3], heads=[0, 7])
    assert cap.tokens == ["[CLS]", "a", "fluffy", "blue", "creature", "roam", "##ed", "the", "ve",
                          "##rdan", "##t", "forest", "[SEP]"]
    assert cap.layers == [3] and cap.heads == [0, 7] and cap.seq_len() == 13
    inputs, tokens = encode(model, tokenizer, NOTES)
    assert tokens == cap.tokens and inputs["input_ids"].shape == (1, 13)
    assert torch.equal(cap.input_ids, inputs["input_ids"])
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(**inputs, output_attentions=True).attentions[3][0]
    finally:
        model.set_attn_implementation("attnkit")
    both = cap.patterns(3)  # (2, 13, 13): heads 0 and 7 at once
    for slot, head in enumerate((0, 7)):
        # float32 on both sides: see tests/inspect/test_capture.py for the float64 1e-6 check
        assert (cap.pattern(3, head) - eager[head]).abs().max() <= 1e-5
        assert torch.equal(both[slot], cap.pattern(3, head))
        assert torch.allclose(cap.pattern(3, head).sum(-1), torch.ones(13), atol=1e-5)


def test_texts_refused_with_the_reason(minilm):
    model, tokenizer = minilm
    with pytest.raises(attnkit.AttnkitError, match="the text is empty"):
        encode(model, tokenizer, "  ")
    with pytest.raises(attnkit.AttnkitError, match=r"the text is \d+ tokens but BertModel reads "
                                                   r"at most 512"):
        encode(model, tokenizer, "word " * 600)
    with pytest.raises(TypeError, match="the text must be a str; got list"):
        encode(model, tokenizer, ["two", "texts"])
    with pytest.raises(attnkit.AttnkitError, match=r"not valid Unicode text \('\\ud800' at "
                                                   r"position 2, a lone surrogate\)"):
        encode(model, tokenizer, "a \ud800 b")


def test_a_huge_text_is_refused_before_it_is_tokenized(minilm):
    model, tokenizer = minilm
    huge = "word " * 1_000_000  # 5 MB
    start = time.perf_counter()
    with pytest.raises(attnkit.AttnkitError, match="the text is 5,000,000 characters, far over "
                                                   "the limit of 512 tokens"):
        encode(model, tokenizer, huge)
    with pytest.raises(attnkit.AttnkitError, match="far over the limit of 100 tokens"):
        count_tokens(tokenizer, huge, max_tokens=100)
    assert time.perf_counter() - start < 0.5
    assert check_text("fine") == "fine"
