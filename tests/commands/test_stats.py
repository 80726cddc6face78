"""``attnkit stats``: the shipped labelled sentences through MiniLM (files, table, pictures); a
run of the induction model over random syllables shared by two real processes under torchrun
(gloo on 127.0.0.1) equal to one process; errors that exit 2 with the fix."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnkit.cli import main
from attnkit.corpus import OUTPUTS
from attnkit.inspect.relations import shipped_texts
from attnkit.inspect.stats import AttentionStats
from attnkit.models.induction import SYLLABLES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "sentences.txt"
    path.write_text("\n".join(shipped_texts()) + "\n")
    return path


def test_shipped_sentences_through_minilm(texts_file, tmp_path, capsys):
    out = tmp_path / "minilm"
    assert main(["stats", "--model", "minilm", "--texts", str(texts_file), "--out", str(out),
                 "--quiet", "--top", "3"]) == 0
    printed = capsys.readouterr().out
    n_texts = len(shipped_texts())
    assert printed.startswith(f"minilm: {n_texts} texts, ")
    assert "    0    2 " in printed  # the previous-token head is the most focused
    for name in OUTPUTS:
        assert f"wrote {out / name}" in printed
    saved = json.loads((out / "stats.json").read_text())
    assert saved["texts"] == n_texts and saved["model"] == "minilm"
    assert set(saved["definitions"]) >= {"entropy", "sink", "distance", "max_weight"}
    stats = AttentionStats.from_dict(saved)
    assert stats.entropy.shape == (6, 12)
    assert (stats.queries == saved["tokens"]).all()  # every token of every text is a query
    torch.testing.assert_close(stats.distance.sum(-1), torch.ones(6, 12, dtype=torch.float64),
                               rtol=0, atol=1e-5)  # float32 rows sum to 1 within ~1e-6
    assert stats.distance[0, 2, 1] > 0.9  # layer 0 head 2 reads the token one step away
    with open(out / "heads.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 72 and rows[2]["layer"] == "0" and rows[2]["head"] == "2"
    assert float(rows[2]["distance_1"]) == pytest.approx(float(stats.distance[0, 2, 1]))
    for name in OUTPUTS[2:]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def syllables_file(tmp_path_factory):
    """30 texts of 5-60 random syllables: the induction model reads them, and it loads in a
    moment in a fresh process (no transformers), so the two-process run costs little."""
    g = torch.Generator().manual_seed(3)
    lines = []
    for _ in range(30):
        n = int(torch.randint(5, 61, (1,), generator=g))
        picks = torch.randint(0, len(SYLLABLES), (n,), generator=g).tolist()
        lines.append(" ".join(SYLLABLES[i] for i in picks))
    path = tmp_path_factory.mktemp("syllables") / "syllables.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, len(lines)


@pytest.mark.slow
def test_two_processes_under_torchrun_equal_one(syllables_file, tmp_path, capsys):
    texts, n_texts = syllables_file
    args = ["--model", "induction", "--texts", str(texts), "--batch-size", "4", "--quiet"]
    assert main(["stats", *args, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "attnkit",
         "stats", *args, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    two = tmp_path / "two"
    # each rank wrote its own share of the texts; rank 0 wrote the results
    shares = [len((two / f"per_text.rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert sum(shares) == n_texts and min(shares) > 0
    one = json.loads((tmp_path / "one" / "stats.json").read_text())
    both = json.loads((two / "stats.json").read_text())
    assert both["tokens"] == one["tokens"] and both["sequences"] == one["sequences"] == n_texts
    a, b = AttentionStats.from_dict(one), AttentionStats.from_dict(both)
    assert torch.equal(a.queries, b.queries)
    for name in ("entropy_sum", "sink_sum", "max_weight_sum", "distance_sum"):
        assert (getattr(a, name) - getattr(b, name)).abs().max() <= 1e-10, name


def test_errors_exit_2_with_the_fix(texts_file, tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert main(["stats", "--texts", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert "attnkit stats: error:" in capsys.readouterr().err
    out = tmp_path / "run"
    small = tmp_path / "two.txt"
    small.write_text("the cat sat\na dog ran\n")
    assert main(["stats", "--texts", str(small), "--out", str(out), "--layers", "0",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["stats", "--texts", str(small), "--out", str(out), "--layers", "1",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds results of another run (layers: [0] then, [1] now); choose another folder, " \
           "or add --force to start over" in err
    assert main(["stats", "--texts", str(small), "--out", str(out), "--layers", "1",
                 "--quiet", "--force"]) == 0
    capsys.readouterr()
    assert main(["stats", "--texts", str(small), "--out", str(out), "--layers", "9",
                 "--quiet", "--force"]) == 2
    assert "capture(layers=[9])" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stats", "--texts", str(small), "--out", str(out), "--layers", "a-b"])
    assert "argument --layers: must be numbers like 0,2,4-6" in capsys.readouterr().err
