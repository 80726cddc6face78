"""What each rank runs for the attention tests (see ``worker.py``); results go back as JSON.

Every rank builds the same whole tensors from one seed, works on its shard through
``attnkit.distributed``, gathers the results and compares them with one process's
``attnkit.attention`` on the whole tensors (and, for float32, with the float64 reference).
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

import attnkit
import attnkit.distributed as akd

MASKS = {
    "none": {"causal": False, "window": None},
    "causal": {"causal": True, "window": None},
    "window": {"causal": True, "window": (5, 0)},
    "window2": {"causal": False, "window": (4, 2)},
    "right": {"causal": False, "window": (None, 3)},
}


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference where b is finite; -inf must match exactly; NaN is an error."""
    a, b = a.detach().double(), b.detach().double()
    if torch.isnan(a).any():
        return float("nan")
    if not torch.equal(torch.isinf(a), torch.isinf(b)):
        return float("inf")
    finite = torch.isfinite(b)
    return (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0


def _inputs(cfg: dict, world: int):
    gen = torch.Generator().manual_seed(cfg.get("seed", 0))
    b, hq, hkv = cfg.get("b", 2), cfg["hq"], cfg["hkv"]
    nq, nk = world * cfg["nq"], world * cfg.get("nk", cfg["nq"])
    d, dv = cfg.get("d", 7), cfg.get("dv", 5)
    q = torch.randn(b, hq, nq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hkv, nk, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hkv, nk, dv, generator=gen, dtype=torch.float64)
    g_out = torch.randn(b, hq, nq, dv, generator=gen, dtype=torch.float64)
    g_lse = torch.randn(b, hq, nq, generator=gen, dtype=torch.float64)
    sinks = None
    if cfg.get("sinks"):  # a few units either side of the scores: the sink takes a real share
        sinks = 2 * torch.randn(hq, generator=gen, dtype=torch.float64)
    mask = None
    if cfg.get("padding"):
        mask = torch.rand(b, nk, generator=gen) > 0.3
        mask[-1, : nk // 2] = False  # early queries of the last sequence see no key at all
    return q, k, v, g_out, g_lse, mask, sinks


def _options(cfg: dict) -> dict:
    """The mask options of ``cfg`` and its soft-cap (``"softcap"``: a number or absent)."""
    return {**MASKS[cfg["mask"]], "softcap": cfg.get("softcap")}


def _loss(out, lse, g_out, g_lse):
    # rows that saw no key have lse = -inf: they take no lse gradient (as in one process)
    return (out * g_out).sum() + (lse.masked_fill(torch.isneginf(lse), 0) * g_lse).sum()


def _single(q, k, v, g_out, g_lse, mask, sinks, opts, dtype, backend=None):
    """One process's result on the whole tensors: out, lse, dq, dk, dv (and dsinks)."""
    leaves = [t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v)]
    s = None if sinks is None else sinks.detach().to(dtype).clone().requires_grad_()
    m = None if mask is None else mask[:, None, None, :]
    out, lse = attnkit.attention(*leaves, mask=m, sinks=s, return_lse=True, backend=backend,
                                 **opts)
    _loss(out.double(), lse.double(), g_out, g_lse).backward()
    return [out.detach(), lse.detach()] + [t.grad for t in leaves] + ([] if s is None
                                                                      else [s.grad])


def _distributed(q, k, v, g_out, g_lse, mask, sinks, opts, dtype, layout, mode, group=None,
                 call_layout=None):
    """This rank's out, lse, dq, dk, dv through attnkit.distributed (``call_layout``: tell
    attention a different layout than the one used to shard — a control that must fail); with
    sinks also dsinks, summed over the group (each rank's is its rows' share)."""
    sh = dict(layout=layout, group=group)
    leaves = [akd.shard(t.to(dtype), **sh).detach().requires_grad_() for t in (q, k, v)]
    s = None if sinks is None else sinks.detach().to(dtype).clone().requires_grad_()
    key_mask = None if mask is None else akd.shard(mask, dim=1, **sh)
    out, lse = akd.attention(*leaves, key_mask=key_mask, sinks=s, return_lse=True, mode=mode,
                             layout=call_layout or layout, group=group, **opts)
    _loss(out.double(), lse.double(), akd.shard(g_out, **sh), akd.shard(g_lse, **sh)).backward()
    if s is not None:
        dist.all_reduce(s.grad, group=group)
    return [out.detach(), lse.detach()] + [t.grad for t in leaves] + ([] if s is None
                                                                      else [s.grad])


def _local(whole: list[torch.Tensor], layout: str, group=None) -> list[torch.Tensor]:
    """This rank's part of one process's results (compared on each rank: no gather needed);
    dsinks (the sixth, if any) is not sharded."""
    return [akd.shard(t, layout=layout, group=group) if i < 5 else t for i, t in enumerate(whole)]


NAMES = ("out", "lse", "dq", "dk", "dv", "dsinks")


def compare(cfg: dict, group=None) -> dict:
    world = dist.get_world_size(group)
    q, k, v, g_out, g_lse, mask, sinks = _inputs(cfg, world)
    opts = _options(cfg)
    dtype = getattr(torch, cfg.get("dtype", "float64"))
    layout = cfg["layout"]
    got = _distributed(q, k, v, g_out, g_lse, mask, sinks, opts, dtype, layout, cfg["mode"],
                       group, call_layout=cfg.get("call_layout"))
    result = {"cfg": cfg}
    if dtype == torch.float64:
        one = _local(_single(q, k, v, g_out, g_lse, mask, sinks, opts, dtype), layout, group)
        result["err"] = {n: _err(a, b) for n, a, b in zip(NAMES, got, one)}
    else:  # the oracle rule: against the float64 reference, next to the reference in dtype
        ref64 = _local(_single(q, k, v, g_out, g_lse, mask, sinks, opts, torch.float64,
                               "reference"), layout, group)
        ref = _local(_single(q, k, v, g_out, g_lse, mask, sinks, opts, dtype, "reference"),
                     layout, group)
        result["err"] = {n: _err(a, b) for n, a, b in zip(NAMES, got, ref64)}
        result["ref_err"] = {n: _err(a, b) for n, a, b in zip(NAMES, ref, ref64)}
        result["grad_scale"] = max(t.abs().max().item() for t in ref64[2:])
    return result


def matrix(configs: list[dict], merge_rows: int | None = None, small_tiles: bool = False,
           call_rows: int | None = None) -> dict:
    """``compare`` every config. ``merge_rows``: merge the ring's partial results that many rows
    at a time (small: the sliced path); ``small_tiles``: blockwise tiles of 16 x 40 on two worker
    threads, so tile edges fall inside the ring's calls; ``call_rows``: the ring's calls cut
    into that many query rows (small: every chunk cut, some unevenly)."""
    import contextlib

    import attnkit.distributed.plan as plan
    import attnkit.distributed.tiles as tiles

    if merge_rows is not None:
        tiles.MERGE_ROWS = merge_rows
    if call_rows is not None:
        plan.CALL_ROWS = call_rows
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if small_tiles:
            from tests.kernels.tiles import small_tiles as tiny

            stack.enter_context(tiny())
        results = [compare(cfg) for cfg in configs]
    return {"results": results, "seconds": time.perf_counter() - start}


def noop() -> dict:
    return {}


def _outcome(fn) -> dict:
    """Run ``fn``; the error's type, message and class family, or "ok"."""
    try:
        fn()
    except Exception as error:
        return {"type": type(error).__name__, "message": str(error),
                "attnkit": isinstance(error, attnkit.AttnkitError),
                "value_error": isinstance(error, ValueError)}
    return {"type": "ok"}


def errors() -> dict:
    """Bad calls, each on every rank: which error each rank raised. After each, one good call
    proves the group is still usable (nothing was left half-sent)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    q = torch.randn(1, 4, 4, 8)  # 4 query heads, local length 4
    good = {"layout": "zigzag", "causal": True}
    out = {}

    def check_good():
        return _outcome(lambda: akd.attention(q, q, q, **good))

    cases = {
        "shard uneven": lambda: akd.shard(torch.randn(1, 1, 4 * world + 1, 2), layout="contiguous"),
        "shard zigzag uneven": lambda: akd.shard(torch.randn(1, 1, 3 * world, 2),
                                                 layout="zigzag"),
        "lengths differ": lambda: akd.attention(q if rank else q[:, :, :2], q, q, **good),
        "zigzag odd": lambda: akd.attention(q[:, :, :3], q[:, :, :3], q[:, :, :3], **good),
        "bad input on one rank": lambda: akd.attention(q[0] if rank == world - 1 else q, q, q,
                                                       **good),
        "ulysses heads": lambda: akd.attention(*[torch.randn(1, world + 1, 4, 8)] * 3,
                                               mode="ulysses", layout="contiguous"),
        "causal differs": lambda: akd.attention(q, q, q, layout="zigzag", causal=rank == 0),
        "grad differs": lambda: akd.attention(q.clone().requires_grad_(rank == 0), q, q, **good),
        "layout": lambda: akd.attention(q, q, q, layout="striped"),
        "mode": lambda: akd.attention(q, q, q, layout="zigzag", mode="tree"),
        "key mask shape": lambda: akd.attention(q, q, q, key_mask=torch.ones(1, 5, dtype=bool),
                                                **good),
        "key mask dtype": lambda: akd.attention(q, q, q, key_mask=torch.ones(1, 4), **good),
        "backend refuses": lambda: akd.attention(q, q, q, backend="sdpa", **good),
        "window": lambda: akd.attention(q, q, q, layout="zigzag", window=(-1, 0)),
        "unshard lengths differ": lambda: akd.unshard(q[:, :, : 2 + 2 * (rank == 0)],
                                                      layout="zigzag"),
        "group": lambda: akd.attention(q, q, q, group="world", **good),
        "dim": lambda: akd.shard(q, layout="contiguous", dim=4),
        "dropout": lambda: akd.attention(q, q, q, dropout_p=0.1, **good),
        "sinks shape": lambda: akd.attention(q, q, q, sinks=torch.zeros(1, 4, 1, 1), **good),
        "sinks differ": lambda: akd.attention(q, q, q, sinks=torch.full((4,), float(rank)),
                                              **good),
        "softcap": lambda: akd.attention(q, q, q, softcap=0.0, **good),
    }
    for name, fn in cases.items():
        out[name] = _outcome(fn)
        out[name + " / then"] = check_good()
    return out


def dead(how: str, victim: int = 1, after_calls: int = 2) -> dict:
    """Rank ``victim`` stops in the middle of a ring call: it exits (``how="exit"``) or stalls
    for longer than the group's timeout (``how="stall"``). The others must fail with a clear
    ``CommunicationError`` within the timeout, not hang."""
    import attnkit.distributed.tiles as tiles

    rank = dist.get_rank()
    seen = {"calls": 0}
    real = tiles.attention

    def attention(*args, **kwargs):
        seen["calls"] += 1
        if rank == victim and seen["calls"] == after_calls:
            if how == "exit":
                os._exit(3)
            time.sleep(float(os.environ["ATTNKIT_TEST_PG_TIMEOUT"]) * 2.5)
        return real(*args, **kwargs)

    tiles.attention = attention
    torch.manual_seed(0)
    q = torch.randn(1, 2, 8, 4, requires_grad=True)
    start = time.perf_counter()
    outcome = _outcome(lambda: akd.attention(q, q, q, layout="zigzag", causal=True).sum()
                       .backward())
    outcome["seconds"] = time.perf_counter() - start
    outcome["communication_error"] = outcome["type"] == "CommunicationError"
    return outcome


def groups() -> dict:
    """Four ranks as a 2 x 2 DeviceMesh ("dp", "cp"): each "dp" row splits its own sequence over
    its two "cp" ranks, both rows at once; then a subgroup of ranks 1 and 2 made with
    new_group while ranks 0 and 3 wait. Every result against one process's."""
    from torch.distributed.device_mesh import init_device_mesh

    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "cp"))
    row = mesh.get_local_rank("dp")
    out = {}
    for name, group in (("mesh['cp']", mesh["cp"]), ("(mesh, 'cp')", (mesh, "cp")),
                        ("(mesh, 1)", (mesh, 1))):
        for mode in ("ring", "allgather", "ulysses"):
            cfg = {"hq": 4, "hkv": 2, "nq": 4, "seed": 10 + row}  # each row its own sequence
            inputs = _inputs(cfg, 2)
            got = _distributed(*inputs, MASKS["causal"], torch.float64, "zigzag", mode,
                               group=group)
            one = _local(_single(*inputs, MASKS["causal"], torch.float64), "zigzag", group)
            out[f"{name} {mode}"] = {"err": {n: _err(a, b) for n, a, b in zip(NAMES, got, one)}}
    out["2-D mesh refused"] = _outcome(lambda: akd.shard(torch.randn(1, 1, 8, 2),
                                                         layout="contiguous", group=mesh))
    out["bad dim refused"] = _outcome(lambda: akd.shard(torch.randn(1, 1, 8, 2),
                                                        layout="contiguous", group=(mesh, "tp")))
    sub = dist.new_group([1, 2])
    if rank in (1, 2):
        cfg = {"layout": "contiguous", "mode": "ring", "mask": "window2", "hq": 2, "hkv": 1,
               "nq": 6, "seed": 3}
        out["new_group"] = compare(cfg, group=sub)
    dist.barrier()
    return out


