"""The CUDA backends on the kernels torch ships, both of which return the log-sum-exp.

``flash``: FlashAttention-2 (``aten._flash_attention_forward`` / ``_backward``), float16 and
bfloat16 on Ampere or newer. It takes attnkit's causal and sliding window as they are: its
windows are aligned bottom-right (query ``i`` sees keys ``i + Sk - Sq - left .. i + Sk - Sq +
right``), grouped-query heads are read directly, and tiles the band hides are skipped inside
the kernel. It takes no mask or bias.

``efficient``: the memory-efficient kernel (``aten._efficient_attention_forward`` /
``_backward``, from xformers), float32 too. It takes an additive bias (masks become ``-inf`` in
it; the bias may need a gradient) and causal aligned bottom-right (its ``custom_mask_type``
2), but no window.

What the kernels do not say themselves is arranged around them, as on the CPU:

- **layout**: they read ``(B, S, H, D)`` with a contiguous last dim; head dims are padded with
  zero columns to a multiple of 8 (no score changes);
- **rows that see no key**: FlashAttention-2 gives them ``lse = +inf``; the public lse has
  ``-inf`` and their output rows are 0, and the backward gets the kernel's convention back;
- **the lse's gradient**: their backward ops take only ``dO``. The lse's own term,
  ``dS = P * dlse``, comes from a second backward call with ``v = 0`` (so ``dP = 0``) and an
  output whose ``rowsum(dO * O)`` is ``-dlse``; it is needed only when a loss reads the lse;
- ``Dv != D`` (flash): the value head dim is padded like the others and the extra output
  columns dropped.

No GPU was available where this was written: the op signatures are torch 2.13's (checked on fake
CUDA tensors in the tests), their semantics as torch's sources and FlashAttention's document
them, and ``benchmarks/gpu_check.py`` runs the float64-oracle property tests on a GPU.
"""

from __future__ import annotations

import torch

from attnkit.kernels.compiled import Split
from attnkit.kernels.masks import MaskSpec
from attnkit.kernels.reference import reference_attention

FLASH_OPS = ("_flash_attention_forward", "_flash_attention_backward")
EFFICIENT_OPS = ("_efficient_attention_forward", "_efficient_attention_backward")
FLASH_DTYPES = (torch.float16, torch.bfloat16)
EFFICIENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FLASH_MAX_HEAD_DIM = 256
CAUSAL_BOTTOM_RIGHT = 2  # the efficient kernel's custom_mask_type for attnkit's causal


def find_ops(names: tuple[str, str], aten=None) -> tuple | None:
    """The forward and backward ops ``names`` in ``aten`` (default ``torch.ops.aten``), or None
    when this torch does not have them."""
    aten = torch.ops.aten if aten is None else aten
    ops = tuple(getattr(aten, name, None) for name in names)
    return ops if all(op is not None for op in ops) else None


_FLASH = find_ops(FLASH_OPS)
_EFFICIENT = find_ops(EFFICIENT_OPS)


# ---- what each kernel can do ---------------------------------------------------------------


def _cuda_refusal(q: torch.Tensor, ops, names: tuple[str, str], available) -> str | None:
    if ops is None:
        return f"this torch ({torch.__version__}): it has no aten.{names[0]}"
    if q.device.type != "cuda":
        return f"tensors on {q.device} (it runs on CUDA)"
    if not available():
        return f"this torch build or GPU (torch.backends.cuda says {names[0]} is unavailable)"
    return None


def _flash_available() -> bool:
    check = getattr(torch.backends.cuda, "is_flash_attention_available", None)
    return check is None or bool(check())


def flash_unsupported(spec: MaskSpec, return_lse: bool, q: torch.Tensor) -> str | None:
    """Why FlashAttention-2 cannot compute this call exactly, or None when it can."""
    why = _cuda_refusal(q, _FLASH, FLASH_OPS, _flash_available)
    if why is not None:
        return why
    if q.dtype not in FLASH_DTYPES:
        return f"dtype {q.dtype} (FlashAttention-2 takes float16 and bfloat16)"
    major, _ = torch.cuda.get_device_capability(q.device)
    if major < 8:
        return f"this GPU (compute capability {major}.x; FlashAttention-2 needs 8.0 or newer)"
    if spec.mask is not None or spec.bias is not None:
        return "mask= or bias= (FlashAttention-2 takes causal and windows only)"
    if _rounded(max(q.shape[-1], 1)) > FLASH_MAX_HEAD_DIM:
        return f"head_dim {q.shape[-1]} (FlashAttention-2 takes at most {FLASH_MAX_HEAD_DIM})"
    return None


