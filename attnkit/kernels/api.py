"""``attention()``, ``pattern()`` and the backend registry.

Every backend gets the same validated inputs (a ``MaskSpec``) and either computes the call exactly
or refuses with a message naming a backend that can; no option is ever silently ignored.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from attnkit.kernels.blockwise import LOG2E, blockwise_attention
from attnkit.kernels.masks import Index, MaskSpec
from attnkit.kernels.reference import reference_attention
from attnkit.kernels.sdpa import sdpa_attention, sdpa_unsupported

__all__ = ["attention", "pattern", "backends", "use_backend", "register_backend", "Backend"]

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, MaskSpec, float], tuple]
Refusal = Callable[[MaskSpec, bool, torch.Tensor], "str | None"]


@dataclass(frozen=True)
class Backend:
    """A named attention implementation.

    ``kernel(q, k, v, spec, scale) -> (out, lse or None)``; ``unsupported(spec, return_lse, q)``
    says why a call cannot be done (None when it can); higher ``priority`` wins under
    ``backend=None``; ``auto`` backends take part in that automatic choice.
    """

    name: str
    kernel: Kernel
    unsupported: Refusal
    priority: int = 0
    auto: bool = True
    description: str = ""


_REGISTRY: dict[str, Backend] = {}
_SCOPED: contextvars.ContextVar[str | None] = contextvars.ContextVar("attnkit_backend",
                                                                     default=None)


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend under ``backend.name``."""
    _REGISTRY[backend.name] = backend


def backends() -> dict[str, str]:
    """The registered backends, ``{name: description}``, in the order ``backend=None`` tries."""
    ordered = sorted(_REGISTRY.values(), key=lambda b: -b.priority)
    return {b.name: b.description for b in ordered}


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, ``attention(..., backend=None)`` uses backend ``name``."""
    _lookup(name)
    token = _SCOPED.set(name)
    try:
        yield
    finally:
        _SCOPED.reset(token)


def _lookup(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; available backends: {', '.join(backends())}")
    return _REGISTRY[name]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: tuple[int | None, int | None] | None = None,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact scaled dot-product attention.

    Args:
        q: ``(B, Hq, Sq, D)`` queries.
        k: ``(B, Hkv, Sk, D)`` keys; ``Hq % Hkv == 0`` (query head ``h`` reads kv head
            ``h // (Hq/Hkv)``).
        v: ``(B, Hkv, Sk, Dv)`` values.
        causal: query ``i`` sees keys ``j <= i + Sk - Sq`` (aligned bottom-right, as a KV cache
            needs)::

                Sq=2, Sk=5:   k0 k1 k2 k3 k4
                         q0    1  1  1  1  0
                         q1    1  1  1  1  1

        window: ``(left, right)``: query ``i`` sees keys within ``left`` before and ``right`` after
            its diagonal ``i + Sk - Sq``; ``None`` on a side means unbounded.
        mask: boolean, True = may attend, broadcastable to ``(B, Hq, Sq, Sk)``.
        bias: additive float, broadcastable to ``(B, Hq, Sq, Sk)``; gets a gradient if it
            requires one.
        scale: multiplies the dot products; default ``1/sqrt(D)``.
        return_lse: also return the log-sum-exp of each query's scaled scores.
        backend: ``"reference"``, ``"blockwise"``, ``"sdpa"`` or any registered name; None picks
            the scoped choice (``use_backend``) or the best backend that supports the call.

    Returns:
        ``out (B, Hq, Sq, Dv)`` in q's dtype; with ``return_lse`` also ``lse (B, Hq, Sq)``, float32
        (float64 for float64 inputs), natural log. A query that sees no key gets zeros and
        ``lse = -inf``.
    """
    spec, scale = validate(q, k, v, causal=causal, window=window, mask=mask, bias=bias, scale=scale)
    chosen = _choose(backend, spec, return_lse, q)
    out, lse = chosen.kernel(q, k, v, spec, scale)
    return (out, lse) if return_lse else out


