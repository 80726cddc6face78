"""The README's torchrun example: its code is docs/distributed_example.py word for word, and that
script runs under ``torchrun --nproc-per-node 2`` (gloo, 127.0.0.1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.distributed.launch import ROOT, free_port

SCRIPT = ROOT / "docs" / "distributed_example.py"


def test_readme_shows_the_script():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"torchrun --nproc-per-node 2 docs/distributed_example.py\n```.*?```py\n"
                      r"(.*?)```", readme, flags=re.S)
    assert block, "the README's distributed section lost its example"
    body = SCRIPT.read_text().split("# --- README example starts ---\n")[1]
    assert block.group(1) == body.split("# --- README example ends ---")[0]


@pytest.mark.slow
def test_the_example_runs_under_torchrun():
    pytest.importorskip("transformers")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(SCRIPT)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} of 2: logits equal, pattern (1024, 1024)" in done.stdout
