"""``akd.attention`` on real gloo processes on 127.0.0.1: 2, 3 and 4 ranks, every layout x mode x
mask x grouped heads with odd head dims, forward and backward, against one process.

float64 results (out, lse, dq, dk, dv) must equal one process's ``attnkit.attention`` within
1e-10; float32 results pass the oracle rule against the float64 reference. Each group of
processes runs many cases (one start-up, ~10 s on this machine, for all of them).
"""

from __future__ import annotations

import itertools

import pytest

from tests.distributed.launch import launch

LAYOUTS = ("contiguous", "zigzag")
MODES = ("ring", "allgather", "ulysses")
MASKS = ("none", "causal", "window", "window2", "right")


def full_matrix() -> list[dict]:
    """Every layout x mode x mask x (12 query heads over 12 or 3 key heads), head dims 7 and 5,
    key padding on the causal and window cases (early rows of one sequence see no key), and a
    few with fewer queries than keys (bottom-right causal across shards) and one key head."""
    configs = []
    for i, (layout, mode, mask, hkv) in enumerate(itertools.product(LAYOUTS, MODES, MASKS,
                                                                    (12, 3))):
        configs.append({"layout": layout, "mode": mode, "mask": mask, "hq": 12, "hkv": hkv,
                        "nq": 4, "padding": mask in ("causal", "window"), "seed": i,
                        **SCORE_OPTIONS[i % 4]})
    for i, (layout, mode, mask) in enumerate(itertools.product(LAYOUTS, MODES,
                                                               ("causal", "window2"))):
        configs.append({"layout": layout, "mode": mode, "mask": mask, "hq": 12, "hkv": 1,
                        "nq": 2, "nk": 6, "d": 9, "dv": 3, "padding": True, "seed": 100 + i,
                        **SCORE_OPTIONS[i % 4]})
    return configs


# a quarter of the cases each: plain, Gemma 2's soft-capping, GPT-OSS's sinks, both (sinks with
# padding: rows that see no key get lse = sink)
SCORE_OPTIONS = ({}, {"softcap": 1.5}, {"sinks": True}, {"softcap": 1.5, "sinks": True})


def float32_matrix() -> list[dict]:
    return [{"layout": layout, "mode": mode, "mask": mask, "hq": 12, "hkv": 3, "nq": 6, "d": 17,
             "dv": 11, "padding": mask == "window", "dtype": "float32", "seed": 200 + i,
             **SCORE_OPTIONS[i % 4]}
            for i, (layout, mode, mask) in enumerate(itertools.product(
                LAYOUTS, MODES, ("none", "causal", "window", "window2")))]


def half_matrix() -> list[dict]:
    """bfloat16: blocks computed in the input dtype, merged in float32."""
    return [{"layout": "zigzag", "mode": mode, "mask": mask, "hq": 4, "hkv": 2, "nq": 8,
             "d": 16, "dv": 16, "dtype": "bfloat16", "seed": 300 + i}
            for i, (mode, mask) in enumerate(itertools.product(MODES, ("causal", "window2")))]


def results(ranks: list[dict], case: int) -> list:
    """Case ``case``'s result on every rank (failing with the traceback if it raised)."""
    out = []
    for rank, ran in enumerate(ranks):
        got = ran["results"][case]
        assert got["ok"], f"rank {rank}: {got['traceback']}"
        out.append(got["result"])
    return out


def check_float64(per_rank: list[dict]) -> None:
    assert per_rank[0]["results"], "no cases ran"
    for results_of_config in zip(*(r["results"] for r in per_rank)):
        cfg = results_of_config[0]["cfg"]
        assert ("dsinks" in results_of_config[0]["err"]) == bool(cfg.get("sinks")), cfg
        for name in results_of_config[0]["err"]:
            worst = max(r["err"][name] for r in results_of_config)
            assert worst <= 1e-10, f"{name} differs from one process by {worst:.3g}: {cfg}"


def check_float32(per_rank: list[dict]) -> None:
    for results_of_config in zip(*(r["results"] for r in per_rank)):
        cfg = results_of_config[0]["cfg"]
        scale = max(r["grad_scale"] for r in results_of_config)
        for name in results_of_config[0]["err"]:
            err = max(r["err"][name] for r in results_of_config)
            ref = max(r["ref_err"][name] for r in results_of_config)
            factor, floor = (2, 1e-6) if name in ("out", "lse") else (3, 1e-5 * max(1, scale))
            assert err <= factor * ref + floor, (
                f"{name}: error {err:.3g} > {factor} x reference-in-float32 error {ref:.3g} + "
                f"{floor:.3g}: {cfg}")


