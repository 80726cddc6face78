"""The toy tokenizer: called like Hugging Face's; unknown words are a clear error."""

import pytest
import torch

from attnkit.experiments.adjectives import EXAMPLE, ToyTokenizer
from attnkit.experiments.grammar import VOCAB


def test_encodes_like_hugging_face():
    tok = ToyTokenizer(VOCAB)
    enc = tok(EXAMPLE, return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}
    assert enc["input_ids"].shape == (1, 8) and enc["attention_mask"].dtype == torch.long
    assert tok.convert_ids_to_tokens(enc["input_ids"][0]) == EXAMPLE.split()
    assert tok("A Fluffy creature.")["input_ids"] == tok.convert_tokens_to_ids(
        ["a", "fluffy", "creature", "."])


def test_pads_a_batch_on_the_right():
    tok = ToyTokenizer(VOCAB)
    enc = tok(["a cat", "the tiny blue bird"], return_tensors="pt")
    assert enc["input_ids"].shape == (2, 4)
    assert enc["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert enc["input_ids"][0, 2:].tolist() == [tok.pad_token_id] * 2


def test_offsets():
    tok = ToyTokenizer(VOCAB)
    text = "a fluffy creature!"
    enc = tok(text, return_offsets_mapping=True)
    assert [text[a:b] for a, b in enc["offset_mapping"]] == ["a", "fluffy", "creature", "!"]


def test_unknown_words_are_listed():
    with pytest.raises(ValueError, match=r"does not know the word\(s\) 'purple', 'unicorn'") as e:
        ToyTokenizer(VOCAB)("a purple unicorn roamed the forest")
    assert "fluffy" in str(e.value)  # and it says which words it does know


def test_empty_text_and_bad_tensor_type():
    with pytest.raises(ValueError, match="empty"):
        ToyTokenizer(VOCAB)("   ")
    with pytest.raises(ValueError, match="return_tensors='np' is not supported"):
        ToyTokenizer(VOCAB)("a cat", return_tensors="np")


def test_truncation_keeps_the_first_tokens():
    from attnkit.errors import AttnkitError
    from attnkit.models.induction import VOCAB as SYLLABLE_VOCAB

    tok = ToyTokenizer(SYLLABLE_VOCAB)
    assert tok("ko ma ri tu", truncation=True, max_length=2)["input_ids"] == [
        tok.ids["ko"], tok.ids["ma"]]
    batch = tok(["ko ma ri", "tu"], return_tensors="pt", truncation=True, max_length=2)
    assert batch["input_ids"].shape == (2, 2) and batch["attention_mask"].tolist() == [[1, 1],
                                                                                       [1, 0]]
    with pytest.raises(AttnkitError, match="truncation=True needs max_length"):
        tok("ko", truncation=True)
