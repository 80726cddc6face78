"""One line naming the machine a benchmark ran on, from what the OS and torch report."""

from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    """The processor's model name from /proc/cpuinfo (platform.processor() is often empty)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """e.g. ``AMD EPYC, 2 cores, torch 2.13.0+cpu running its AVX2 kernels, 2 intra-op threads``:
    the capability is the code path torch chose, which can be below what the CPU advertises."""
    return (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} running its "
            f"{torch.backends.cpu.get_cpu_capability()} kernels, {torch.get_num_threads()} "
            "intra-op threads")
