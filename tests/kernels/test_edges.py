"""The promises at the edges: rows that see nothing, huge scores, merge, pattern slices."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.errors import AttnkitError

BACKENDS = ["blockwise", "fused", "reference"]


def qkv(b, hq, hkv, sq, sk, d, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    ts = (torch.randn(b, hq, sq, d, generator=g, dtype=dtype),
          torch.randn(b, hkv, sk, d, generator=g, dtype=dtype),
          torch.randn(b, hkv, sk, d, generator=g, dtype=dtype))
    return [t.requires_grad_(requires_grad) for t in ts]


@pytest.mark.parametrize("backend", BACKENDS + ["sdpa"])
def test_fully_masked_rows_give_zeros_and_no_nan_gradients(backend):
    q, k, v = qkv(2, 2, 2, 37, 45, 16, requires_grad=True)
    mask = torch.rand(2, 1, 37, 45) > 0.5
    mask[0, :, 5] = False  # query 5 of batch 0 sees nothing
    mask[1, :, :3] = False
    if backend == "sdpa":
        out = attnkit.attention(q, k, v, mask=mask, backend=backend)
    else:
        out, lse = attnkit.attention(q, k, v, mask=mask, backend=backend, return_lse=True)
        assert torch.isneginf(lse[0, :, 5]).all() and torch.isneginf(lse[1, :, :3]).all()
        assert torch.isfinite(lse[0, :, 6:]).all()
    assert torch.equal(out[0, :, 5], torch.zeros_like(out[0, :, 5]))
    assert torch.equal(out[1, :, :3], torch.zeros_like(out[1, :, :3]))
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[0, :, 5], torch.zeros_like(q.grad[0, :, 5]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bottom_right_alignment_and_queries_that_see_nothing(backend):
    q, k, v = qkv(1, 1, 1, 10, 30, 8, requires_grad=True)
    # Sk - Sq = 20: with causal and left=0 each query sees exactly its diagonal key
    out, lse = attnkit.attention(q, k, v, causal=True, window=(0, 0), backend=backend,
                                 return_lse=True)
    torch.testing.assert_close(out, v[:, :, 20:].detach().to(out.dtype))
    # causal with Sq > Sk, aligned bottom-right: the first Sq - Sk queries see no key at all
    q2, k2, v2 = qkv(1, 1, 1, 30, 10, 8, seed=3)
    out, lse = attnkit.attention(q2, k2, v2, causal=True, backend=backend, return_lse=True)
    assert torch.equal(out[:, :, :20], torch.zeros(1, 1, 20, 8))
    assert torch.isneginf(lse[..., :20]).all()
    unmasked = attnkit.attention(q2, k2, v2, backend=backend)  # the last query sees every key
    torch.testing.assert_close(out[:, :, 29], unmasked[:, :, 29])
    empty = attnkit.attention(q, k[:, :, :0], v[:, :, :0], backend=backend, return_lse=True)
    assert torch.equal(empty[0], torch.zeros(1, 1, 10, 8)) and torch.isneginf(empty[1]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_scores_do_not_overflow(backend):
    q, k, v = qkv(1, 2, 2, 60, 70, 8, dtype=torch.float64)
    # scores as large as +-1e4 after scaling
    q = q / q.norm(dim=-1, keepdim=True) * 100 * 8 ** 0.25
    k = k / k.norm(dim=-1, keepdim=True) * 100 * 8 ** 0.25
    ref = attnkit.attention(q, k, v, backend="reference", causal=True)
    s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    assert s.abs().max() > 5e3
    out, lse = attnkit.attention(q.float(), k.float(), v.float(), backend=backend, causal=True,
                                 return_lse=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert (out.double() - ref).abs().max() < 1e-2  # winners take all; ties are rare


def test_merge_of_two_key_halves_equals_the_whole():
    q, k, v = qkv(2, 3, 3, 20, 50, 8, dtype=torch.float64)
    whole, lse = attnkit.attention(q, k, v, return_lse=True)
    a = attnkit.attention(q, k[:, :, :17], v[:, :, :17], return_lse=True)
    b = attnkit.attention(q, k[:, :, 17:], v[:, :, 17:], return_lse=True)
    out, merged_lse = attnkit.merge(*a, *b)
    torch.testing.assert_close(out, whole)
    torch.testing.assert_close(merged_lse, lse)


def test_merge_with_an_empty_side_contributes_nothing_and_never_nan():
    out = torch.randn(2, 5, 4)
    lse = torch.randn(2, 5)
    empty_lse = torch.full((2, 5), float("-inf"))
    merged, merged_lse = attnkit.merge(out, lse, torch.zeros_like(out), empty_lse)
    torch.testing.assert_close(merged, out)
    torch.testing.assert_close(merged_lse, lse)
    both, both_lse = attnkit.merge(torch.zeros_like(out), empty_lse, torch.zeros_like(out),
                                   empty_lse)
    assert torch.equal(both, torch.zeros_like(out)) and torch.isneginf(both_lse).all()


def test_merge_rejects_mismatched_halves():
    with pytest.raises(AttnkitError, match=r"out1 has shape \(2, 5, 4\) but out2 has \(2, 6, 4\)"):
        attnkit.merge(torch.zeros(2, 5, 4), torch.zeros(2, 5), torch.zeros(2, 6, 4),
                      torch.zeros(2, 6))
    with pytest.raises(AttnkitError, match=r"lse shapes \(2, 4\) and \(2, 5\)"):
        attnkit.merge(torch.zeros(2, 5, 4), torch.zeros(2, 4), torch.zeros(2, 5, 4),
                      torch.zeros(2, 5))


@pytest.mark.parametrize("opts", [dict(causal=True), dict(window=(7, 2)), dict(bias="heads"),
                                  dict(mask="keys", causal=True)])
def test_pattern_slices_equal_the_reference_pattern(opts):
    q, k, v = qkv(2, 4, 2, 40, 55, 16, dtype=torch.float64)
    opts = dict(opts)
    if opts.get("bias") == "heads":
        opts["bias"] = torch.randn(1, 4, 40, 55, dtype=torch.float64)
    if opts.get("mask") == "keys":
        opts["mask"] = torch.rand(2, 1, 1, 55) > 0.3
    _, lse = attnkit.attention(q, k, v, return_lse=True, backend="blockwise", **opts)
    full = attnkit.pattern(q, k, lse, **opts)  # (B, Hq, Sq, Sk)
    # the same pattern the materialized reference builds: softmax of the masked scores
    kk = k.repeat_interleave(2, dim=1)
    s = q @ kk.transpose(-1, -2) / 4.0
    if "bias" in opts:
        s = s + opts["bias"]
    from attnkit.kernels.api import validate
    from attnkit.kernels.reference import visibility
    spec, _ = validate(q, k, v, **opts)
    seen = visibility(spec, q.device)
    if seen is not None:
        s = s.masked_fill(~seen, float("-inf"))
    expected = torch.softmax(s, dim=-1).nan_to_num(0.0)
    torch.testing.assert_close(full, expected)
    rows, cols = torch.tensor([39, 0, 17]), slice(10, 30)
    part = attnkit.pattern(q, k, lse, rows=rows, cols=cols, **opts)
    torch.testing.assert_close(part, expected[:, :, rows][..., 10:30])
    assert part.shape == (2, 4, 3, 20)


def test_pattern_errors_name_the_fix():
    q, k, v = qkv(1, 2, 2, 6, 8, 4)
    _, lse = attnkit.attention(q, k, v, return_lse=True)
    with pytest.raises(AttnkitError, match=r"lse must have shape \(B, Hq, Sq\) = \(1, 2, 6\); "
                       r"got \(1, 2, 5\).*return_lse=True"):
        attnkit.pattern(q, k, lse[..., :5])
    with pytest.raises(AttnkitError, match=r"rows has positions outside 0\.\.5"):
        attnkit.pattern(q, k, lse, rows=[0, 9])
    with pytest.raises(AttnkitError, match=r"cols must be a slice or a 1-D list/tensor"):
        attnkit.pattern(q, k, lse, cols=torch.zeros(2, 2, dtype=torch.long))


# ---- issue 9: no silent wrong answers ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_that_sees_no_key_in_an_early_tile_still_sees_far_negative_scores(tiling, backend):
    # key 0 is outside query 1's window (the kernel's first key tile, cut at the band's edge,
    # shows it nothing); its one visible score is -200, far below exp()'s underflow: once the
    # running max was taken as 0 it became 0 and the row counted as empty
    q = torch.tensor([[[[1.0], [1.0]]]])
    k = torch.tensor([[[[1.0], [-200.0]]]])
    v = torch.tensor([[[[1.0], [2.0]]]])
    out, lse = attnkit.attention(q, k, v, window=(0, None), scale=1.0, backend=backend,
                                 return_lse=True)
    assert out.flatten().tolist() == [1.0, 2.0]
    assert lse.flatten().tolist() == [1.0, -200.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_narrow_window_with_huge_scale_across_small_tiles(tiling, dtype):
    """With window=(0, 8) and scale 1000 most rows' first visible tile is masked for them and
    their scores are hundreds below 0: every row must still get its output and finite lse."""
    from tests.kernels.oracle import assert_oracle

    q, k, v = qkv(2, 4, 2, 150, 150, 16, dtype=dtype, seed=5)
    opts = dict(window=(0, 8), scale=1000.0, return_lse=True)
    ref64, lse64 = attnkit.attention(q.double(), k.double(), v.double(), backend="reference",
                                     **opts)
    ref, ref_lse = attnkit.attention(q, k, v, backend="reference", **opts)
    out, lse = attnkit.attention(q, k, v, backend="blockwise", **opts)
    assert torch.isfinite(lse).all()
    assert_oracle(out, ref, ref64, 2, "output")
    assert_oracle(lse, ref_lse, lse64, 2, "lse")
