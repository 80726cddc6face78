"""``attnkit explain`` from the command line: output, files, and clear errors with exit code 2."""

import os
import subprocess
import sys

import matplotlib.image
import pytest

from attnkit.cli import main

TEXT = "a fluffy blue creature roamed the verdant forest"


def test_demo_command_in_a_fresh_process(tmp_path):
    """What ``make demo`` runs, as a user would run it."""
    out = tmp_path / "attnkit-out"
    done = subprocess.run([sys.executable, "-m", "attnkit", "explain", TEXT, "--layer", "1",
                           "--head", "8", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("model minilm   layer 1   head 8")
    assert "each query's best-answering key:" in done.stdout
    assert any(line.split()[:2] == ["creature", "←"] for line in lines)
    for name in ("grid.png", "grid.svg", "heads.png", "page.html"):
        assert f"wrote {out / name}" in done.stdout
    picture = matplotlib.image.imread(out / "grid.png")
    assert picture.std() > 0.05


def test_query_key_orientation_and_no_special(capsys):
    assert main(["explain", TEXT, "--layer", "0", "--head", "2", "--orientation", "query-key",
                 "--no-special", "--no-color"]) == 0
    text = capsys.readouterr().out
    assert "keys →" in text and "queries ↓" in text
    notes, grid = text.split("left out; each query's weights renormalized", 1)
    assert "special tokens [CLS], [SEP]" in notes and "[CLS]" not in grid


@pytest.mark.parametrize("argv, message", [
    (["explain", ""], "the text is empty"),
    (["explain", TEXT, "--layer", "9", "--head", "0"],
     r"layer 9 is out of range: minilm has 6 layers (0..5)"),
    (["explain", TEXT, "--layer", "0", "--head", "-1"], "head -1 is out of range"),
    (["explain", TEXT, "--layer", "0"], "give both --layer and --head"),
    (["explain", TEXT, "--find", "adjectives", "--layer", "0", "--head", "0"],
     "give either --find or --layer/--head"),
    (["explain", "word " * 700], "the text is 702 tokens long but minilm reads at most 512"),
    (["explain", TEXT, "--model", "no/such-model-here"], "no/such-model-here"),
])
def test_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any loading bar
    assert err.startswith("attnkit explain: error: ")
    assert message in err


def test_unwritable_out_dir(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["explain", TEXT, "--layer", "0", "--head", "0", "--out", str(blocker / "x")]) == 2
    assert f"cannot create {blocker / 'x'}: {blocker} is a file" in capsys.readouterr().err
    assert not (blocker.parent / "x").exists()


def test_existing_pictures_need_force(capsys, tmp_path):
    (tmp_path / "page.html").write_text("my notes")
    argv = ["explain", TEXT, "--layer", "0", "--head", "0", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "page.html already exists and would be replaced; add --force" in capsys.readouterr().err
    assert (tmp_path / "page.html").read_text() == "my notes"
    assert main([*argv, "--force"]) == 0
    assert "fluffy" in (tmp_path / "page.html").read_text()


def test_a_huge_text_is_refused_before_tokenizing(capsys):
    assert main(["explain", "word " * 1_000_000]) == 2
    assert "the text is 5,000,000 characters, far over the limit" in capsys.readouterr().err


def test_an_argument_that_is_not_utf8_is_a_clear_error():
    """The shell passes bytes; Python keeps undecodable ones as surrogates. The message names
    the bytes, not the tokenizer's internals."""
    done = subprocess.run([sys.executable.encode(), b"-m", b"attnkit", b"explain",
                           b"a fluffy \xff\xfe creature", b"--layer", b"0", b"--head", b"0"],
                          capture_output=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    err = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1]
    assert err == ("attnkit explain: error: the text has bytes that are not valid UTF-8 "
                   "(b'\\xff\\xfe' at position 9); save or pass the text as UTF-8")


def test_explain_a_capture_file_and_words(capsys, tmp_path):
    out = tmp_path / "run.safetensors"
    assert main(["capture", TEXT, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["explain", "--capture", str(out), "--layer", "2", "--head", "3", "--no-color",
                 "--out", str(tmp_path / "pictures")]) == 0
    pieces = capsys.readouterr().out
    assert pieces.splitlines()[0] == "model minilm   layer 2   head 3   (13 tokens)"
    assert "##rdan" in pieces and (tmp_path / "pictures" / "page.html").exists()
    assert main(["explain", "--capture", str(out), "--words", "--no-special",
                 "--no-color"]) == 0
    words = capsys.readouterr().out
    assert words.splitlines()[0] == "model minilm   layer 0   head 0   (8 words)"
    assert "head chosen: layer 0 head 0 (the first in the capture)" in words
    assert "11 word pieces merged into 8 words" in words
    assert "  verdant   ← " in words and "##rdan" not in words


@pytest.mark.parametrize("extra, message", [
    (["words here"], "--capture draws a capture file as it was recorded: give no TEXT"),
    (["--model", "toy"], "give no TEXT, --model or --find with it"),
])
def test_explain_capture_errors(capsys, tmp_path, extra, message):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a capture")
    assert main(["explain", "--capture", str(bad), *extra]) == 2
    assert message in capsys.readouterr().err
    assert main(["explain", "--capture", str(bad)]) == 2
    assert "is not a readable capture file" in capsys.readouterr().err
    assert main(["explain"]) == 2
    assert "give the text to explain" in capsys.readouterr().err
