"""``attnkit.find_heads`` on the bundled MiniLM with the token relations: the previous-token head
it has (layer 0 head 2), and the baselines and inputs each ranking reports."""

import pytest

import attnkit
from attnkit.inspect.heads import UNIFORM


def test_minilm_has_a_previous_token_head(minilm):
    model, tokenizer = minilm
    result = attnkit.find_heads(model, "previous-token", tokenizer=tokenizer)
    assert result.best == (0, 2) and result.ranking[0][2] >= 0.9
    assert result.inputs.endswith("shipped English sentences")
    assert list(result.baselines)[0] == UNIFORM and result.baseline < 0.2
    # the same head at another length, on random word pieces: first again, though less sharp
    # off real text (0.71 against a uniform baseline of 0.003)
    longer = attnkit.find_heads(model, "previous-token", tokenizer=tokenizer, length=300)
    assert longer.best == (0, 2) and longer.ranking[0][2] > 100 * longer.baseline
    assert "300 tokens (random tokens with 2 special tokens" in longer.inputs


def test_an_unknown_relation_lists_the_known_ones():
    with pytest.raises(attnkit.AttnkitError, match="unknown relation 'verbs'; known relations: "
                                                   ".*'previous-token'.*'induction'"):
        attnkit.find_heads("induction", relation="verbs")
