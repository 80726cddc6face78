"""``attnkit train-induction``: training is seeded (bit for bit); retraining with the defaults
makes the shipped weights (minutes: only with ATTNKIT_RETRAIN=1); files are checked before
training and never replaced without --force."""

import json
import os
import time

import pytest
import torch

from attnkit.cli import main
from attnkit.detectors import find_heads
from attnkit.inspect import relations
from attnkit.models.induction import load_induction


def test_training_is_seeded():
    """The same seed gives the same weights, bit for bit (one thread, seeded data); another seed
    other weights. Ten steps: what the full run repeats 3,000 times."""
    from attnkit.experiments.induction import train_induction

    a, _ = train_induction(seed=0, steps=10, progress=False)
    b, _ = train_induction(seed=0, steps=10, progress=False)
    c, _ = train_induction(seed=1, steps=10, progress=False)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    assert not torch.equal(a.state_dict()["unembed.weight"], c.state_dict()["unembed.weight"])


@pytest.mark.skipif(os.environ.get("ATTNKIT_RETRAIN") != "1",
                    reason="retrains the induction model (minutes); set ATTNKIT_RETRAIN=1")
def test_retraining_reproduces_the_shipped_weights(tmp_path, capsys):
    """The defaults of `attnkit train-induction` make the shipped weights (same torch build)
    and the two heads are found on held-out sequences of a seed no training uses."""
    out = tmp_path / "induction.safetensors"
    assert main(["train-induction", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "previous-token: layer 0 head 0 scores" in printed
    assert "induction: layer 1 head 0 scores" in printed
    model, tokenizer = load_induction(out)
    shipped, _ = load_induction()
    for name, value in shipped.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    for chosen, layer in ((relations.induction, 1), (relations.previous_token, 0)):
        result = find_heads(model, chosen(seed=4242), tokenizer=tokenizer)
        top_layer, _, score = result.ranking[0]
        assert top_layer == layer and score >= 0.9, result.table(2)


def test_bad_out_and_steps(tmp_path, capsys):
    assert main(["train-induction", "--out", str(tmp_path / "weights.bin")]) == 2
    assert "--out must name a .safetensors file" in capsys.readouterr().err
    from attnkit.experiments.induction import train_induction

    with pytest.raises(ValueError, match="steps must be a positive number"):
        train_induction(steps=0)


def test_existing_files_are_kept_unless_forced(tmp_path, capsys):
    out = tmp_path / "induction.safetensors"
    out.write_bytes(b"my own weights")
    beside = out.with_suffix(".json")
    beside.write_text('{"mine": true}')
    start = time.perf_counter()
    assert main(["train-induction", "--out", str(out), "--quiet"]) == 2
    assert time.perf_counter() - start < 5  # refused before any training
    assert f"{out} already exists and would be replaced; add --force to replace it" in \
        capsys.readouterr().err
    assert out.read_bytes() == b"my own weights" and beside.read_text() == '{"mine": true}'
    assert main(["train-induction", "--out", str(out), "--quiet", "--steps", "3",
                 "--force"]) == 0
    model, _ = load_induction(out)
    assert json.loads(beside.read_text())["n_layers"] == 2 == len(model.layers)


def test_unwritable_destination_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    start = time.perf_counter()
    assert main(["train-induction", "--out", str(blocker / "m.safetensors"), "--quiet"]) == 2
    assert time.perf_counter() - start < 5
    assert f"cannot create {blocker}: {blocker} is a file" in capsys.readouterr().err
