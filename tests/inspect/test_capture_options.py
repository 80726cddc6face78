"""Captures of models whose attention has more than scores and masks: Gemma 2 soft-caps its
logits, GPT-OSS adds a sink logit per head. Every reading of a capture (patterns of one head or
of chosen heads, weights at listed cells, scores, why, statistics, a saved and loaded file)
must equal eager ``output_attentions`` — which it did not while the capture dropped ``softcap``
(patterns of soft-capped heads were silently wrong)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import attnkit  # noqa: E402
import attnkit.hf  # noqa: E402,F401  (registers "attnkit")
from tests.hf.models import inputs, setups  # noqa: E402
from tests.inspect.test_stats import check_against, eager_stats  # noqa: E402

TOL = 1e-5  # float32


@pytest.fixture(scope="module", params=["gemma2", "gpt_oss"])
def run(request):
    """``(cap, capture of heads 1 and 3 only, eager attentions (L, B, H, S, S), real (B, S))``
    on a left-padded batch."""
    setup = setups()[request.param]
    model = setup.model("attnkit")
    batch = inputs(setup, "left")
    with torch.no_grad():
        with attnkit.capture(model) as cap:
            model(**batch)
        with attnkit.capture(model, heads=[3, 1]) as some:
            model(**batch)
    eager_model = setup.model("eager")
    with torch.no_grad():
        eager = eager_model(**batch, output_attentions=True).attentions
    return cap, some, torch.stack(eager), batch["attention_mask"].bool()


def test_the_capture_keeps_the_models_softcap_or_sinks(run):
    cap, some, _, _ = run
    options = cap.options(0)
    if options.get("softcap") is not None:
        assert options["softcap"] == 1.0
    else:
        assert options["sinks"].shape == (4,)
        assert some.heads == [1, 3]
        assert torch.equal(some.options(0)["sinks"], options["sinks"][[1, 3]])


def test_patterns_equal_eager(run):
    cap, some, eager, real = run
    for layer in cap.layers:
        for b in range(2):
            rows = real[b]
            for head in range(4):
                ours = cap.pattern(layer, head, batch=b)[rows]
                assert (ours - eager[layer, b, head][rows]).abs().max() <= TOL
            chosen = some.patterns(layer, batch=b)  # heads 1 and 3
            assert (chosen[:, rows] - eager[layer, b, [1, 3]][:, rows]).abs().max() <= TOL


def test_weights_at_scores_and_why_agree_with_the_pattern(run):
    cap, _, eager, real = run
    layer, b, head = 1, 1, 2
    n = real.shape[1]
    query = torch.arange(n).repeat_interleave(n)
    key = torch.arange(n).repeat(n)
    weights = cap.weights_at(layer, query, key, batch=b, heads=[head])[0].view(n, n)
    rows = real[b]
    assert (weights[rows] - eager[layer, b, head][rows]).abs().max() <= TOL
    scores = cap.scores(layer, head, batch=b)
    lse = cap.lse(layer)[b, head]
    # pattern = exp(score - lse) on every visible cell, soft-capped or not, sink or not
    expected = torch.exp(scores - lse[:, None]).nan_to_num(0.0)
    assert (expected[rows] - eager[layer, b, head][rows]).abs().max() <= TOL
    q = int(torch.nonzero(rows)[-1])
    why = cap.why(layer, head, q, q, batch=b)
    assert abs(why.weight - float(eager[layer, b, head, q, q])) <= TOL
    assert abs(why.score - float(scores[q, q])) <= TOL
    if cap.options(layer).get("softcap") is not None:
        assert why.softcap == 1.0 and abs(why.score) < 1.0  # capped at 1
        assert "soft-capped" in why.text() and why.to_dict()["softcap"] == 1.0


def test_statistics_equal_eager(run):
    cap, _, eager, real = run
    check_against(attnkit.attention_stats(cap), eager_stats(eager, real))


def test_a_saved_capture_reads_back_the_same(run, tmp_path):
    cap, some, _, _ = run
    for c, name in ((cap, "all"), (some, "some")):
        path = tmp_path / f"{name}.safetensors"
        c.save(path)
        loaded = attnkit.load_capture(path)
        assert loaded.options(1).get("softcap") == c.options(1).get("softcap")
        for layer in c.layers:
            assert torch.equal(loaded.patterns(layer, batch=1), c.patterns(layer, batch=1))
