"""KV-cache decoding: token by token with the cache equals one full causal forward."""

import pytest
import torch

import attnkit
from attnkit import KVCache, MultiHeadAttention
from attnkit.kernels.recording import recording


class Recorder:
    """Keeps what attend() hands over, so patterns can be recomputed with attnkit.pattern."""

    def __init__(self):
        self.calls = []

    def wants(self, module):
        return True

    def record(self, module, q, k, lse, options):
        self.calls.append((q, k, lse, options))

    def patterns(self):
        return [attnkit.pattern(q, k, lse, **opts) for q, k, lse, opts in self.calls]


@pytest.mark.parametrize("chunks", [[1] * 9, [4, 1, 1, 3]], ids=["token-by-token", "prefill"])
def test_decoding_with_the_cache_equals_one_full_causal_forward(chunks):
    torch.manual_seed(1)
    mha = MultiHeadAttention(24, n_heads=6, n_kv_heads=2, bias=True, dtype=torch.float64)  # grouped
    with torch.no_grad():
        mha.b_K.normal_()
    E = torch.randn(2, sum(chunks), 24, dtype=torch.float64)
    full_rec, step_rec = Recorder(), Recorder()
    with torch.no_grad():
        with recording(full_rec):
            full = mha(E)  # (2, 9, 24)
        cache = mha.new_cache(batch=2, max_len=12)
        steps, start = [], 0
        with recording(step_rec):
            for n in chunks:
                steps.append(mha(E[:, start : start + n], cache=cache))
                start += n
    assert cache.length == sum(chunks)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-12, rtol=1e-10)

    # the patterns, recomputed exactly from each step's q, k and lse
    (P_full,) = full_rec.patterns()  # (2, 6, 9, 9)
    start = 0
    for n, P_step in zip(chunks, step_rec.patterns(), strict=True):
        assert P_step.shape == (2, 6, n, start + n)  # queries of this step, keys so far
        torch.testing.assert_close(P_step, P_full[:, :, start : start + n, : start + n],
                                   atol=1e-12, rtol=1e-10)
        start += n
    # and the cache holds the full forward's keys
    q, k, lse, _ = full_rec.calls[0]
    torch.testing.assert_close(cache.keys(), k)


def test_cache_works_for_unbatched_E_and_can_be_reset():
    mha = MultiHeadAttention(8, n_heads=2)
    E = torch.randn(5, 8)
    cache = mha.new_cache(1, 5)
    with torch.no_grad():
        out = torch.cat([mha(E[i : i + 1], cache=cache) for i in range(5)])
        torch.testing.assert_close(out, mha(E), atol=1e-5, rtol=1e-5)
        cache.reset()
        assert cache.length == 0
        torch.testing.assert_close(mha(E, cache=cache), mha(E), atol=1e-5, rtol=1e-5)
    assert "length=5, max_len=5" in repr(cache)


def test_a_cache_from_another_module_is_a_clear_error():
    layer0, layer1 = MultiHeadAttention(8, n_heads=2), MultiHeadAttention(8, n_heads=2)
    cache = layer0.new_cache(1, 4)
    with pytest.raises(ValueError,
                       match=r"made by another module.*layer.new_cache\(batch, max_len\)"):
        layer1(torch.randn(1, 1, 8), cache=cache)


def test_a_full_cache_is_a_clear_error():
    mha = MultiHeadAttention(8, n_heads=2)
    cache = mha.new_cache(1, 3)
    with torch.no_grad():
        mha(torch.randn(1, 2, 8), cache=cache)
        with pytest.raises(ValueError, match=r"cache is full: it holds 2 of max_len=3 positions "
                                             r"and cannot take 2 more.*max_len=4"):
            mha(torch.randn(1, 2, 8), cache=cache)
    assert cache.length == 2  # the failed call changed nothing


def test_other_cache_misuse_gives_clear_errors():
    mha = MultiHeadAttention(8, n_heads=2)
    cache = mha.new_cache(2, 4)
    with pytest.raises(ValueError, match=r"holds a batch of 2 sequences but E has batch 3"):
        mha(torch.randn(3, 1, 8), cache=cache)
    with pytest.raises(TypeError, match="cache must be a KVCache from new_cache"):
        mha(torch.randn(2, 1, 8), cache={"k": None})
    with pytest.raises(ValueError, match="max_len must be a positive integer; got 0"):
        mha.new_cache(2, 0)
    cross = MultiHeadAttention(8, n_heads=2, causal=False)
    with pytest.raises(ValueError, match="cache= works with self-attention only"):
        cross(torch.randn(2, 1, 8), context=torch.randn(2, 3, 8), cache=cross.new_cache(2, 4))
    mha.double()
    with pytest.raises(ValueError, match="make a new cache after moving the module"):
        mha(torch.randn(2, 1, 8, dtype=torch.float64), cache=cache)
    assert isinstance(cache, KVCache)
