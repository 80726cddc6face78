"""Start W real gloo processes on 127.0.0.1 that run cases of ``tests/distributed/worker.py``,
and collect each rank's results. Every wait has a timeout; processes that outlive it are killed
(only the ones started here, by their own ids), so a hang fails the test instead of the suite."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, cases: list[tuple[str, dict]], *, timeout: float = 300,
           pg_timeout: float = 60, expect_exit: dict[int, int] | None = None) -> list[dict]:
    """Run ``cases`` (``[(name, params), ...]``, one after another in the same processes) on
    ``world`` ranks; returns per rank ``{"results": [one per case], "output": its output}``.

    Each case's result is ``{"ok": True, "result": ...}`` or ``{"ok": False, "type", "error",
    "traceback"}``. A rank that wrote nothing (it crashed, or was meant to die) gets
    ``{"results": None, "exit": code, "output": ...}``. ``timeout`` bounds the whole group in
    seconds; ``pg_timeout`` is the process group's own timeout.
    """
    case = ", ".join(name for name, _ in cases)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="attnkit-dist-") as tmp:
        procs, logs = [], []
        for rank in range(world):
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       RANK=str(rank), WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
                       ATTNKIT_TEST_OUT=str(Path(tmp) / f"rank{rank}.json"),
                       ATTNKIT_TEST_PG_TIMEOUT=str(pg_timeout),
                       PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
            log = open(Path(tmp) / f"rank{rank}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.distributed.worker", json.dumps(cases)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        try:
            for proc in procs:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            for proc in procs:
                proc.wait(timeout=30)
            raise AssertionError(f"cases {case!r} on {world} ranks did not finish within "
                                 f"{timeout} s:\n" + _outputs(logs)) from None
        results = []
        for rank, proc in enumerate(procs):
            out = Path(tmp) / f"rank{rank}.json"
            logs[rank].seek(0)
            output = logs[rank].read()
            if out.exists():
                result = {"results": json.loads(out.read_text()), "output": output}
            else:
                result = {"results": None, "exit": proc.returncode, "output": output}
            results.append(result)
        for log in logs:
            log.close()
        for rank, proc in enumerate(procs):
            wanted = (expect_exit or {}).get(rank, 0)
            if proc.returncode != wanted:
                raise AssertionError(
                    f"cases {case!r}: rank {rank} exited with {proc.returncode} (expected "
                    f"{wanted}):\n" + "\n".join(f"--- rank {r} ---\n{res['output'][-4000:]}"
                                                for r, res in enumerate(results)))
        return results


def _outputs(logs) -> str:
    texts = []
    for rank, log in enumerate(logs):
        log.seek(0)
        texts.append(f"--- rank {rank} ---\n{log.read()[-4000:]}")
    return "\n".join(texts)
