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
