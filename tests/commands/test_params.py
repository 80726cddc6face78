"""``attnkit params``: the lesson's GPT-3 table, JSON, custom sizes and clear errors."""

import json

import pytest

from attnkit.cli import main


def test_cli_prints_the_gpt3_table(capsys):
    assert main(["params", "--preset", "gpt3"]) == 0
    out = capsys.readouterr().out
    for figure in ("1,572,864", "6,291,456", "603,979,776", "57,982,058,496",
                   "175,181,291,520", "33.1%", "12,288 × 128"):
        assert figure in out
    assert "W_Q (query)" in out and "W_V_up (value↑)" in out


def test_cli_json_and_custom_sizes(capsys):
    assert main(["params", "--d-model", "768", "--heads", "12", "--layers", "12", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["d_key"] == 64 and data["per_head"] == 4 * 768 * 64
    assert data["total"] == 12 * 12 * 4 * 768 * 64 and data["share"] is None
    assert main(["params", "--preset", "llama3-8b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_kv_heads"] == 8 and data["total"] == 1_342_177_280
    assert main(["params", "--preset", "gpt3", "--layers", "48"]) == 0
    out = capsys.readouterr().out
    assert "28,991,029,248" in out and "share" not in out  # a changed model's share is unknown


def test_cli_default_is_gpt3(capsys):
    assert main(["params"]) == 0
    assert "57,982,058,496" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--d-model", "768"], "custom sizes need --heads, --layers"),
    (["--d-model", "10", "--heads", "3", "--layers", "1"],
     "--d-model 10 is not divisible by --heads 3; give the per-head size with --d-key"),
    (["--d-model", "16", "--heads", "6", "--kv-heads", "4", "--layers", "1", "--d-key", "2"],
     "n_heads=6 is not a multiple of n_kv_heads=4"),
])
def test_cli_bad_sizes_are_clear_errors(capsys, argv, message):
    assert main(["params", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnkit params: error:") and message in err


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_cli_rejects_non_positive_sizes(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "--heads", value])
    assert exit_info.value.code == 2
    assert "argument --heads: must be a positive integer" in capsys.readouterr().err