def efficient_unsupported(spec: MaskSpec, return_lse: bool, q: torch.Tensor) -> str | None:
    """Why the memory-efficient kernel cannot compute this call exactly, or None when it can."""
    why = _cuda_refusal(q, _EFFICIENT, EFFICIENT_OPS, lambda: True)
    if why is not None:
        return why
    if q.dtype not in EFFICIENT_DTYPES:
        return f"dtype {q.dtype} (the memory-efficient kernel takes float32, float16, bfloat16)"
    if spec.window is not None and (spec.left is not None or spec.window[1] is not None):
        return f"window={spec.window} (the memory-efficient kernel has no sliding window)"
    return None


# ---- layout --------------------------------------------------------------------------------


def _rounded(n: int, multiple: int = 8) -> int:
    return -(-n // multiple) * multiple


def _bshd(x: torch.Tensor, e: int) -> torch.Tensor:
    """``(B, H, S, d)`` → ``(B, S, H, e)`` with zero columns up to ``e`` and a contiguous last
    dim, as the kernels read it (a view when nothing needs changing)."""
    x = x.transpose(1, 2)
    if x.shape[-1] != e:
        x = torch.nn.functional.pad(x, (0, e - x.shape[-1]))
    return x if x.stride(-1) == 1 else x.contiguous()


def _bhsd(x: torch.Tensor, d: int) -> torch.Tensor:
    """``(B, S, H, e)`` → ``(B, H, S, d)``: the first ``d`` columns, a view."""
    return x.transpose(1, 2).narrow(-1, 0, d)


def _empty_call(q, k, v, spec: MaskSpec) -> bool:
    return 0 in (q.shape[0], spec.hq, spec.sq, spec.sk, q.shape[-1])


def _empty_result(q, k, v, spec: MaskSpec, scale: float):
    """A call with no rows, no keys or no head dims: the plain ops of the reference give the
    empty or zero results, ``lse = -inf``, and their autograd links (the kernels are never
    called on empty tensors)."""
    return reference_attention(q, k, v, spec, scale)


def _rows_seeing_keys(spec: MaskSpec, device: torch.device) -> torch.Tensor | None:
    """Boolean ``(B|1, Hq|1, Sq)``: which queries see some key; None when all do. (The band's
    part is worked out in ints: no tensor is read back from the GPU.)"""
    seen = None
    off, left, right = spec.offset, spec.left, spec.right
    first = 0 if right is None else max(0, -off - right)  # i + off + right >= 0
    last = spec.sq if left is None else min(spec.sq, spec.sk - off + left)  # i + off - left < Sk
    if first > 0 or last < spec.sq:
        rows = torch.arange(spec.sq, device=device)
        seen = ((rows >= first) & (rows < last)).view(1, 1, spec.sq)
    if spec.mask is not None or spec.bias is not None:
        visible = torch.ones((), dtype=torch.bool, device=device)
        if spec.mask is not None:
            visible = visible & spec.mask
        if spec.bias is not None:
            visible = visible & ~torch.isneginf(spec.bias)
        if spec.has_band:
            cols = torch.arange(spec.sk, device=device)
            visible = visible & spec.band(torch.arange(spec.sq, device=device), cols)
        visible = visible.expand(*visible.shape[:2], spec.sq, spec.sk).any(dim=-1)
        seen = visible if seen is None else seen & visible
    return seen


# ---- FlashAttention-2 ----------------------------------------------------------------------


def _flash_windows(spec: MaskSpec) -> tuple[int, int]:
    """attnkit's band as FlashAttention-2's window sizes (-1: unbounded on that side)."""
    left = -1 if spec.left is None else spec.left
    right = -1 if spec.right is None else spec.right
    return left, right


def flash_attention(q, k, v, spec: MaskSpec, scale: float):
    """FlashAttention-2. q ``(B, Hq, Sq, D)``, k ``(B, Hkv, Sk, D)``, v ``(B, Hkv, Sk, Dv)`` →
    ``out (B, Hq, Sq, Dv)`` in q's dtype and ``lse (B, Hq, Sq)`` float32, both differentiable."""
    if _empty_call(q, k, v, spec):
        return _empty_result(q, k, v, spec, scale)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _FlashFunction.apply(q, k, v, spec, scale)
    out, lse, _ = _flash_forward(q, k, v, spec, scale)
    return out, lse


def _flash_forward(q, k, v, spec: MaskSpec, scale: float):
    """``(out (B, Hq, Sq, Dv), lse (B, Hq, Sq), rng_state)``."""
    forward_op, _ = _FLASH
    e = _rounded(max(q.shape[-1], v.shape[-1]))
    left, right = _flash_windows(spec)
    out, lse, rng_state, _unused, _ = forward_op(
        _bshd(q, e), _bshd(k, e), _bshd(v, e), None, None, spec.sq, spec.sk, 0.0, False, False,
        scale=scale, window_size_left=left, window_size_right=right)
    # FlashAttention-2 gives a row that saw no key out = 0 (its sum is 0, and so its
    # accumulator) and lse = +inf; the contract's lse there is -inf
    seen = torch.isfinite(lse)  # (B, Hq, Sq)
    return _bhsd(out, v.shape[-1]), lse.masked_fill(~seen, float("-inf")), rng_state


def _flash_backward(q, k, v, spec: MaskSpec, scale: float, out, lse, dout, dlse, rng_state=None):
    """Gradients of q, k, v from the public ``out``, ``lse`` and ``(dout, dlse)`` (either may be
    None)."""
    _, backward_op = _FLASH
    d, dv = q.shape[-1], v.shape[-1]
    e = _rounded(max(d, dv))
    qt, kt, vt = _bshd(q, e), _bshd(k, e), _bshd(v, e)
    out_t = _bshd(out, e)
    lse_k = lse.masked_fill(torch.isneginf(lse), float("inf")).contiguous()  # the kernel's
    if rng_state is None:  # (read only with dropout, which attnkit never asks of this kernel)
        rng_state = torch.zeros(2, dtype=torch.uint64, device=q.device)
    unused = torch.zeros((), dtype=torch.uint64, device=q.device)
    left, right = _flash_windows(spec)

    def call(do_t, values, o_t):
        return backward_op(do_t, qt, kt, values, o_t, lse_k, None, None, spec.sq, spec.sk, 0.0,
                           False, rng_state, unused, scale=scale, window_size_left=left,
                           window_size_right=right)

    grads = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (qt, kt, vt)]
    if dout is not None:
        for total, g in zip(grads, call(_bshd(dout, e), vt, out_t)):
            total += g
    if dlse is not None:
        unit, o_lse = _lse_term_inputs(qt, dlse, e)
        gq, gk, _ = call(unit, torch.zeros_like(vt), o_lse)
        grads[0] += gq
        grads[1] += gk
    dq, dk, dvv = grads
    return _bhsd(dq, d).to(q.dtype), _bhsd(dk, d).to(k.dtype), _bhsd(dvv, dv).to(v.dtype)


