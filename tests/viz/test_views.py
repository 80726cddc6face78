"""Views that read at any length: words from word pieces, word pooling (rows mean, columns sum),
the all-heads overview (exact, or from sampled rows on long inputs), lining up two token lists and
their difference."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.inspect.captured import Captured, Record
from attnkit.inspect.patterns import from_capture, pooled
from attnkit.viz.views import (
    align,
    difference_head,
    overview,
    pool_words,
    word_head,
    word_spans,
    word_tokens,
)


@pytest.mark.parametrize("tokens, words", [
    (["[CLS]", "a", "fluffy", "roam", "##ed", "the", "ve", "##rdan", "##t", "forest", "[SEP]"],
     ["[CLS]", "a", "fluffy", "roamed", "the", "verdant", "forest", "[SEP]"]),
    (["<|endoftext|>", "a", "Ġfluffy", "Ġro", "amed", ",", "Ġthe", "Ġverd", "ant"],
     ["<|endoftext|>", "a", "fluffy", "roamed,", "the", "verdant"]),
    (["<s>", "▁a", "▁fl", "uffy", "▁creature", "</s>"], ["<s>", "a", "fluffy", "creature",
                                                        "</s>"]),
    (["a", "fluffy", "blue", "creature", "."], ["a", "fluffy", "blue", "creature", "."]),
])
def test_words_from_pieces(tokens, words):
    spans = word_spans(tokens)
    assert spans[0][0] == 0 and spans[-1][1] == len(tokens)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert word_tokens(tokens, spans) == words


def test_the_tokenizers_own_special_tokens_win():
    assert word_spans(["<b>", "x", "##y"], special=set()) == [(0, 1), (1, 3)]
    assert word_spans(["[X]", "##y"], special={"[X]"}) == [(0, 1), (1, 2)]


def test_pool_words_is_a_mean_over_query_pieces_and_a_sum_over_key_pieces():
    n = 7
    p = torch.softmax(torch.randn(3, n, n), dim=-1)  # (H, S, S)
    spans = [(0, 1), (1, 4), (4, 5), (5, 7)]
    w = pool_words(p, spans)  # (H, 4, 4)
    assert w.shape == (3, 4, 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4))
    want = p[:, 1:4, 5:7].sum(-1).mean(-1)  # word 1 (pieces 1..3) reading word 3 (pieces 5, 6)
    torch.testing.assert_close(w[:, 1, 3], want)
    with pytest.raises(attnkit.AttnkitError, match="word spans must cover the 7 tokens"):
        pool_words(p, [(0, 3)])


def _capture(n: int, heads: int = 3, causal: bool = True, seed: int = 0) -> Captured:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, 8, generator=g) * 2
    k = torch.randn(1, heads, n, 8, generator=g) * 2
    _, lse = attnkit.attention(q, k, torch.randn(1, heads, n, 2, generator=g), causal=causal,
                               return_lse=True)
    cap = Captured("made")
    cap._records[0] = Record(q, k, lse, {"causal": causal, "scale": None}, tuple(range(heads)),
                             heads)
    return cap


def test_word_head_tiles_equal_pooling_the_whole_pattern():
    cap = _capture(40)
    spans = [(0, 1)] + [(i, min(i + 3, 40)) for i in range(1, 40, 3)]
    words = word_head(cap, 0, 1, spans)
    whole = pool_words(cap.pattern(0, 1), spans)  # (W, W)
    torch.testing.assert_close(words.tile(slice(None), slice(None)), whole)
    torch.testing.assert_close(words.tile(slice(3, 9), slice(2, 7)), whole[3:9, 2:7])
    view = pooled(words, size=5)  # blocks of words pooled further
    assert view.values.shape == (5, 5)


def test_overview_is_exact_for_short_inputs_and_samples_rows_for_long_ones():
    cap = _capture(300)
    short = overview(cap, 0, size=16)
    assert short["sampled_rows"] is None and short["values"].shape == (3, 16, 16)
    for h in range(3):
        torch.testing.assert_close(short["values"][h],
                                   pooled(from_capture(cap, 0, h), size=16).values)
    sampled = overview(cap, 0, size=16, exact_up_to=100, rows_per_block=2)
    block = sampled["block"]
    assert block == 19 and sampled["sampled_rows"] == 2 * 16
    # by hand: in each block of 19 rows, its first and last row; max over them and over keys
    full = cap.pattern(0, 2)  # (300, 300)
    for b in (0, 7, 15):
        lo, hi = b * block, min((b + 1) * block, 300)
        rows = full[[lo, hi - 1]]  # (2, 300)
        for c in (0, 7, 15):
            want = rows[:, c * block:min((c + 1) * block, 300)].max()
            assert sampled["values"][2, b, c] == want
    assert (sampled["values"] <= short["values"]).all()  # a max over fewer rows


def test_align_and_the_difference_where_tokens_line_up():
    a = ["[CLS]", "a", "fluffy", "blue", "creature", "[SEP]"]
    b = ["[CLS]", "a", "fluffy", "red", "creature", "[SEP]"]
    pairs = align(a, b)
    assert pairs == [(0, 0), (1, 1), (2, 2), (4, 4), (5, 5)]
    assert align(a, a) == [(i, i) for i in range(6)]
    assert align(a, ["x", "a", "creature"]) == [(1, 1), (4, 2)]
    cap_a, cap_b = _capture(6, seed=1), _capture(6, seed=2)
    diff = difference_head(cap_a, cap_b, 0, 1, pairs).tile(slice(None), slice(None))  # (5, 5)
    idx = torch.tensor([p[0] for p in pairs])
    want = cap_a.pattern(0, 1)[idx][:, idx] - cap_b.pattern(0, 1)[idx][:, idx]
    torch.testing.assert_close(diff, want)
    with pytest.raises(attnkit.AttnkitError, match="no tokens of the two texts line up"):
        difference_head(cap_a, cap_b, 0, 1, [])
