"""``attnkit capture``: a text (or a file's text) in, a capture file out that loads without the
model and draws the same patterns; progress for long inputs; the destination checked before the
model runs; clear errors with exit code 2."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.cli import main
from attnkit.inspect.running import run_and_capture

TEXT = "a fluffy blue creature roamed the verdant forest"


def test_capture_a_text(capsys, tmp_path, minilm):
    out = tmp_path / "run.safetensors"
    assert main(["capture", TEXT, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"wrote {out}: minilm, 6 layers x 12 heads, 13 tokens, ")
    assert printed[1] == (f"explore it: attnkit serve --open {out}   or   attnkit explain "
                          f"--capture {out}")
    back = attnkit.load_capture(out)
    live = run_and_capture(*minilm, TEXT)
    assert back.model_name == "minilm" and back.tokens == live.tokens
    for layer in (0, 5):
        assert torch.equal(back.patterns(layer), live.patterns(layer))


def test_a_long_file_shows_progress_and_a_selection_is_kept(capsys, tmp_path):
    text = " ".join(["the quick brown fox jumps over the lazy dog ."] * 30)  # 302 tokens
    source = tmp_path / "doc.txt"
    source.write_text(text, encoding="utf-8")
    out = tmp_path / "doc.safetensors"
    assert main(["capture", "--file", str(source), "--layers", "1", "4", "--heads", "0", "7",
                 "--out", str(out)]) == 0
    done = capsys.readouterr()
    assert "running minilm on 302 tokens" in done.err
    assert "attention layers: 100%" in done.err and "2/2" in done.err
    assert "302 tokens" in done.out
    back = attnkit.load_capture(out)
    assert (back.layers, back.heads, back.seq_len()) == ([1, 4], [0, 7], 302)
    assert main(["capture", "--file", str(source), "--out", str(tmp_path / "q.safetensors"),
                 "--quiet", "--layers", "0"]) == 0
    assert capsys.readouterr().err == ""


def test_an_existing_file_is_kept_and_checked_before_the_model_loads(capsys, tmp_path,
                                                                     monkeypatch):
    import attnkit.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the destination was checked")

    monkeypatch.setattr(attnkit.models, "load_model", no_model)
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"precious")
    assert main(["capture", TEXT, "--out", str(out)]) == 2
    assert ("mine.safetensors already exists and would be replaced; add --force to replace it"
            in capsys.readouterr().err)
    assert out.read_bytes() == b"precious"
    monkeypatch.undo()
    assert main(["capture", TEXT, "--out", str(out), "--force", "--quiet"]) == 0
    assert attnkit.load_capture(out).seq_len() == 13


@pytest.mark.parametrize("argv, message", [
    (["capture", "--out", "x.safetensors"], "give the text, or --file F to read it from a file"),
    (["capture", TEXT, "--file", "f.txt", "--out", "x.safetensors"], "(not both)"),
    (["capture", "   ", "--out", "x.safetensors"], "the text is empty"),
    (["capture", TEXT, "--layers", "6", "--out", "x.safetensors"],
     "--layers 6: the model has 6 attention layers (0..5)"),
    (["capture", TEXT, "--heads", "3", "12", "--out", "x.safetensors"],
     "--heads 12: the model has 12 heads per layer (0..11)"),
    (["capture", "word " * 600, "--out", "x.safetensors"], "the text is 602 tokens but"),
    (["capture", "--file", "missing.txt", "--out", "x.safetensors"], "missing.txt"),
])
def test_errors(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("attnkit capture: error: ") and message in err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_file_that_is_not_utf8(capsys, tmp_path):
    source = tmp_path / "latin1.txt"
    source.write_bytes("crème brûlée".encode("latin-1"))
    assert main(["capture", "--file", str(source), "--out", str(tmp_path / "x.st")]) == 2
    assert f"--file {source} is not UTF-8 text (byte 2); save it as UTF-8" in \
        capsys.readouterr().err
    assert main(["capture", "--file", str(tmp_path), "--out", str(tmp_path / "x.st")]) == 2
    assert "is a directory; give a text file" in capsys.readouterr().err


def test_the_out_flag_is_required(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["capture", TEXT])
    assert stop.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