def _lse_term_inputs(qt: torch.Tensor, dlse: torch.Tensor, e: int):
    """``(dO, O)`` for the backward call that gives the lse's own term: ``dO`` is 1 in the
    first two columns of every row and ``O`` holds ``-dlse`` there, split into a part in q's
    dtype and the rest, so the kernel's float32 ``rowsum(dO * O)`` is ``-dlse`` to float32
    precision (with ``v = 0``, ``dP = 0`` and ``dS = P * dlse``)."""
    b, sq, hq, _ = qt.shape
    # (narrow/select rather than [...] indexing: it keeps to ops, which fake tensors trace)
    unit = qt.new_zeros(b, sq, hq, e)
    unit.narrow(-1, 0, 2).fill_(1.0)
    target = -dlse.transpose(1, 2).float()  # (B, Sq, Hq)
    high = target.to(qt.dtype)
    o_lse = qt.new_zeros(b, sq, hq, e)
    o_lse.select(-1, 0).copy_(high)
    o_lse.select(-1, 1).copy_((target - high.float()).to(qt.dtype))
    return unit, o_lse


class _FlashFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec: MaskSpec, scale: float):
        ctx.set_materialize_grads(False)  # dlse is None unless a loss reads the lse
        out, lse, rng_state = _flash_forward(q, k, v, spec, scale)
        ctx.save_for_backward(q, k, v, out, lse, rng_state)
        ctx.spec, ctx.scale = spec, scale
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, rng_state = ctx.saved_tensors
        if dout is None and dlse is None:
            return None, None, None, None, None
        grads = _flash_backward(q, k, v, ctx.spec, ctx.scale, out, lse, dout, dlse, rng_state)
        return (*grads, None, None)


# ---- the memory-efficient kernel -----------------------------------------------------------


