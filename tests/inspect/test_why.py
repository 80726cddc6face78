"""``cap.why``: the notes' ``K_i · Q_j`` for one cell agrees with ``scores()``, ``pattern()`` and
``weights_at``; masked cells say why and weigh 0; rotary bands split the dot product along the
pairs of dims the model really rotates together."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.errors import AttnkitError, OutOfRangeError
from attnkit.inspect.captured import Captured, Record
from attnkit.inspect.rotary import Rotary, rotary_of
from attnkit.inspect.running import run_and_capture

transformers = pytest.importorskip("transformers")
import attnkit.hf  # noqa: E402,F401  (registers "attnkit")

NOTES = "a fluffy blue creature roamed the verdant forest"


@pytest.fixture(scope="module")
def cap(minilm):
    return run_and_capture(*minilm, NOTES)


@pytest.mark.parametrize("layer, head", [(0, 2), (2, 3), (5, 11)])
def test_why_agrees_with_scores_pattern_and_weights_at(cap, layer, head):
    n = cap.seq_len()
    scores, pattern = cap.scores(layer, head), cap.pattern(layer, head)  # (13, 13) each
    for query in range(n):
        for key in range(n):
            w = cap.why(layer, head, query, key)
            assert torch.equal(w.q, cap.queries(layer)[0, head, query].double())
            assert torch.equal(w.k, cap.keys(layer)[0, head, key].double())
            assert torch.equal(w.products, w.q * w.k)
            assert w.dot == pytest.approx(float(w.products.sum()), rel=1e-12)
            assert w.scale == pytest.approx(32 ** -0.5) and w.bias is None and not w.masked
            assert w.score == pytest.approx(w.dot * w.scale, rel=1e-12)
            assert w.score == pytest.approx(float(scores[query, key]), rel=1e-5, abs=1e-5)
            assert w.weight == pytest.approx(float(pattern[query, key]), rel=1e-5, abs=1e-7)
    # the exact float64 path of weights_at computes the very same number
    q, k = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
    at = cap.weights_at(layer, q, k, heads=[head])[0]
    mine = torch.tensor([cap.why(layer, head, int(i), int(j)).weight for i, j in zip(q, k)])
    torch.testing.assert_close(mine.float(), at, rtol=1e-6, atol=0)


def test_rank_and_competitors_follow_the_query_row(cap):
    row = cap.pattern(2, 3)[4]  # query "creature"
    w = cap.why(2, 3, 4, 2, top=5)  # key "fluffy"
    assert (w.query_token, w.key_token) == ("creature", "fluffy")
    order = torch.argsort(row, descending=True).tolist()
    assert w.rank == order.index(2) + 1 and w.n_visible == 13
    assert [c.key for c in w.competitors] == order[:5]
    assert [c.weight for c in w.competitors] == pytest.approx(row[order[:5]].tolist(), abs=1e-6)
    assert [c.token for c in w.competitors] == [cap.tokens[j] for j in order[:5]]
    best = cap.why(2, 3, 4, order[0])
    assert best.rank == 1 and best.weight == pytest.approx(w.competitors[0].weight)
    d = w.to_dict()
    assert d["q"] == w.q.tolist() and d["score"] == w.score and d["bands"] is None
    assert "q . k = " in str(w) and "rank" in str(w)


def tiny(kind: str, **extra):
    t = transformers
    common = dict(vocab_size=64, max_position_embeddings=64, num_hidden_layers=2, **extra)
    config, cls = {
        "llama": (lambda: t.LlamaConfig(hidden_size=32, intermediate_size=48,
                                        num_attention_heads=4, num_key_value_heads=2, **common),
                  t.LlamaModel),
        "cohere": (lambda: t.CohereConfig(hidden_size=32, intermediate_size=48,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                          **common), t.CohereModel),
        "gpt_neox": (lambda: t.GPTNeoXConfig(hidden_size=64, intermediate_size=48,
                                             num_attention_heads=4, **common), t.GPTNeoXModel),
        "phi": (lambda: t.PhiConfig(hidden_size=64, intermediate_size=48, num_attention_heads=4,
                                    **common), t.PhiModel),
    }[kind]
    torch.manual_seed(0)
    model = cls(config()).eval()
    model.set_attn_implementation("attnkit")
    return model


@pytest.mark.parametrize("kind, pairing, rotary_dim, head_dim", [
    ("llama", "half", 8, 8), ("cohere", "interleaved", 8, 8), ("gpt_neox", "half", 4, 16),
    ("phi", "half", 8, 16)])
def test_rotary_pairs_are_the_ones_the_model_rotates(kind, pairing, rotary_dim, head_dim):
    """In layer 0, one token repeated at every position has one query vector before rotation,
    so the length of each rotated pair is the same at every position — for the detected pairs,
    and not for the other pairing."""
    model = tiny(kind)
    rotary = rotary_of(model)
    assert (rotary.pairing, rotary.rotary_dim, rotary.head_dim) == (pairing, rotary_dim, head_dim)
    with torch.no_grad(), attnkit.capture(model, layers=[0]) as cap:
        model(input_ids=torch.full((1, 12), 7))
    assert cap.rotary == rotary
    q = cap.queries(0)[0, 1].double()  # (S, D) one head

    def spread(pairs):
        norms = torch.stack([torch.hypot(q[:, i], q[:, j]) for i, j in pairs], -1)  # (S, P)
        return float((norms - norms[0]).abs().max())

    other = Rotary("interleaved" if pairing == "half" else "half", rotary_dim, head_dim)
    assert spread(rotary.pairs()) < 1e-5 < 1e-2 < spread(other.pairs())
    # the bands split q . k exactly, and each pair turns at the model's own frequency
    w = cap.why(0, 1, 11, 3)
    assert len(w.bands) == rotary_dim // 2
    total = sum(b.product for b in w.bands) + w.unrotated
    assert total == pytest.approx(w.dot, rel=1e-12, abs=1e-12)
    inv_freq = dict(model.named_buffers())[next(n for n, _ in model.named_buffers()
                                                 if n.endswith("inv_freq"))]
    assert [b.frequency for b in w.bands] == pytest.approx(inv_freq.tolist())
    assert w.to_dict()["rotary"].startswith(f"rotary position embedding, {rotary_dim // 2} pairs")


def test_bert_and_the_toy_model_have_no_rotary(cap):
    assert cap.rotary is None and cap.why(0, 0, 1, 2).bands is None
    from attnkit.models.toy import load_toy

    model, _ = load_toy()
    assert rotary_of(model) is None


def test_masked_cells_say_why_and_weigh_nothing():
    model = tiny("llama")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(input_ids=ids, attention_mask=mask)
    later = cap.why(1, 2, 4, 6)
    assert later.masked and later.weight == 0.0 and later.score == float("-inf")
    assert later.mask_reason.startswith("causal") and later.rank is None
    assert later.to_dict()["score"] is None and later.n_visible == 5
    padding = cap.why(1, 2, 5, 1, batch=1)
    assert padding.masked and padding.mask_reason.startswith("mask") and padding.weight == 0.0
    lonely = cap.why(1, 2, 0, 0, batch=1)  # a padding query sees no key at all
    assert lonely.masked and lonely.n_visible == 0 and lonely.competitors == ()
    seen = cap.why(1, 2, 6, 4, batch=1)
    assert not seen.masked and seen.n_visible == 4
    assert seen.weight == pytest.approx(float(cap.pattern(1, 2, batch=1)[6, 4]), abs=1e-6)
    # grouped heads: query head 3 reads key head 1
    assert torch.equal(cap.why(0, 3, 5, 2).k, cap.keys(0)[0, 1, 2].double())


def test_bias_is_stated_and_added():
    b, h, s, d = 1, 2, 6, 4
    q, k = torch.randn(b, h, s, d), torch.randn(b, h, s, d)
    bias = torch.randn(1, h, s, s)
    options = dict(causal=True, window=None, bias=bias, mask=None, scale=0.4)
    _, lse = attnkit.attention(q, k, torch.randn(b, h, s, 3), return_lse=True, **options)
    cap = Captured("handmade")
    cap._records[0] = Record(q, k, lse, options, (0, 1), 2)
    w = cap.why(0, 1, 4, 2)
    assert w.bias == pytest.approx(float(bias[0, 1, 4, 2]))
    assert w.score == pytest.approx(w.dot * 0.4 + w.bias, rel=1e-12)
    assert w.score == pytest.approx(float(cap.scores(0, 1)[4, 2]), rel=1e-5)
    assert w.weight == pytest.approx(float(cap.pattern(0, 1)[4, 2]), rel=1e-5)


@pytest.mark.parametrize("args, error, message", [
    ((0, 0, 13, 0), OutOfRangeError, "query 13 is out of range: layer 0 has 13 query positions"),
    ((0, 0, 0, -1), OutOfRangeError, "key -1 is out of range"),
    ((7, 0, 0, 0), OutOfRangeError, "layer 7 was not captured; captured layers: [0, 1, 2, 3"),
    ((0, 12, 0, 0), OutOfRangeError, "head 12 of layer 0 was not captured"),
])
def test_bad_cells_are_clear_errors(cap, args, error, message):
    with pytest.raises(error) as err:
        cap.why(*args)
    assert message in str(err.value)
    with pytest.raises(AttnkitError, match="top must be a positive int; got 0"):
        cap.why(0, 0, 0, 0, top=0)


def test_a_rotary_description_that_cannot_be_is_refused_clearly():
    with pytest.raises(AttnkitError, match=r"pairing must be one of .*got 'diagonal'"):
        Rotary("diagonal", 8, 8)
    with pytest.raises(AttnkitError, match=r"rotary_dim must be even and in 1\.\.8; got 7"):
        Rotary("half", 7, 8)
    with pytest.raises(AttnkitError, match=r"3 frequencies for 4 pairs; give one per pair"):
        Rotary("half", 8, 8, frequencies=(1.0, 0.5, 0.25))