# ---- 2 ranks: the whole matrix, float32, errors, layouts, PyTorch's own ring ----------------

@pytest.fixture(scope="module")
def two_ranks():
    control = {"layout": "zigzag", "call_layout": "contiguous", "mode": "ring", "mask": "causal",
               "hq": 2, "hkv": 1, "nq": 4}
    return launch(2, [("matrix", {"configs": full_matrix()}),
                      ("matrix", {"configs": float32_matrix()}),
                      ("errors", {}), ("layouts", {}), ("torch_ring", {}),
                      ("matrix", {"configs": [control]}),
                      ("matrix", {"configs": half_matrix()})])


def test_float64_equals_one_process_on_2_ranks(two_ranks):
    check_float64(results(two_ranks, 0))


def test_float32_meets_the_oracle_rule_on_2_ranks(two_ranks):
    check_float32(results(two_ranks, 1))


def test_bfloat16_meets_the_oracle_rule_on_2_ranks(two_ranks):
    check_float32(results(two_ranks, 6))


def test_a_wrong_layout_is_caught_by_these_checks(two_ranks):
    # the comparison can fail: sharded zigzag but called as contiguous gives wrong answers
    worst = max(r["results"][0]["err"]["out"] for r in results(two_ranks, 5))
    assert worst > 1e-3


def test_errors_are_raised_on_every_rank_and_the_group_stays_usable(two_ranks):
    check_errors(results(two_ranks, 2), world=2)


def test_shard_unshard_positions(two_ranks):
    check_layouts(results(two_ranks, 3))


def test_equals_pytorch_templated_ring_attention(two_ranks):
    """PyTorch's private ring attention (``_templated_ring_attention`` with the CPU flash kernel,
    forward and backward) runs on gloo in torch 2.13; it implements zigzag for causal and
    contiguous otherwise. In float64 it agrees with ours to rounding once told not to merge in
    float32 (its default ``convert_to_f32`` merges every dtype in float32)."""
    per_rank = results(two_ranks, 4)
    if "skipped" in per_rank[0]:
        pytest.skip(per_rank[0]["skipped"])
    for rank in per_rank:
        for case, errs in rank.items():
            bound = 1e-10 if "float64" in case else 2e-6
            for name, err in errs.items():
                assert err <= bound, f"{case} {name}: {err:.3g} from PyTorch's ring attention"


# ---- 3 and 4 ranks -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_ranks():
    # the ring's calls have at most 3 query rows here (chunks of 4 cut 3 + 1) and merge 2 rows
    # at a time: the sliced merge crosses the calls' rows
    return launch(3, [("matrix", {"configs": full_matrix(), "merge_rows": 2, "call_rows": 3}),
                      ("errors", {}), ("layouts", {})])


@pytest.mark.slow
def test_float64_equals_one_process_on_3_ranks(three_ranks):
    check_float64(results(three_ranks, 0))


@pytest.mark.slow
def test_errors_on_3_ranks(three_ranks):
    check_errors(results(three_ranks, 1), world=3)
    check_layouts(results(three_ranks, 2))


@pytest.fixture(scope="module")
def four_ranks():
    # tiny blockwise tiles on two threads: tile edges fall inside every local call
    return launch(4, [("matrix", {"configs": full_matrix(), "small_tiles": True}),
                      ("matrix", {"configs": float32_matrix()[::3]}), ("groups", {})])


@pytest.mark.slow
def test_float64_equals_one_process_on_4_ranks(four_ranks):
    check_float64(results(four_ranks, 0))
    check_float32(results(four_ranks, 1))


