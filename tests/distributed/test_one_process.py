"""attnkit.distributed in this process: what it says before torch.distributed is set up, what
``import attnkit`` loads, and a group of one rank (which must be plain ``attnkit.attention``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import attnkit
import attnkit.distributed as akd
from tests.distributed.launch import ROOT


def test_a_clear_error_before_init_process_group():
    if dist.is_initialized():
        pytest.skip("torch.distributed is already initialized in this process")
    q = torch.randn(1, 2, 4, 8)
    for call in (lambda: akd.attention(q, q, q, layout="zigzag"),
                 lambda: akd.shard(q, layout="zigzag")):
        with pytest.raises(attnkit.AttnkitError, match="init_process_group"):
            call()


def test_imports_stay_light():
    code = ("import sys, attnkit; assert 'attnkit.distributed' not in sys.modules; "
            "import attnkit.distributed as akd; "
            "assert 'transformers' not in sys.modules and 'matplotlib' not in sys.modules; "
            "akd.context_parallel; assert 'attnkit.distributed.models' in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.fixture(scope="module")
def one_rank():
    if dist.is_initialized():
        pytest.skip("torch.distributed is already initialized in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("mode", akd.MODES)
@pytest.mark.parametrize("layout", akd.LAYOUTS)
def test_one_rank_is_plain_attention(one_rank, layout, mode):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    pad = torch.rand(2, 6, generator=gen) > 0.2
    assert torch.equal(akd.shard(q, layout=layout), q)
    assert torch.equal(akd.unshard(q, layout=layout), q)
    assert akd.positions(6, layout=layout).tolist() == list(range(6))
    out, lse = akd.attention(q, k, k, layout=layout, mode=mode, causal=True, window=(3, 0),
                             key_mask=pad, return_lse=True)
    ref, ref_lse = attnkit.attention(q, k, k, causal=True, window=(3, 0),
                                     mask=pad[:, None, None, :], return_lse=True)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
    (grad_q,) = torch.autograd.grad(out.sum(), q)
    (ref_grad_q,) = torch.autograd.grad(ref.sum(), q)
    assert torch.equal(grad_q, ref_grad_q)


def test_one_rank_errors_name_the_fix(one_rank):
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(attnkit.AttnkitError, match="must be even"):
        akd.attention(q, q, q, layout="zigzag")
    with pytest.raises(attnkit.AttnkitError, match="required|layout"):
        akd.attention(q, q, q, layout=None)
    with pytest.raises(TypeError, match="layout"):
        akd.attention(q, q, q)  # no default: a silently mismatched layout would be wrong
    with pytest.raises(attnkit.AttnkitError, match="n_local must be an int"):
        akd.positions(-1, layout="contiguous")
