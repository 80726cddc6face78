"""Statistics over a data set: equal to measuring each text on its own, resumable after an
interruption (texts already done are not run again), refusals that say what to do, and the
files of texts it reads."""

import json

import pytest
import torch

import attnkit
from attnkit import corpus
from attnkit.corpus import corpus_stats, read_texts
from attnkit.inspect.relations import shipped_texts
from attnkit.inspect.stats import AttentionStats, attention_stats

MEANS = ("entropy", "sink", "max_weight", "distance")


def text_by_text(model, tokenizer, texts, layers=None):
    """The peer: each text run alone (no padding), its statistics combined."""
    parts = []
    for text in texts:
        with torch.no_grad(), attnkit.capture(model, layers=layers) as cap:
            model(**tokenizer(text, return_tensors="pt"))
        parts.append(attention_stats(cap).without_received())
    return AttentionStats.combine(parts)


def assert_same(a: AttentionStats, b: AttentionStats, atol: float) -> None:
    assert (a.layers, a.heads) == (b.layers, b.heads)
    assert torch.equal(a.queries, b.queries)
    for name in MEANS:
        n = max(a.n_bins, b.n_bins)
        x, y = getattr(a.with_bins(n), name), getattr(b.with_bins(n), name)
        assert (x - y).abs().max() <= atol, name


def test_batched_run_equals_each_text_alone(minilm):
    model, tokenizer = minilm
    texts = shipped_texts()[:20]
    result = corpus_stats(model, texts, tokenizer=tokenizer, batch_size=6, layers=[0, 3])
    assert result.n_texts == 20 and result.stats.sequences == 20 and result.n_cut == 0
    assert result.n_tokens == sum(len(tokenizer(t)["input_ids"]) for t in texts)
    assert result.stats.layers == [0, 3] and result.files == []
    # padding changes nothing but float32 rounding
    assert_same(result.stats, text_by_text(model, tokenizer, texts, layers=[0, 3]), atol=1e-6)


def test_an_interrupted_run_resumes_where_it_stopped(minilm, tmp_path, monkeypatch):
    model, tokenizer = minilm
    texts = shipped_texts()[:14]
    whole = corpus_stats(model, texts, tokenizer=tokenizer, batch_size=4, layers=[1])
    seen = []
    real = corpus.sequence_stats

    def stop_at_third(cap, *args):
        seen.append(cap.batch_size)
        if len(seen) == 3:
            raise KeyboardInterrupt  # as a user's Ctrl-C would
        return real(cap, *args)

    monkeypatch.setattr(corpus, "sequence_stats", stop_at_third)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        corpus_stats(model, texts, tokenizer=tokenizer, out=out, batch_size=4, layers=[1])
    lines = (out / "per_text.jsonl").read_text().splitlines()
    assert len(lines) == 8 and not (out / "stats.json").exists()
    with open(out / "per_text.jsonl", "a") as f:
        f.write('{"index": 3, "sha1": "cut sh')  # a line cut short by the interruption
    seen.clear()
    monkeypatch.setattr(corpus, "sequence_stats", lambda cap, *a: seen.append(cap.batch_size)
                        or real(cap, *a))
    resumed = corpus_stats(model, texts, tokenizer=tokenizer, out=out, batch_size=4, layers=[1])
    assert sum(seen) == 6  # only the texts not done before ran
    assert_same(resumed.stats, whole.stats, atol=1e-6)
    assert [p.name for p in resumed.files] == list(corpus.OUTPUTS)
    saved = json.loads((out / "stats.json").read_text())
    assert saved["texts"] == 14 and saved["tokens"] == whole.n_tokens
    assert_same(AttentionStats.from_dict(saved), whole.stats, atol=1e-6)
    seen.clear()  # a third run has nothing left to do and writes the same numbers
    again = corpus_stats(model, texts, tokenizer=tokenizer, out=out, batch_size=4, layers=[1])
    assert seen == [] and torch.equal(again.stats.distance_sum, resumed.stats.distance_sum)


def test_refusals_say_what_to_do(minilm, tmp_path):
    model, tokenizer = minilm
    texts = ["the cat sat", "a dog ran"]
    out = tmp_path / "run"
    corpus_stats(model, texts, tokenizer=tokenizer, out=out, layers=[0])
    with pytest.raises(attnkit.AttnkitError, match=r"holds results of another run \(layers: "
                                                   r"\[0\] then, \[1\] now\); choose another "
                                                   "folder, or pass overwrite=True"):
        corpus_stats(model, texts, tokenizer=tokenizer, out=out, layers=[1])
    with pytest.raises(attnkit.AttnkitError, match="texts: 2 then, 3 now"):
        corpus_stats(model, [*texts, "one more"], tokenizer=tokenizer, out=out, layers=[0])
    fresh = corpus_stats(model, texts[:1], tokenizer=tokenizer, out=out, layers=[1],
                         overwrite=True)
    assert fresh.n_texts == 1 and len((out / "per_text.jsonl").read_text().splitlines()) == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "stats.json").write_text("{}")
    with pytest.raises(attnkit.AttnkitError, match="holds statistics files without run.json"):
        corpus_stats(model, texts, tokenizer=tokenizer, out=foreign)
    with pytest.raises(attnkit.AttnkitError, match=r"max_tokens 600 is more than minilm reads "
                                                   r"\(512 tokens\)"):
        corpus_stats("minilm", texts, max_tokens=600)
    with pytest.raises(attnkit.AttnkitError, match="a loaded model needs its tokenizer"):
        corpus_stats(model, texts)


def test_texts_are_cut_to_max_tokens(minilm):
    model, tokenizer = minilm
    long, short = "one two three four five six seven eight nine ten", "one two"
    result = corpus_stats(model, [long, short], tokenizer=tokenizer, max_tokens=6, layers=[0])
    assert result.n_cut == 1 and result.n_tokens == 6 + 4 and result.max_tokens == 6


def test_read_texts(tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_text("first text\n\n  \nsecond text\n")
    assert read_texts(lines) == ["first text", "second text"]
    records = tmp_path / "texts.jsonl"
    records.write_text('{"text": "one", "id": 1}\n{"text": "two"}\n')
    assert read_texts(records) == ["one", "two"]
    records.write_text('{"text": "one"}\n{"body": "two"}\n')
    with pytest.raises(attnkit.AttnkitError, match=r'texts.jsonl, line 2: no "text" string'):
        read_texts(records)
    records.write_text('{"text": "one"\n')
    with pytest.raises(attnkit.AttnkitError, match=r"line 1: not JSON"):
        read_texts(records)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(attnkit.AttnkitError, match="holds no text"):
        read_texts(tmp_path / "empty.txt")
