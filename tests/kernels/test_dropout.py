"""The seeded dropout mask: its definition, its statistics, and that every backend and both
passes use the same one."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.kernels import dropout
from tests.kernels.test_oracle import make_qkv
from tests.kernels.tiles import small_tiles

M64 = (1 << 64) - 1


def signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def mix64(x: int) -> int:
    """SplitMix64's finalizer on Python ints."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & M64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & M64
    return x ^ (x >> 31)


def key_of(seed: int, stream: int, coords) -> int:
    x = (seed * 0x9E3779B97F4A7C15 + stream) & M64
    for c in coords:
        x = mix64(((x + 0x9E3779B97F4A7C15) & M64) ^ c)
    return x


def is_dropped(seed: int, p: float, b: int, h: int, i: int, j: int) -> bool:
    """The module docstring's definition, transcribed with Python's unbounded ints."""
    x = (key_of(seed, dropout._ROWS, [b, h, i]) ^ key_of(seed, dropout._KEYS, [j])) \
        * 0xBF58476D1CE4E5B9 & M64
    x ^= (signed(x) >> 29) & M64  # arithmetic shift
    x = signed(x * 0x94D049BB133111EB & M64)
    return x < -(1 << 63) + round(p * 2**64)


@pytest.mark.parametrize("seed", [0, 1, 2**62 + 12345, dropout.SEED_LIMIT - 1])
def test_the_mask_is_the_documented_hash(seed):
    kept = dropout.keep_mask(seed, 0.3, 2, 3, 4, 5)
    expected = torch.tensor([[[[not is_dropped(seed, 0.3, b, h, i, j) for j in range(5)]
                               for i in range(4)] for h in range(3)] for b in range(2)])
    assert torch.equal(kept, expected)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_keep_rate_is_one_minus_p(p):
    kept = dropout.keep_mask(7, p, 2, 8, 512, 512)  # 4M cells
    sigma = (p * (1 - p) / kept.numel()) ** 0.5
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * sigma
    # per row too: no row is far from the rate (a broken key would give all-or-nothing rows)
    rows = kept.double().mean(-1)
    assert (rows - (1 - p)).abs().max() < 6 * (p * (1 - p) / 512) ** 0.5


def test_cells_look_independent_across_seeds_and_positions():
    p = 0.5
    kept = dropout.keep_mask(11, p, 2, 4, 256, 256).double()  # (B, H, Sq, Sk)
    n = kept[0, 0].numel()
    tol = 6 * (0.25 / n) ** 0.5

    def agreement(a, b):  # independent fair cells agree half the time
        return (a == b).double().mean().item()

    other_seed = dropout.keep_mask(12, p, 2, 4, 256, 256).double()
    assert abs(agreement(kept, other_seed) - 0.5) < tol
    assert abs(agreement(kept[0], kept[1]) - 0.5) < tol  # batches
    assert abs(agreement(kept[:, 0], kept[:, 1]) - 0.5) < tol  # heads
    assert abs(agreement(kept[..., 1:, :], kept[..., :-1, :]) - 0.5) < tol  # next query
    assert abs(agreement(kept[..., 1:], kept[..., :-1]) - 0.5) < tol  # next key
    # rows keyed by XOR: the four corners of a 2 x 2 block must not cancel
    corners = kept[..., 1:, 1:] + kept[..., :-1, 1:] + kept[..., 1:, :-1] + kept[..., :-1, :-1]
    assert abs((corners % 2).mean().item() - 0.5) < tol


def test_the_mask_of_a_position_does_not_depend_on_the_shape():
    small = dropout.keep_mask(5, 0.4, 1, 2, 10, 20)
    large = dropout.keep_mask(5, 0.4, 3, 4, 30, 50)
    assert torch.equal(small, large[:1, :2, :10, :20])