def _efficient_bias(spec: MaskSpec, q: torch.Tensor) -> torch.Tensor | None:
    """The additive bias ``(B, Hq, Sq, Sk)`` (a broadcast view) the kernel reads: the user's
    bias, ``-inf`` where the mask hides a key; its rows start at multiples of 16 elements, as
    the kernel's aligned loads need (the storage is padded, the view is not)."""
    if spec.mask is None and spec.bias is None:
        return None
    b, hq = q.shape[0], spec.hq
    parts = [t for t in (spec.mask, spec.bias) if t is not None]
    shape = [max(t.shape[i] for t in parts) for i in range(4)]  # (B|1, Hq|1, Sq|1, Sk|1)
    additive = torch.zeros(shape[:3] + [_rounded(spec.sk, 16)], dtype=q.dtype,
                           device=q.device).narrow(-1, 0, spec.sk)
    if spec.bias is not None:
        additive.copy_(spec.bias.expand(shape[:3] + [spec.sk]))
    if spec.mask is not None:
        additive.masked_fill_(~spec.mask.expand(shape[:3] + [spec.sk]), float("-inf"))
    return additive.expand(b, hq, spec.sq, spec.sk)


def _efficient_kv(x: torch.Tensor, spec: MaskSpec, e: int) -> torch.Tensor:
    """k or v ``(B, Hkv, Sk, d)`` → ``(B, Sk, Hq, e)``: the kernel has no grouped heads, so each
    kv head is repeated for its query heads (its gradients are summed back)."""
    if spec.groups > 1:
        x = x.repeat_interleave(spec.groups, dim=1)
    return _bshd(x, e)


def efficient_attention(q, k, v, spec: MaskSpec, scale: float):
    """The memory-efficient kernel. Shapes as in ``flash_attention``; a bias may need a
    gradient."""
    if _empty_call(q, k, v, spec):
        return _empty_result(q, k, v, spec, scale)
    bias_grad = spec.bias is not None and spec.bias.requires_grad
    needs_grad = q.requires_grad or k.requires_grad or v.requires_grad or bias_grad
    if torch.is_grad_enabled() and needs_grad:
        return _EfficientFunction.apply(q, k, v, spec.bias, spec, scale)
    out, lse, _ = _efficient_forward(q, k, v, spec, scale)
    return out, lse


def _efficient_forward(q, k, v, spec: MaskSpec, scale: float):
    """``(out (B, Hq, Sq, Dv), lse (B, Hq, Sq), (philox_seed, philox_offset))``."""
    forward_op, _ = _EFFICIENT
    e, ev = _rounded(q.shape[-1]), _rounded(v.shape[-1])
    mask_type = CAUSAL_BOTTOM_RIGHT if spec.causal else 0
    out, lse_raw, seed, offset, _, _ = forward_op(
        _bshd(q, e), _efficient_kv(k, spec, e), _efficient_kv(v, spec, ev),
        _efficient_bias(spec, q), None, None, None, None, 0.0, mask_type, True, scale=scale)
    lse = lse_raw.narrow(-1, 0, spec.sq)  # (B, Hq, Sq): the kernel pads it to a multiple of 32
    out = _bhsd(out, v.shape[-1])
    seen = _rows_seeing_keys(spec, q.device)
    if seen is not None:  # whatever the kernel left there, the contract says 0 and -inf
        out = torch.where(seen[..., None], out, torch.zeros((), dtype=out.dtype,
                                                            device=out.device))
        lse = lse.masked_fill(~seen, float("-inf"))
    return out, lse.to(torch.float32), (seed, offset)


