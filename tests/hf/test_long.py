"""Long context: a random Llama-style model (2 layers, 8 query heads sharing 2 key/value heads) at
16,384 tokens runs on "attnkit" with every layer captured, in a fresh process whose peak memory
stays far below one 16,384² float32 pattern (1 GiB; eager would hold 8 heads' worth, 8 GiB, per
layer), and the last query's pattern row is exact against the reference backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

LENGTH = 16_384
ONE_PATTERN_MIB = LENGTH * LENGTH * 4 / 2**20  # 1024 MiB


SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "long_capture.py"


@pytest.mark.slow
def test_16k_tokens_capture_every_layer_in_linear_memory_and_exact_last_row():
    done = subprocess.run([sys.executable, str(SCRIPT), str(LENGTH)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["layers"] == [0, 1] and result["heads"] == list(range(8))
    assert result["seq_len"] == LENGTH
    growth = result["peak_mib"] - result["rss_before_mib"]
    # everything the forward pass and the capture added, at its peak: under half of ONE head's
    # 16,384² pattern, which eager would hold 8 times per layer (plus the scores)
    assert growth < ONE_PATTERN_MIB / 2, f"peak grew {growth:.0f} MiB during the forward pass"
    for e in result["errors"]:
        assert e["ours"] <= 2 * e["reference_f32"] + 1e-6, e
        assert abs(e["row_sum"] - 1) <= 1e-4, e
