"""Kernel-test set-up: the tile-size fixture, and the ``fuzz_long`` marker (run with
``ATTNKIT_FUZZ_LONG=1``)."""

from __future__ import annotations

import os

import pytest

from tests.kernels.tiles import small_blocks, small_tiles


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fuzz_long: the long seeded kernel fuzz (thousands of cases); skipped unless "
                   "ATTNKIT_FUZZ_LONG=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ATTNKIT_FUZZ_LONG") == "1":
        return
    skip = pytest.mark.skip(reason="long fuzz: set ATTNKIT_FUZZ_LONG=1 to run it")
    for item in items:
        if "fuzz_long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["default tiles", "small tiles, threads"])
def tiling(request):
    """Run a test with the shipped tile sizes, and with tiny tiles on worker threads (blockwise)
    and small blocks of pieces (fused)."""
    if request.param == "default tiles":
        yield request.param
    else:
        with small_tiles(), small_blocks():
            yield request.param
