"""Streaming attention statistics against the same numbers computed from Hugging Face eager
``output_attentions``: a random Llama-style decoder (causal, grouped-query heads, padded on either
side) and the bundled MiniLM on a padded batch; tiles of any size; combining; errors."""

import math

import pytest
import torch

import attnkit
from attnkit.inspect import stats as stats_module
from attnkit.inspect.stats import AttentionStats, attention_stats, bins_for, distance_edges

transformers = pytest.importorskip("transformers")
import attnkit.hf  # noqa: E402,F401  (registers "attnkit")


def eager_stats(attentions: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """The peer: every statistic from full eager patterns ``(L, B, H, S, S)``, over the real
    queries ``real (B, S)`` only, written out the obvious way in float64."""
    att = attentions.double()
    n_layers, n_seq, n_heads, S, _ = att.shape
    i = torch.arange(S)
    d = (i[:, None] - i[None]).abs()  # (S, S) |query - key|
    n_bins = bins_for(S)
    bin_of = torch.tensor([0 if x == 0 else int(math.floor(math.log2(x))) + 1
                           for x in d.flatten().tolist()]).view(S, S)
    out = {name: torch.zeros(n_layers, n_heads, dtype=torch.float64)
           for name in ("entropy", "sink", "max_weight")}
    out["distance"] = torch.zeros(n_layers, n_heads, n_bins, dtype=torch.float64)
    out["received"] = torch.zeros(n_layers, n_heads, n_seq, S, dtype=torch.float64)
    count = 0
    for b in range(n_seq):
        a = att[:, b][:, :, real[b]]  # (L, H, R, S): real queries only
        out["entropy"] += -(a * torch.where(a > 0, a.log(), 0.0)).sum(-1).sum(-1)
        out["sink"] += a[..., 0].sum(-1)
        out["max_weight"] += a.amax(-1).sum(-1)
        for k in range(n_bins):
            out["distance"][..., k] += (a * (bin_of[real[b]] == k)).sum((-1, -2))
        out["received"][:, :, b] = a.sum(-2)
        count += int(real[b].sum())
    for name in ("entropy", "sink", "max_weight", "distance"):
        out[name] /= count
    return out


def check_against(ours: AttentionStats, peer: dict[str, torch.Tensor]) -> None:
    for name in ("entropy", "sink", "max_weight", "distance", "received"):
        got = getattr(ours, name)
        assert got.shape == peer[name].shape, name
        assert (got - peer[name]).abs().max() <= 1e-5, name


def llama():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=8,
                                      num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.LlamaModel(config).eval()
    model.set_attn_implementation("attnkit")
    return model


@pytest.fixture(scope="module")
def llama_run():
    """A causal grouped-query model on three sequences (one right-, one left-padded): the
    capture, and eager's attentions ``(L, B, H, S, S)`` with the real positions."""
    model = llama()
    ids = torch.randint(0, 64, (3, 37), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(3, 37, dtype=torch.long)
    mask[1, 30:] = 0
    mask[2, :5] = 0
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(input_ids=ids, attention_mask=mask)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    return cap, torch.stack(eager), mask.bool()


def test_llama_gqa_causal_statistics_equal_eager(llama_run):
    cap, eager, real = llama_run
    ours = attnkit.attention_stats(cap)
    assert ours.layers == [0, 1] and ours.heads == list(range(8))
    assert ours.queries.tolist() == [[float(real.sum())] * 8] * 2  # padding queries left out
    check_against(ours, eager_stats(eager, real))
    torch.testing.assert_close(ours.distance.sum(-1), torch.ones(2, 8, dtype=torch.float64),
                               rtol=0, atol=1e-5)  # float32 rows sum to 1 within ~1e-6


def test_small_tiles_give_the_same_numbers(llama_run, monkeypatch):
    """Tiles of a few rows (the causal key range cut per tile) sum to the whole-sequence tile."""
    cap, _, _ = llama_run
    whole = attention_stats(cap)
    monkeypatch.setattr(stats_module, "CELL_BUDGET", 8 * 37 * 3)  # 3 query rows a tile
    tiled = attention_stats(cap)
    for name in ("queries", "entropy_sum", "sink_sum", "max_weight_sum", "distance_sum",
                 "received"):
        torch.testing.assert_close(getattr(tiled, name), getattr(whole, name), atol=1e-6,
                                   rtol=1e-6)


def test_chosen_layers_and_heads(llama_run):
    cap, eager, real = llama_run
    some = attention_stats(cap, layers=[1], heads=[2, 7])
    peer = eager_stats(eager[1:, :, [2, 7]], real)
    assert some.entropy.shape == (1, 2)
    check_against(some, peer)


def test_minilm_padded_batch_equals_eager(minilm):
    model, tokenizer = minilm
    texts = ["a fluffy blue creature roamed the verdant forest",
             "the cat sat", "attention is all you need, they said, and then it was"]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(**inputs)
    ours = attention_stats(cap)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = torch.stack(model(**inputs, output_attentions=True).attentions)
    finally:
        model.set_attn_implementation("attnkit")
    real = inputs["attention_mask"].bool()
    assert not bool(real.all())  # the batch really is padded
    check_against(ours, eager_stats(eager, real))
    # bidirectional: distance counts keys on both sides
    assert ours.entropy.shape == (6, 12) and ours.distance.shape == (6, 12, bins_for(16))


def test_combined_statistics_equal_one_capture(llama_run):
    """Sums and counts add: two halves of a batch combine to the whole batch's statistics."""
    cap, _, _ = llama_run
    whole = attention_stats(cap)
    parts = stats_module.sequence_stats(cap)
    assert [p.sequences for p in parts] == [1, 1, 1]
    halves = AttentionStats.combine(parts[:2]) + parts[2]
    for name in ("entropy", "sink", "max_weight", "distance", "received"):
        torch.testing.assert_close(getattr(halves, name), getattr(whole, name), atol=1e-12,
                                   rtol=0)
    back = AttentionStats.from_dict(whole.to_dict())  # JSON keeps float64 exactly
    assert torch.equal(back.distance, whole.distance) and back.received is None
    wider = whole.with_bins(whole.n_bins + 2)
    assert torch.equal(wider.distance[..., :whole.n_bins], whole.distance)
    assert torch.equal((wider + whole).distance, 2 * wider.distance_sum / (2 * wider.queries)
                       [..., None])


def test_distance_edges_and_bins():
    assert distance_edges(5).tolist() == [0, 1, 2, 4, 8, 16]
    assert [bins_for(n) for n in (1, 2, 3, 4, 5, 9, 16384)] == [1, 2, 3, 3, 4, 5, 15]


def test_errors_name_the_problem(llama_run):
    cap, _, _ = llama_run
    with pytest.raises(attnkit.AttnkitError, match=r"layers \[5\]: give distinct captured "
                                                    r"layers \(captured: \[0, 1\]\)"):
        attention_stats(cap, layers=[5])
    with pytest.raises(attnkit.AttnkitError, match="heads must be a list"):
        attention_stats(cap, heads=3)
    with pytest.raises(TypeError, match="attention_stats takes a capture"):
        attention_stats(torch.zeros(3))
    with pytest.raises(attnkit.AttnkitError, match="cannot combine statistics of layers"):
        attention_stats(cap, layers=[0]) + attention_stats(cap, layers=[1])
    with pytest.raises(attnkit.AttnkitError, match="nothing to combine"):
        AttentionStats.combine([])
    with pytest.raises(attnkit.AttnkitError, match="not statistics written by"):
        AttentionStats.from_dict({"layers": [0]})


def test_a_loaded_capture_file_gives_the_same_statistics(llama_run, tmp_path):
    """A capture saved and loaded back (no model) gives the statistics of the live one."""
    cap, _, _ = llama_run
    loaded = attnkit.load_capture(cap.save(tmp_path / "run.safetensors"))
    assert type(loaded).__name__ == "CaptureFile"
    live, back = attention_stats(cap), attention_stats(loaded)
    for name in ("queries", "entropy_sum", "sink_sum", "max_weight_sum", "distance_sum",
                 "received"):
        assert torch.equal(getattr(back, name), getattr(live, name)), name