def _choose(name: str | None, spec: MaskSpec, return_lse: bool, q: torch.Tensor) -> Backend:
    name = name if name is not None else _SCOPED.get()
    if name is not None:
        chosen = _lookup(name)
        why = chosen.unsupported(spec, return_lse, q)
        if why is not None:
            able = [b.name for b in _REGISTRY.values()
                    if b.unsupported(spec, return_lse, q) is None]
            raise ValueError(f"backend {name!r} does not support {why}; "
                             f"use backend={able[0]!r} (backends that can: {', '.join(able)})")
        return chosen
    for candidate in sorted(_REGISTRY.values(), key=lambda b: -b.priority):
        if candidate.auto and candidate.unsupported(spec, return_lse, q) is None:
            return candidate
    raise ValueError("no registered backend supports this call")  # reference supports everything


def validate(q, k, v, *, causal=False, window=None, mask=None, bias=None, scale=None):
    """Check shapes, dtypes, devices and options; return ``(MaskSpec, scale)`` or raise clearly."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seq, head_dim); got shape "
                             f"{tuple(t.shape)}. For one sequence use {name}[None, None] "
                             "or .unsqueeze(0)")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point (float32, bfloat16, float16, float64); "
                            f"got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}. "
                        f"Cast them, e.g. k.to({q.dtype})")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got q on {q.device}, k on {k.device}, "
                         f"v on {v.device}. Move them with .to(device)")
    (b, hq, sq, d), (bk, hkv, sk, dk), (bv, hv, sv, _) = q.shape, k.shape, v.shape
    if not (b == bk == bv):
        raise ValueError(f"batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}; dim 0 must match")
    if d != dk:
        raise ValueError(f"q and k must have the same head_dim (last dim); got q {tuple(q.shape)} "
                         f"and k {tuple(k.shape)}")
    if (hkv, sk) != (hv, sv):
        raise ValueError(f"k and v must have the same heads and length (dims 1 and 2); got k "
                         f"{tuple(k.shape)} and v {tuple(v.shape)}")
    if hkv == 0 or hq % hkv != 0:
        divisors = [n for n in range(1, hq + 1) if hq % n == 0]
        raise ValueError(f"q has {hq} heads and k/v have {hkv}; query heads must be a multiple of "
                         "key/value heads (grouped-query attention). "
                         f"k/v heads could be one of {divisors}")
    window = _check_window(window)
    full = (b, hq, sq, sk)
    mask = _check_broadcast("mask", mask, full, q.device)
    bias = _check_broadcast("bias", bias, full, q.device)
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = may attend); got {mask.dtype}. "
                        "For an additive float mask pass it as bias=")
    if bias is not None and not bias.is_floating_point():
        raise TypeError("bias must be a floating-point tensor (added to the scores); "
                        f"got {bias.dtype}. "
                        "For a True/False mask pass it as mask=")
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
    elif not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number; got {scale!r}")
    spec = MaskSpec(sq=sq, sk=sk, hq=hq, hkv=hkv, causal=bool(causal), window=window, mask=mask,
                    bias=bias)
    return spec, float(scale)


def _check_window(window):
    if window is None:
        return None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError("window must be a pair (left, right) of ints >= 0 or None; "
                         f"got {window!r}")
    for side, size in zip(("left", "right"), window):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError(f"window={tuple(window)}: the {side} size must be an int >= 0, "
                             "or None "
                             "for unbounded; e.g. window=(128, 0) looks 128 keys back")
    return tuple(window)


def _check_broadcast(name, t, full, device):
    """``t`` as a 4-D view ``(B|1, Hq|1, Sq|1, Sk|1)``, or an error naming shapes that work."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}; "
                         "move it with .to(q.device)")
    shape = tuple(t.shape)
    if t.dim() > 4 or any(s not in (1, f) for s, f in zip(shape[::-1], full[::-1])):
        b, h, sq, sk = full
        raise ValueError(f"{name} of shape {shape} does not broadcast to (B, Hq, Sq, Sk) = {full}; "
                         f"use e.g. ({sq}, {sk}), ({b}, 1, {sq}, {sk}), ({b}, {h}, {sq}, {sk}) "
                         f"or ({b}, 1, 1, {sk}) for key padding")
    return t.reshape((1,) * (4 - t.dim()) + shape)


