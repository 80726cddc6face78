"""Relations on token ids: the rules on hand-made sequences, scores against Hugging Face eager
attention on a random grouped-query decoder, inputs at any length, relations of one's own, and
errors that say what to do."""

import pytest
import torch

import attnkit
from attnkit.inspect.heads import RELATIONS, UNIFORM, rank_heads
from attnkit.inspect.relations import (
    TokenRelation,
    duplicate_token,
    induction,
    previous_token,
    relation_from_function,
    sink,
)
from attnkit.models.induction import VOCAB
from attnkit.models.tokenizer import ToyTokenizer

transformers = pytest.importorskip("transformers")
import attnkit.hf  # noqa: E402,F401  (registers "attnkit")


def pairs(targets):
    return sorted(zip(targets.query.tolist(), targets.key.tolist(), strict=True))


def test_the_rules_on_a_hand_made_sequence():
    ids = torch.tensor([7, 3, 9, 7, 3, 9, 3])  # positions 0..6
    assert pairs(previous_token().targets(ids)) == [(q, q - 1) for q in range(1, 7)]
    assert pairs(sink().targets(ids)) == [(q, 0) for q in range(1, 7)]
    assert pairs(duplicate_token().targets(ids)) == [(3, 0), (4, 1), (5, 2), (6, 1), (6, 4)]
    # the token after each earlier copy: 7@3 -> 1; 3@4 -> 2; 9@5 -> 3; 3@6 -> 2 and 5
    assert pairs(induction().targets(ids)) == [(3, 1), (4, 2), (5, 3), (6, 2), (6, 5)]
    t = induction().targets(ids)
    assert t.n_items == 4 and t.weight.tolist() == [1.0] * 5  # one item per query, total weight
    # special tokens are never queries (here id 7 plays [CLS])
    assert pairs(previous_token().targets(ids, special={7})) == [(1, 0), (2, 1), (4, 3), (5, 4),
                                                                 (6, 5)]


def test_registered_names():
    import attnkit.detectors  # noqa: F401  (imports every module that registers one)

    for name in ("previous-token", "duplicate-token", "induction", "sink", "adjectives"):
        assert name in RELATIONS


def llama():
    config = transformers.LlamaConfig(vocab_size=len(VOCAB), hidden_size=32,
                                      intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256)
    torch.manual_seed(0)
    model = transformers.LlamaModel(config).eval()
    model.set_attn_implementation("attnkit")
    return model


def eager_attentions(model, ids):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return torch.stack(model(input_ids=ids[None], output_attentions=True).attentions)[:, 0]
    finally:
        model.set_attn_implementation("attnkit")


def test_induction_scores_equal_eager_on_repeated_random_tokens():
    model, tokenizer = llama(), ToyTokenizer(VOCAB)
    relation = induction(n=3).with_length(41)  # 20 tokens twice, one random token before
    result = rank_heads(model, tokenizer, relation)
    assert result.inputs == ("3 generated sequences of 41 tokens (20 random tokens repeated "
                             "twice; seed 1000003)")
    examples = relation.examples(model, tokenizer)
    expected = torch.zeros(2, 4, dtype=torch.float64)
    for example in examples:
        ids = example.inputs["input_ids"][0]
        assert ids[0] != 0 and torch.equal(ids[1:21], ids[21:])  # (pad id 0 never drawn)
        assert len(set(ids[1:21].tolist())) == 20  # distinct: each earlier copy is unique
        att = eager_attentions(model, ids).double()  # (L, H, S, S)
        q = torch.arange(21, 41)  # the second copy: token q first appeared at q - 20
        expected += att[:, :, q, q - 19].mean(-1)
    torch.testing.assert_close(result.scores, expected / 3, atol=1e-6, rtol=0)
    # uniform over the keys each query sees: query q sees q + 1 keys, one of which counts
    assert result.baselines[UNIFORM] == pytest.approx(float((1 / (q + 1.0)).mean()))
    assert next(iter(result.baselines)) == UNIFORM  # the primary baseline


def test_a_relation_of_ones_own_scores_like_the_built_in():
    model, tokenizer = llama(), ToyTokenizer(VOCAB)

    def one_before(ids, text):
        return {q: [q - 1] for q in range(1, len(ids))}

    mine = relation_from_function("one before", one_before, kind="random", length=30, n=4)
    ours = rank_heads(model, tokenizer, mine)
    built_in = rank_heads(model, tokenizer, previous_token(n=4, length=30))
    torch.testing.assert_close(ours.scores, built_in.scores, atol=0, rtol=0)
    assert ours.relation == "one before" and "30 tokens (random tokens" in ours.inputs


def test_text_relations_read_texts_or_fall_back_to_random_tokens(minilm):
    model, tokenizer = minilm
    texts = ["the cat sat on the mat", "a fluffy blue creature roamed the verdant forest"]
    relation = previous_token(texts=texts)
    examples = relation.examples(model, tokenizer)
    assert relation.inputs() == "2 given texts"
    # [CLS] is no query; [SEP] neither
    assert examples[0].targets.query.tolist() == list(range(1, 7))
    toy = llama()
    fallback = sink()
    fallback.examples(toy, ToyTokenizer(VOCAB))  # the toy vocabulary cannot read English
    assert fallback.inputs().startswith("20 generated sequences of 64 tokens (random tokens")
    at_length = sink().with_length(100)
    [first, *_] = at_length.examples(model, tokenizer)
    ids = first.inputs["input_ids"][0]
    assert len(ids) == 100 and ids[0] == tokenizer.cls_token_id and ids[-1] == \
        tokenizer.sep_token_id
    assert "with 2 special tokens" in at_length.inputs()


def test_find_heads_takes_a_length():
    result = attnkit.find_heads(llama(), relation="duplicate-token", tokenizer=ToyTokenizer(VOCAB),
                                length=24)
    assert "24 tokens (12 random tokens repeated twice" in result.inputs
    assert result.n_items == 20 * 12


def test_errors_say_what_to_do(minilm):
    model, tokenizer = minilm
    with pytest.raises(attnkit.AttnkitError, match=r"length 600 is longer than the model reads "
                                                   r"\(512 tokens\); give a length of at most 512"):
        induction().with_length(600).examples(model, tokenizer)
    with pytest.raises(attnkit.AttnkitError, match="give a length of at least 4"):
        induction().with_length(3).examples(model, tokenizer)
    with pytest.raises(attnkit.AttnkitError, match="length must be a positive integer"):
        induction().with_length(0)
    with pytest.raises(attnkit.AttnkitError, match="kind must be one of 'text', 'random', "
                                                   "'repeated'"):
        relation_from_function("x", lambda ids, text: {}, kind="words")
    far = relation_from_function("far", lambda ids, text: {1: [len(ids) + 3]}, texts=["a b"])
    with pytest.raises(attnkit.AttnkitError, match="named position 7 in a sequence of 4 tokens"):
        far.examples(model, tokenizer)
    wrong = relation_from_function("wrong", lambda ids, text: [1, 2], texts=["a b"])
    with pytest.raises(TypeError, match=r"must return a dict \{query: \[keys\]\} or Targets"):
        wrong.examples(model, tokenizer)
    with pytest.raises(attnkit.AttnkitError, match="relation 'adjectives' scores fixed inputs "
                                                   "and takes no length"):
        attnkit.find_heads(model, "adjectives", tokenizer=tokenizer, length=50)
    with pytest.raises(TypeError, match="keys_for must be a function"):
        TokenRelation("x", "x", keys_for=3)
