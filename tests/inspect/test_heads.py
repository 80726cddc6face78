"""The head-ranking engine: targets as weighted pairs, exact weights at listed cells, scores and
the uniform baseline against Hugging Face eager attention on a random grouped-query decoder."""

import pytest
import torch

import attnkit
from attnkit.inspect.heads import UNIFORM, Example, HeadRanking, Targets, rank_heads

transformers = pytest.importorskip("transformers")
import attnkit.hf  # noqa: E402,F401  (registers "attnkit")


def test_targets_from_groups_weigh_each_query_of_an_item_equally():
    t = Targets.from_groups([([4, 5], [1, 2]), ([7], [6]), ([], [3])])  # the empty group is skipped
    assert t.n_items == 2
    assert t.query.tolist() == [4, 4, 5, 5, 7] and t.key.tolist() == [1, 2, 1, 2, 6]
    assert t.item.tolist() == [0, 0, 0, 0, 1] and t.weight.tolist() == [0.5] * 4 + [1.0]
    pairs = Targets.from_pairs(torch.tensor([3, 3, 9]), torch.tensor([0, 1, 8]))
    assert pairs.n_items == 2 and pairs.item.tolist() == [0, 0, 1] and pairs.weight.sum() == 3


class PreviousToken:
    """A relation written the way a user would: each query after the first → the token before."""

    name = "previous"
    description = "weight on the token just before"
    controls = {"all on the first token": lambda t, s: (t.key == 0).double()}

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def inputs(self) -> str:
        return f"{len(self.ids)} random sequences"

    def examples(self, model, tokenizer):
        out = []
        for row in self.ids:
            n = len(row)
            out.append(Example({"input_ids": row[None]},
                               Targets.from_pairs(torch.arange(1, n), torch.arange(0, n - 1))))
        return out


def llama():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaModel(config).eval()
    model.set_attn_implementation("attnkit")
    return model


def test_scores_and_uniform_baseline_equal_eager():
    model = llama()
    ids = torch.randint(0, 64, (3, 13), generator=torch.Generator().manual_seed(1))
    result = rank_heads(model, None, PreviousToken(ids), model_name="tiny llama")
    assert isinstance(result, HeadRanking) and result.scores.shape == (2, 4)
    assert result.n_inputs == 3 and result.n_items == 3 * 12
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = [torch.stack(model(input_ids=row[None], output_attentions=True).attentions)[:, 0]
                 for row in ids]  # each (L, H, S, S)
    model.set_attn_implementation("attnkit")
    i = torch.arange(1, 13)
    expected = torch.stack([a[:, :, i, i - 1].double().mean(-1) for a in eager]).mean(0)
    torch.testing.assert_close(result.scores, expected, atol=1e-6, rtol=0)
    # causal: query i sees i + 1 keys, so the uniform head puts 1 / (i + 1) on the previous one
    assert result.baselines[UNIFORM] == pytest.approx(float((1.0 / (i + 1)).mean()))
    assert result.baselines["all on the first token"] == pytest.approx(1 / 12)
    assert list(result.baselines) == ["all on the first token", UNIFORM]


def test_weights_at_listed_cells_equal_the_pattern():
    model = llama()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding: the padded keys get no weight
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(input_ids=ids, attention_mask=mask)
    query = torch.tensor([0, 4, 8, 8, 2, 5])
    key = torch.tensor([0, 2, 8, 1, 5, 6])  # (2, 5) and (5, 6) are hidden by the causal mask
    for batch in (0, 1):
        got = cap.weights_at(1, query, key, batch=batch)  # (H, P)
        full = cap.patterns(1, batch=batch)  # (H, S, S)
        torch.testing.assert_close(got, full[:, query, key], atol=1e-6, rtol=1e-5)
    assert (cap.weights_at(1, query, key, batch=1)[:, 3] == 0).all()  # key 1 is padding


def test_errors_name_the_problem():
    model = llama()
    with torch.no_grad(), attnkit.capture(model) as cap:
        model(input_ids=torch.randint(0, 64, (1, 5)))
    with pytest.raises(attnkit.AttnkitError, match=r"key positions must lie in 0..4; got 2..7"):
        cap.weights_at(0, torch.tensor([1, 2]), torch.tensor([2, 7]))
    with pytest.raises(attnkit.AttnkitError, match="1-D positions of one length"):
        cap.weights_at(0, torch.tensor([1, 2]), torch.tensor([2]))
    empty = PreviousToken(torch.randint(0, 64, (1, 1)))  # one token: no query has a previous one
    with pytest.raises(attnkit.AttnkitError, match="hold no item to score"):
        rank_heads(model, None, empty)
