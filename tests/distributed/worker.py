"""One rank of a distributed test: ``python -m tests.distributed.worker CASES_JSON``.

Started by ``launch.py`` with MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE set; joins a gloo group
with the timeout it is given, runs each ``[case, params]`` in turn (one start-up for many
cases) and writes their JSON results where ATTNKIT_TEST_OUT says. A case that raises records
the error's type, message and traceback instead.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist

CASES = {
    "matrix": "tests.distributed.attention_cases",
    "errors": "tests.distributed.attention_cases",
    "dead": "tests.distributed.attention_cases",
    "groups": "tests.distributed.attention_cases",
    "layouts": "tests.distributed.attention_cases",
    "torch_ring": "tests.distributed.attention_cases",
    "hf": "tests.distributed.model_cases",
    "noop": "tests.distributed.attention_cases",
    "capture": "tests.distributed.model_cases",
    "hf_errors": "tests.distributed.model_cases",
}


def main() -> int:
    cases = json.loads(sys.argv[1])
    torch.set_num_threads(1)  # several ranks share this machine's cores
    timeout = datetime.timedelta(seconds=float(os.environ["ATTNKIT_TEST_PG_TIMEOUT"]))
    dist.init_process_group("gloo", timeout=timeout)
    results = []
    for case, params in cases:
        run = getattr(importlib.import_module(CASES[case]), case)
        try:
            results.append({"ok": True, "result": run(**params)})
        except Exception as error:  # the test reads it; a failing case is not a crash here
            results.append({"ok": False, "type": type(error).__name__, "error": str(error),
                            "traceback": traceback.format_exc()})
    with open(os.environ["ATTNKIT_TEST_OUT"], "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