def pattern(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    *,
    causal: bool = False,
    window: tuple[int | None, int | None] | None = None,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    rows: Index | None = None,
    cols: Index | None = None,
) -> torch.Tensor:
    """Exact attention probabilities for a slice of queries (rows) and keys (cols).

    Recomputed as ``exp(q_i . k_j * scale + bias - lse_i)`` from the inputs of a call to
    ``attention(..., return_lse=True)`` and the same options; costs only the slice asked for.

    Args:
        q ``(B, Hq, Sq, D)``, k ``(B, Hkv, Sk, D)``, lse ``(B, Hq, Sq)``.
        rows, cols: a ``slice`` or a 1-D LongTensor of positions; None means all.

    Returns:
        ``(B, Hq, R, C)`` float32 (float64 for float64 inputs), ``[query, key]``; hidden keys and
        queries that see no key give 0. A full row sums to 1.
    """
    spec, scale = validate(q, k, k[..., :1], causal=causal, window=window, mask=mask, bias=bias,
                           scale=scale)
    if not isinstance(lse, torch.Tensor) or tuple(lse.shape) != tuple(q.shape[:3]):
        got = tuple(lse.shape) if isinstance(lse, torch.Tensor) else type(lse).__name__
        raise ValueError(f"lse must have shape (B, Hq, Sq) = {tuple(q.shape[:3])}; got {got}. "
                         "Get it from attention(..., return_lse=True)")
    rows = slice(None) if rows is None else _check_index("rows", rows, spec.sq)
    cols = slice(None) if cols is None else _check_index("cols", cols, spec.sk)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, hq, _, d = q.shape
    g = spec.groups
    q_rows = q[:, :, rows] if isinstance(rows, slice) else q.index_select(2, rows)
    k_cols = k[:, :, cols] if isinstance(cols, slice) else k.index_select(2, cols)
    # scored exactly as the blockwise kernel scored when it made lse (base 2, q scaled first),
    # so exp(s - lse) carries no rounding mismatch between the two
    q5 = q_rows.to(work).view(b, spec.hkv, g, -1, d) * (scale * LOG2E)  # (B, Hkv, G, R, D)
    kt = k_cols.to(work).unsqueeze(2).transpose(-1, -2)  # (B, Hkv, 1, D, C)
    s = torch.matmul(q5, kt).permute(0, 1, 3, 2, 4)  # (B, Hkv, R, G, C), as masks.py slices
    bias_t = spec.tile_bias(rows, cols)
    if bias_t is not None:
        s = s + bias_t.to(work) * LOG2E
    lse_rows = (lse[:, :, rows] if isinstance(rows, slice) else lse.index_select(2, rows)).to(work)
    lse5 = lse_rows.view(b, spec.hkv, g, -1).permute(0, 1, 3, 2).unsqueeze(-1) * LOG2E
    lse5 = torch.where(torch.isneginf(lse5), torch.full_like(lse5, float("inf")), lse5)
    p = torch.exp2(s - lse5)  # (B, Hkv, R, G, C)
    visible = spec.tile_mask(rows, cols, q.device)
    if visible is not None:
        p = p.masked_fill(~visible, 0.0)
    return p.permute(0, 1, 3, 2, 4).reshape(b, hq, p.shape[2], p.shape[4])


def _check_index(name: str, index, size: int):
    if isinstance(index, slice):
        return index
    if isinstance(index, int):
        index = [index]
    index = torch.as_tensor(index)
    if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be a slice or a 1-D list/tensor of positions; got shape "
                         f"{tuple(index.shape)} of {index.dtype}")
    if len(index) and (int(index.min()) < -size or int(index.max()) >= size):
        raise ValueError(f"{name} has positions outside 0..{size - 1}: min {int(index.min())}, "
                         f"max {int(index.max())}")
    return index.long() % size


def _supports_everything(spec: MaskSpec, return_lse: bool, q: torch.Tensor) -> None:
    return None


register_backend(Backend("blockwise", blockwise_attention, _supports_everything, priority=10,
                         description="tiles, online softmax, linear memory, own backward"))
register_backend(Backend("sdpa", sdpa_attention, lambda spec, lse, q: sdpa_unsupported(spec, lse),
                         priority=5, auto=False,
                         description="torch.nn.functional.scaled_dot_product_attention"))
register_backend(Backend("reference", reference_attention, _supports_everything, priority=0,
                         description="materialized scores in the input dtype; the float64 oracle"))