@pytest.mark.slow
def test_device_mesh_dimensions_and_subgroups(four_ranks):
    """A 2 x 2 DeviceMesh ("dp", "cp"): both rows split their own sequences at once, through
    ``mesh["cp"]``, ``(mesh, "cp")`` and ``(mesh, 1)``; then a ``new_group([1, 2])``."""
    per_rank = results(four_ranks, 2)
    for rank, got in enumerate(per_rank):
        for name, value in got.items():
            if "refused" in name:
                assert value["attnkit"], (name, value)
                continue
            errs = value["err"]
            assert max(errs.values()) <= 1e-10, (rank, name, errs)
    assert "2-D DeviceMesh" in per_rank[0]["2-D mesh refused"]["message"]
    assert "mesh['cp']" in per_rank[0]["2-D mesh refused"]["message"]
    assert "'tp'" in per_rank[0]["bad dim refused"]["message"]
    assert "new_group" in per_rank[1] and "new_group" in per_rank[2]
    assert "new_group" not in per_rank[0] and "new_group" not in per_rank[3]


# ---- shared checks -------------------------------------------------------------------------

EXPECTED = {  # case -> (error class, words the message must hold)
    "shard uneven": ("AttnkitError", ["cannot be split into W", "pad it to", "key_mask"]),
    "shard zigzag uneven": ("AttnkitError", ["cannot be split into 2W", "pad it to"]),
    "lengths differ": ("AttnkitError", ["disagree on q shape", "rank 0 has (1, 4, 2, 8)",
                                        "akd.shard"]),
    "zigzag odd": ("AttnkitError", ["local length 3", "must be even"]),
    "bad input on one rank": ("", ["q must be 4-D"]),
    "ulysses heads": ("AttnkitError", ["mode='ulysses'", "not a multiple of", "mode='ring'"]),
    "causal differs": ("AttnkitError", ["disagree on causal"]),
    "grad differs": ("AttnkitError", ["disagree on whether gradients are needed"]),
    "layout": ("AttnkitError", ["layout must be one of", "'striped'"]),
    "mode": ("AttnkitError", ["mode must be one of", "'tree'"]),
    "key mask shape": ("AttnkitError", ["key_mask of shape (1, 5)", "(B, nk) = (1, 4)"]),
    "key mask dtype": ("InputTypeError", ["key_mask must be boolean"]),
    "backend refuses": ("BackendUnsupportedError", ["backend 'sdpa'", "return_lse"]),
    "window": ("AttnkitError", ["window=(-1, 0)"]),
    "unshard lengths differ": ("AttnkitError", ["unshard", "disagree on shape"]),
    "group": ("InputTypeError", ["group must be None", "DeviceMesh"]),
    "dim": ("AttnkitError", ["dim=4 is not a dimension"]),
    "dropout": ("AttnkitError", ["does not apply dropout across shards", "dropout_p=0.1",
                                 "pass dropout_p=0"]),
    "sinks shape": ("AttnkitError", ["sinks must have shape (Hq,) = (4,)"]),
    "sinks differ": ("AttnkitError", ["disagree on sinks"]),
    "softcap": ("AttnkitError", ["softcap must be a finite number > 0"]),
}


def check_errors(per_rank: list[dict], world: int) -> None:
    """Every bad call raised an AttnkitError (a ValueError) on every rank, saying what is wrong,
    and the good call right after it worked (nothing was left half-sent)."""
    for name, (kind, words) in EXPECTED.items():
        for rank, got in enumerate(per_rank):
            outcome = got[name]
            assert outcome["type"] != "ok", f"{name}: rank {rank} raised nothing"
            assert outcome["attnkit"] and outcome["value_error"], (name, rank, outcome)
            if kind:
                assert outcome["type"] == kind, (name, rank, outcome)
            for word in words:
                assert word in outcome["message"], (name, rank, word, outcome["message"])
            assert got[name + " / then"]["type"] == "ok", (name, rank, got[name + " / then"])
    # the rank with the bad input names it; the others say which rank refused
    last = world - 1
    assert "refused its inputs" in per_rank[0]["bad input on one rank"]["message"]
    assert f"rank {last}" in per_rank[0]["bad input on one rank"]["message"]
    assert "refused" not in per_rank[last]["bad input on one rank"]["message"]


def check_layouts(per_rank: list[dict]) -> None:
    world = len(per_rank)
    for layout in LAYOUTS:
        seen = []
        for got in per_rank:
            assert got[layout] == {**got[layout], "part matches positions": True,
                                   "unshard is the whole": True, "grad is the sum": True}
            seen += got[layout]["positions"]
        assert sorted(seen) == list(range(4 * world))  # every position on exactly one rank
    n = 4 * world
    assert per_rank[0]["zigzag"]["positions"] == [0, 1, n - 2, n - 1]  # chunks 0 and 2W-1
