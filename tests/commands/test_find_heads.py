"""``attnkit find-heads``: the table with its baselines, JSON, and a clear error for an unknown
relation."""

import json

import pytest

from attnkit.cli import main


def test_minilm_prints_top_heads_and_baselines(capsys):
    assert main(["find-heads", "--relation", "adjectives", "--model", "minilm", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "baseline, uniform over the noun and the tokens before it:" in out
    assert "all attention on the previous token" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 5 and rows[0][0] == "1"


def test_json(capsys):
    assert main(["find-heads", "--model", "toy", "--json", "--top", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["layer"], r["head"]) for r in data["ranking"]] == [(0, 0)]
    baselines = data["baselines"]
    assert data["ranking"][0]["score"] > baselines["uniform over the noun and the tokens before it"]
    assert data["inputs"] == "held-out sentences of the toy grammar"


def test_unknown_relation_is_exit_2(capsys):
    assert main(["find-heads", "--relation", "verbs", "--model", "toy"]) == 2
    err = capsys.readouterr().err
    assert "attnkit find-heads: error: unknown relation 'verbs'" in err


@pytest.mark.parametrize("value", ["0", "-2", "ten"])
def test_top_must_be_positive(capsys, value):
    with pytest.raises(SystemExit):
        main(["find-heads", "--top", value])
    assert "argument --top: must be a positive integer" in capsys.readouterr().err


def test_induction_relation_at_a_length(capsys):
    assert main(["find-heads", "--relation", "induction", "--model", "induction", "--length",
                 "100", "--json", "--top", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inputs"].startswith("20 generated sequences of 100 tokens (50 random tokens "
                                     "repeated twice")
    assert [(r["layer"], r["head"]) for r in data["ranking"]] == [(1, 0), (0, 0)]
    assert "uniform over the keys each query may see" in data["baselines"]


def test_length_errors_name_the_flag(capsys):
    assert main(["find-heads", "--relation", "adjectives", "--length", "50"]) == 2
    assert "--length makes generated inputs, but 'adjectives'" in capsys.readouterr().err
    assert main(["find-heads", "--relation", "induction", "--model", "induction", "--length",
                 "500"]) == 2
    assert "length 500 is longer than the model reads (128 tokens)" in capsys.readouterr().err