def _efficient_backward(q, k, v, spec: MaskSpec, scale: float, out, lse, dout, dlse,
                        bias_grad: bool, philox=None):
    """Gradients of q, k, v (and the bias) from the public ``out``, ``lse``."""
    _, backward_op = _EFFICIENT
    d, dv = q.shape[-1], v.shape[-1]
    e, ev = _rounded(d), _rounded(dv)
    qt, kt, vt = _bshd(q, e), _efficient_kv(k, spec, e), _efficient_kv(v, spec, ev)
    bias = _efficient_bias(spec, q)
    mask_type = CAUSAL_BOTTOM_RIGHT if spec.causal else 0
    # the kernel's lse layout (B, Hq, Sq rounded up to 32); a row that saw no key gets +inf, so
    # P = exp(s - lse) is 0 on it whatever its scores
    lse_k = torch.zeros(*lse.shape[:2], _rounded(spec.sq, 32), dtype=torch.float32,
                        device=q.device)
    lse_k.narrow(-1, 0, spec.sq).copy_(lse.masked_fill(torch.isneginf(lse), float("inf")))
    if philox is None:  # (read only with dropout, which attnkit never asks of this kernel)
        philox = (torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.int64))
    out_t = _bshd(out, ev)

    def call(do_t, values, o_t):
        return backward_op(do_t, qt, kt, values, bias, o_t, None, None, spec.sq, spec.sk, lse_k,
                           0.0, philox[0], philox[1], mask_type, bias_grad, scale=scale)

    grads = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (qt, kt, vt)]
    dbias = None
    if dout is not None:
        gq, gk, gv, gb = call(_bshd(dout, ev), vt, out_t)
        for total, g in zip(grads, (gq, gk, gv)):
            total += g
        dbias = gb.float() if bias_grad else None
    if dlse is not None:
        unit, o_lse = _lse_term_inputs(qt, dlse, ev)
        gq, gk, _, gb = call(unit, torch.zeros_like(vt), o_lse)
        grads[0] += gq
        grads[1] += gk
        if bias_grad:
            dbias = gb.float() if dbias is None else dbias + gb.float()
    dq, dk, dvv = grads
    dk, dvv = _summed_groups(dk, spec), _summed_groups(dvv, spec)
    if dbias is not None:
        dbias = _summed_to(dbias.narrow(-1, 0, spec.sk), spec.bias).to(spec.bias.dtype)
    return _bhsd(dq, d).to(q.dtype), _bhsd(dk, d).to(k.dtype), _bhsd(dvv, dv).to(v.dtype), dbias


def _summed_groups(g: torch.Tensor, spec: MaskSpec) -> torch.Tensor:
    """``(B, Sk, Hq, e)`` gradients of repeated kv heads → ``(B, Sk, Hkv, e)``."""
    if spec.groups == 1:
        return g
    b, sk, _, e = g.shape
    return g.view(b, sk, spec.hkv, spec.groups, e).sum(dim=3)


def _summed_to(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, Hq, Sq, Sk)`` summed over the dims ``like`` broadcasts (size 1)."""
    dims = [i for i in range(4) if like.shape[i] == 1 and g.shape[i] != 1]
    return g.sum(dim=dims, keepdim=True) if dims else g


class _EfficientFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, spec: MaskSpec, scale: float):
        ctx.set_materialize_grads(False)
        out, lse, philox = _efficient_forward(q, k, v, spec, scale)
        ctx.save_for_backward(q, k, v, out, lse, *philox)
        ctx.spec, ctx.scale = spec, scale
        ctx.bias_grad = bias is not None and ctx.needs_input_grad[3]
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, seed, offset = ctx.saved_tensors
        if dout is None and dlse is None:
            return None, None, None, None, None, None
        dq, dk, dv, dbias = _efficient_backward(q, k, v, ctx.spec, ctx.scale, out, lse, dout,
                                                dlse, ctx.bias_grad, (seed, offset))
        return dq, dk, dv, dbias, None, None


# ---- forward and backward apart, for the custom op torch.compile sees (compiled.py) ----------


def _no_residuals(q, k, v, spec: MaskSpec, needs_grad: bool) -> list:
    return []  # the backward needs only q, k, v, out and lse (and the spec)


def _flash_split_forward(q, k, v, spec, scale, needs_grad):
    if _empty_call(q, k, v, spec):
        return (*_empty_result(q, k, v, spec, scale), [])
    return (*_flash_forward(q, k, v, spec, scale)[:2], [])


def _flash_split_backward(q, k, v, spec, scale, out, lse, residuals, dout, dlse, bias_grad,
                          sinks_grad):
    if _empty_call(q, k, v, spec) or (dout is None and dlse is None):
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None
    return (*_flash_backward(q, k, v, spec, scale, out, lse, dout, dlse), None, None)


def _efficient_split_forward(q, k, v, spec, scale, needs_grad):
    if _empty_call(q, k, v, spec):
        return (*_empty_result(q, k, v, spec, scale), [])
    return (*_efficient_forward(q, k, v, spec, scale)[:2], [])


def _efficient_split_backward(q, k, v, spec, scale, out, lse, residuals, dout, dlse, bias_grad,
                              sinks_grad):
    if _empty_call(q, k, v, spec) or (dout is None and dlse is None):
        zero = [torch.zeros_like(t) for t in (q, k, v)]
        return (*zero, torch.zeros_like(spec.bias) if bias_grad else None, None)
    return (*_efficient_backward(q, k, v, spec, scale, out, lse, dout, dlse, bias_grad), None)


FLASH_SPLIT = Split(_flash_split_forward, _flash_split_backward, _no_residuals)
EFFICIENT_SPLIT = Split(_efficient_split_forward, _efficient_split_backward, _no_residuals)
