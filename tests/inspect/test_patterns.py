"""Tiles, top keys and pooled overviews against a float64 softmax computed here from q and k."""

import math

import pytest
import torch

from attnkit import attention
from attnkit.inspect import patterns
from attnkit.inspect.patterns import HeadPattern, pooled, top_keys


def _oracle(q, k, head, causal, mask=None):
    """Full ``[query, key]`` pattern of one head, float64, straight from the definition."""
    hq, hkv = q.shape[1], k.shape[1]
    qh = q[0, head].double()  # (Sq, D)
    kh = k[0, head // (hq // hkv)].double()  # (Sk, D)
    s = qh @ kh.T / math.sqrt(q.shape[-1])  # (Sq, Sk)
    sq, sk = s.shape
    visible = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        visible &= torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + sk - sq
    if mask is not None:
        visible &= mask.reshape(-1, sk)[0] if mask.shape[-2] == 1 else mask[0, 0]
    return torch.softmax(s.masked_fill(~visible, -math.inf), dim=-1)


@pytest.fixture
def call():
    q = torch.randn(1, 4, 37, 8)  # (B, Hq, Sq, D)
    k = torch.randn(1, 2, 37, 8)  # (B, Hkv, Sk, D): grouped, 2 query heads per kv head
    v = torch.randn(1, 2, 37, 8)
    pad = torch.ones(1, 1, 1, 37, dtype=torch.bool)
    pad[..., -3:] = False  # last three keys are padding
    _, lse = attention(q, k, v, causal=True, mask=pad, return_lse=True)
    return q, k, lse, pad


def test_tile_is_exact(call):
    q, k, lse, pad = call
    head = HeadPattern.from_call(q, k, lse, head=3, causal=True, mask=pad, backend="blockwise")
    want = _oracle(q, k, 3, True, pad)
    got = head.tile(slice(5, 20), slice(2, 30))
    torch.testing.assert_close(got.double(), want[5:20, 2:30], atol=1e-6, rtol=1e-5)
    assert torch.allclose(head.tile().sum(-1).double(), torch.ones(37, dtype=torch.float64))


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_pooled_matches_pooling_the_full_pattern(call, reduce, monkeypatch):
    q, k, lse, pad = call
    monkeypatch.setattr(patterns, "ROW_BUDGET", 50)  # force many row chunks
    head = HeadPattern.from_call(q, k, lse, head=1, causal=True, mask=pad)
    full = _oracle(q, k, 1, True, pad).float()  # (37, 37)
    view = pooled(head, size=10, reduce=reduce)  # blocks of 4 → 10 x 10, last block has 1 row
    assert (view.row_block, view.col_block) == (4, 4)
    assert view.values.shape == (10, 10)
    for a in range(10):
        for b in range(10):
            block = full[a * 4:(a + 1) * 4, b * 4:(b + 1) * 4]
            want = block.max() if reduce == "max" else block.mean()
            assert abs(float(view.values[a, b]) - float(want)) < 1e-6


def test_pooled_small_region_is_exact(call):
    q, k, lse, pad = call
    head = HeadPattern.from_call(q, k, lse, head=0, causal=True, mask=pad)
    view = pooled(head, rows=(10, 20), cols=(0, 12), size=64)
    assert (view.row_block, view.col_block) == (1, 1)
    torch.testing.assert_close(view.values.double(), _oracle(q, k, 0, True, pad)[10:20, 0:12],
                               atol=1e-6, rtol=1e-5)


def test_long_overview_never_builds_full_pattern(monkeypatch):
    n = 2048
    q = torch.randn(1, 1, n, 16)
    k = torch.randn(1, 1, n, 16)
    _, lse = attention(q, k, k, causal=True, return_lse=True)
    seen = []
    base = HeadPattern.from_call(q, k, lse, causal=True)

    def spy(rows, cols):
        out = base.tile(rows, cols)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(patterns, "ROW_BUDGET", 64 * 1024)
    view = pooled(HeadPattern(n, n, spy), size=128)
    assert view.values.shape == (128, 128)
    assert max(seen) <= 64 * 1024 < n * n
    # the diagonal blocks hold each query's own key, and causal blocks above it are empty
    assert float(view.values[5, 100]) == 0.0


def test_top_keys(call):
    q, k, lse, pad = call
    head = HeadPattern.from_call(q, k, lse, head=2, causal=True, mask=pad)
    row = _oracle(q, k, 2, True, pad)[30]
    got = top_keys(head, 30, k=3)
    want = torch.topk(row, 3)
    assert [j for j, _ in got] == want.indices.tolist()
    assert all(abs(w - float(x)) < 1e-6 for (_, w), x in zip(got, want.values, strict=True))


def test_errors_name_the_range(call):
    q, k, lse, pad = call
    with pytest.raises(ValueError, match=r"head 4 is out of range: the call has 4 query heads"):
        HeadPattern.from_call(q, k, lse, head=4)
    head = HeadPattern.from_call(q, k, lse, head=0, causal=True)
    with pytest.raises(ValueError, match=r"rows range 30\.\.40 is outside the pattern.*<= 37"):
        pooled(head, rows=(30, 40))
    with pytest.raises(ValueError, match="reduce must be 'max' or 'mean'"):
        pooled(head, reduce="sum")
    with pytest.raises(ValueError, match=r"query 37 is out of range.*0\.\.36"):
        top_keys(head, 37)