def layouts() -> dict:
    """shard / unshard / positions against plain indexing; unshard's gradient is the sum over
    ranks of what their whole copies receive."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.arange(2 * 4 * world * 3, dtype=torch.float64).reshape(2, 4 * world, 3)
    out = {}
    for layout in ("contiguous", "zigzag"):
        part = akd.shard(x, layout=layout, dim=1)
        pos = akd.positions(part.shape[1], layout=layout)
        whole = akd.unshard(part, layout=layout, dim=1)
        leaf = part.clone().requires_grad_()
        weight = torch.arange(x.numel(), dtype=torch.float64).reshape(x.shape) * (rank + 1)
        (akd.unshard(leaf, layout=layout, dim=1) * weight).sum().backward()
        expected_grad = torch.arange(x.numel(), dtype=torch.float64).reshape(x.shape)
        expected_grad = expected_grad * sum(r + 1 for r in range(world))
        out[layout] = {
            "part matches positions": torch.equal(part, x[:, pos]),
            "positions": pos.tolist(),
            "unshard is the whole": torch.equal(whole, x),
            "grad is the sum": torch.equal(leaf.grad, expected_grad[:, pos]),
        }
    return out


def torch_ring() -> dict:
    """Cross-check against PyTorch's own private ring attention (``_templated_ring_attention``
    with the CPU flash kernel), forward and backward: zigzag ("load balanced") when causal,
    contiguous otherwise — the only pairings it implements."""
    try:
        from torch.distributed.tensor.experimental._context_parallel._attention import (
            _cp_options,
            _templated_ring_attention,
            _templated_ring_attention_backward,
        )
    except ImportError as error:
        return {"skipped": f"torch {torch.__version__}: {error}"}
    aten = torch.ops.aten
    group = dist.group.WORLD
    out = {}
    for dtype in (torch.float64, torch.float32):
        for causal in (False, True):
            gen = torch.Generator().manual_seed(5)
            q, k, v, g = (torch.randn(2, 4, 8 * dist.get_world_size(), 16, generator=gen,
                                      dtype=dtype) for _ in range(4))
            layout = "zigzag" if causal else "contiguous"
            _cp_options.enable_load_balance = causal
            _cp_options.convert_to_f32 = dtype != torch.float64  # else it merges float64 in fp32
            ql, kl, vl, gl = (akd.shard(t, layout=layout) for t in (q, k, v, g))
            theirs, lse, *_ = _templated_ring_attention(
                group, 2, aten._scaled_dot_product_flash_attention_for_cpu, ql, kl, vl,
                is_causal=causal)
            grads = _templated_ring_attention_backward(
                group, 2, aten._scaled_dot_product_flash_attention_for_cpu_backward, gl,
                "grad_out", ql, kl, vl, theirs, lse, causal, dropout_p=0.0)
            leaves = [t.clone().requires_grad_() for t in (ql, kl, vl)]
            mine, my_lse = akd.attention(*leaves, layout=layout, causal=causal, return_lse=True)
            (mine * gl).sum().backward()
            out[f"{dtype} causal={causal}"] = {
                n: _err(a, b) for n, a, b in zip(NAMES, [mine, my_lse] + [t.grad for t in leaves],
                                                 [theirs, lse, *grads[:3]])}
    return out