def test_reference_and_blockwise_draw_the_same_mask_on_any_tiling():
    q, k, v = make_qkv((2, 6, 3, 70, 90, 8, 5), torch.Generator().manual_seed(1))
    opts = dict(dropout_p=0.4, dropout_seed=2024, causal=True, return_lse=True)
    ref, ref_lse = attnkit.attention(q, k, v, backend="reference", **opts)
    out, lse = attnkit.attention(q, k, v, backend="blockwise", **opts)
    with small_tiles():
        tiled, tiled_lse = attnkit.attention(q, k, v, backend="blockwise", **opts)
    for a in (out, tiled):
        torch.testing.assert_close(a, ref, rtol=1e-12, atol=1e-12)
    # the lse is the one before dropout
    plain = attnkit.attention(q, k, v, causal=True, return_lse=True)[1]
    for a in (ref_lse, lse, tiled_lse):
        torch.testing.assert_close(a, plain, rtol=1e-12, atol=1e-12)
    # and out is pattern-after-dropout times v: dropped cells are exactly 0
    p = attnkit.pattern(q, k, lse, causal=True, dropout_p=0.4, dropout_seed=2024)
    torch.testing.assert_close(out, p @ v.repeat_interleave(2, dim=1), rtol=1e-12, atol=1e-12)
    kept = dropout.keep_mask(2024, 0.4, 2, 6, 70, 90)
    before = attnkit.pattern(q, k, lse, causal=True)
    assert torch.equal(p == 0, (before == 0) | ~kept)
    torch.testing.assert_close(p[kept], before[kept] / 0.6, rtol=1e-14, atol=0)


def test_pattern_slices_after_dropout():
    q, k, v = make_qkv((1, 2, 2, 30, 40, 8, 8), torch.Generator().manual_seed(2))
    opts = dict(dropout_p=0.25, dropout_seed=9, window=(10, 3))
    _, lse = attnkit.attention(q, k, v, return_lse=True, **opts)
    full = attnkit.pattern(q, k, lse, **opts)
    rows, cols = [29, 0, 7, 7], slice(35, 4, -3)
    part = attnkit.pattern(q, k, lse, rows=rows, cols=cols, **opts)
    expected = full[:, :, rows][..., list(range(40))[cols]]
    assert torch.equal(part == 0, expected == 0)  # the same cells dropped (and hidden)
    torch.testing.assert_close(part, expected, rtol=1e-14, atol=0)


def test_torch_manual_seed_makes_calls_reproducible():
    q, k, v = make_qkv((1, 2, 2, 16, 16, 8, 8), torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    first = attnkit.attention(q, k, v, dropout_p=0.5)
    second = attnkit.attention(q, k, v, dropout_p=0.5)
    assert not torch.equal(first, second)  # each call draws its own seed
    torch.manual_seed(5)
    assert torch.equal(attnkit.attention(q, k, v, dropout_p=0.5), first)
    torch.manual_seed(5)
    seed = dropout.draw_seed()  # the seed a call draws is the default generator's next one
    assert torch.equal(attnkit.attention(q, k, v, dropout_p=0.5, dropout_seed=seed), first)
    torch.testing.assert_close(attnkit.attention(q, k, v, dropout_p=0.5, dropout_seed=seed,
                                                 backend="reference"), first,
                               rtol=1e-12, atol=1e-12)


def test_the_backward_regenerates_the_forwards_mask(tiling):
    """gradcheck (float64) of out and lse with dropout: a backward that drew another mask, or
    none, has the wrong Jacobian."""
    q, k, v = make_qkv((1, 2, 1, 23, 45, 3, 2), torch.Generator().manual_seed(4))
    bias = torch.randn(1, 2, 23, 45, dtype=torch.float64)
    sinks = torch.randn(2, dtype=torch.float64)

    def f(q, k, v, bias, sinks):
        out, lse = attnkit.attention(q, k, v, bias=bias, sinks=sinks, softcap=1.5, window=(20, 3),
                                     dropout_p=0.3, dropout_seed=77, return_lse=True,
                                     backend="blockwise")
        return out, lse

    inputs = [t.requires_grad_() for t in (q, k, v, bias, sinks)]
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


def test_dropout_changes_the_output_by_what_it_drops():
    """The expectation over seeds is the output without dropout (kept cells scaled by 1/(1-p));
    averaged over 400 seeds within 5 standard errors."""
    q, k, v = make_qkv((1, 1, 1, 4, 6, 4, 3), torch.Generator().manual_seed(6))
    plain = attnkit.attention(q, k, v)
    runs = torch.stack([attnkit.attention(q, k, v, dropout_p=0.5, dropout_seed=s)
                        for s in range(400)])
    stderr = runs.std(0) / 20
    assert ((runs.mean(0) - plain).abs() < 5 * stderr + 1e-12).all()
