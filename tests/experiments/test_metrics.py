"""The measurements, on a head whose pattern, queries and keys are written by hand."""

import math

import pytest
import torch

from attnkit.errors import AttnkitError
from attnkit.experiments.adjectives import (
    EXAMPLE,
    HeadView,
    Sentence,
    adjective_share,
    attention_by_class,
    format_by_class,
    label,
    qk_alignment,
)


def _view() -> HeadView:
    words = tuple(EXAMPLE.split()) + (".",)  # a fluffy blue creature roamed the verdant forest .
    sentence = Sentence(words, label(words))
    S = len(words)
    P = torch.zeros(1, S, S)
    for i in range(S):
        P[0, i, 0] = 1.0  # everyone looks at the first word ...
    P[0, 3] = 0.0
    P[0, 3, 1], P[0, 3, 2], P[0, 3, 3] = 0.5, 0.3, 0.2  # ... except creature: 0.8 on its adjectives
    P[0, 7] = 0.0
    P[0, 7, 6], P[0, 7, 2] = 0.6, 0.4  # forest: 0.6 on verdant, 0.4 on blue (not its own)
    Q = torch.zeros(1, S, 4)
    K = torch.zeros(1, S, 4)
    Q[0, 3, 0] = Q[0, 7, 0] = 2.0
    K[0, [1, 2, 6], 0] = 1.0  # adjective keys align with noun queries
    K[0, [0, 3, 4, 5, 7], 0] = -1.0
    return HeadView([sentence], P, Q, K, [S])


def test_adjective_share_counts_only_own_adjectives():
    share = adjective_share(_view())
    assert share.shares == pytest.approx([0.8, 0.6])
    assert share.mean == pytest.approx(0.7) and share.minimum == pytest.approx(0.6)
    assert share.by_count == pytest.approx({2: 0.8, 1: 0.6})
    assert "mean 0.700" in str(share)


def test_qk_alignment_splits_keys_by_what_they_are():
    a = qk_alignment(_view())
    scale = 1 / math.sqrt(4)
    # creature sees a(-), fluffy(+), blue(+), itself(-); forest sees all 8, own: verdant.
    assert a.own_adjectives == pytest.approx(2 * scale)
    assert a.other_adjectives == pytest.approx(2 * scale)  # fluffy, blue for forest
    assert a.other_keys == pytest.approx(-2 * scale)


def test_attention_by_class():
    table = attention_by_class(_view())
    assert table["determiner"]["determiner"] == pytest.approx(1.0)
    assert table["noun"]["adjective"] == pytest.approx((0.8 + 1.0) / 2)
    assert table["noun"]["itself"] == pytest.approx(0.1)
    assert table["verb"]["first"] == pytest.approx(1.0)
    assert "query ↓ / key →" in format_by_class(table)


def test_no_adjectives_is_a_clear_error():
    words = ("a", "cat", "saw", "the", "dog")
    sentence = Sentence(words, {1: (), 4: ()})
    view = HeadView([sentence], torch.ones(1, 5, 5) / 5, torch.zeros(1, 5, 2),
                    torch.zeros(1, 5, 2), [5])
    with pytest.raises(AttnkitError, match="no.*noun with an adjective|none of the sentences"):
        adjective_share(view)
