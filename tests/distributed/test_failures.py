"""A rank that dies or stalls in the middle of a ring call: the others must fail with a clear
``CommunicationError`` within the process group's timeout, never hang (real gloo processes)."""

from __future__ import annotations

import pytest

from tests.distributed.launch import launch


def survivors(ranks: list[dict], victim: int) -> list[dict]:
    out = []
    for rank, ran in enumerate(ranks):
        if rank == victim:
            continue
        got = ran["results"][0]
        assert got["ok"], got["traceback"]
        out.append(got["result"])
    return out


def test_a_rank_that_exits_mid_ring_makes_the_others_fail_fast():
    ranks = launch(3, [("dead", {"how": "exit", "victim": 1})], pg_timeout=20, timeout=120,
                   expect_exit={1: 3})
    assert ranks[1]["results"] is None  # it really died in the middle
    for outcome in survivors(ranks, victim=1):
        assert outcome["communication_error"], outcome
        assert outcome["seconds"] < 20 + 5, outcome  # a closed connection is seen at once
        message = outcome["message"]
        assert "another process of the group stopped" in message
        assert "timeout of 20 s" in message
        assert "ring step" in message  # which transfer failed


@pytest.mark.slow
def test_a_stalled_rank_makes_the_others_time_out():
    timeout = 6
    ranks = launch(3, [("dead", {"how": "stall", "victim": 2})], pg_timeout=timeout,
                   timeout=180)
    for outcome in survivors(ranks, victim=2):
        assert outcome["communication_error"], outcome
        assert timeout - 1 < outcome["seconds"] < timeout + 15, outcome
        assert "Timed out" in outcome["message"] or "closed" in outcome["message"]
