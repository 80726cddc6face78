"""``attention()``, ``pattern()`` and the backend registry.

Every backend gets the same validated inputs (a ``MaskSpec``) and either computes the call exactly
or refuses with a message naming a backend that can; no option is ever silently ignored. The
options that change the softmax itself (soft-capping, sinks, dropout) reach only backends that
list them in ``Backend.options``: a backend registered without them is never given them.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import numbers
import operator
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from attnkit.errors import AttnkitError, BackendUnsupportedError, InputTypeError
from attnkit.kernels import blockwise, dropout, fused_cpu, fused_cuda
from attnkit.kernels.blockwise import LOG2E, blockwise_attention
from attnkit.kernels.compiled import Split, compiled_attention
from attnkit.kernels.flex import flex_attention_kernel, flex_unsupported
from attnkit.kernels.fused_cpu import fused_cpu_attention, fused_cpu_unsupported
from attnkit.kernels.masks import Index, MaskSpec
from attnkit.kernels.reference import reference_attention
from attnkit.kernels.sdpa import sdpa_attention, sdpa_unsupported
from attnkit.runtime import work_dtype

__all__ = ["attention", "pattern", "backends", "use_backend", "register_backend", "Backend"]

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, MaskSpec, float], tuple]
Refusal = Callable[[MaskSpec, bool, torch.Tensor], "str | None"]


@dataclass(frozen=True)
class Backend:
    """A named attention implementation.

    ``kernel(q, k, v, spec, scale) -> (out, lse or None)``; ``unsupported(spec, return_lse, q)``
    says why a call cannot be done (None when it can); higher ``priority`` wins under
    ``backend=None``; ``auto`` backends take part in that automatic choice. ``options`` names
    the softmax options the kernel implements (``SCORE_OPTIONS``: "softcap", "sinks",
    "dropout"); a call using any other one is refused before ``unsupported`` is asked.
    ``devices`` are the device types it runs on ("cpu", "cuda"); the automatic choice only
    looks at those of the call's device. ``split``: its forward and backward as separate
    functions, for the custom op torch.compile sees (compiled.py); a backend without one is
    traced by torch.compile.
    """

    name: str
    kernel: Kernel
    unsupported: Refusal
    priority: int = 0
    auto: bool = True
    description: str = ""
    options: frozenset[str] = frozenset()
    devices: tuple[str, ...] = ("cpu", "cuda")
    split: Split | None = None


SCORE_OPTIONS = frozenset({"softcap", "sinks", "dropout"})


_REGISTRY: dict[str, Backend] = {}
_SCOPED: contextvars.ContextVar[str | None] = contextvars.ContextVar("attnkit_backend",
                                                                     default=None)
# How many ``use_backend`` blocks are open, in any thread. While none is (the usual case),
# attention() reads only this int: torch.compile cannot trace ``ContextVar.get``, and every call
# would break the graph there.
_open_scopes = 0
_scopes_lock = threading.Lock()


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend under ``backend.name``."""
    _REGISTRY[backend.name] = backend


def backends(device: str | torch.device | None = None) -> dict[str, str]:
    """The registered backends, ``{name: description}``, in the order ``backend=None`` tries
    them; each description ends with the devices it runs on, e.g. ``"(cpu)"``. With ``device``
    ("cpu", "cuda" or a ``torch.device``), only the backends that run there."""
    kind = None if device is None else torch.device(device).type
    ordered = sorted(_REGISTRY.values(), key=lambda b: -b.priority)
    return {b.name: f"{b.description} ({', '.join(b.devices)})" for b in ordered
            if kind is None or kind in b.devices}


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, ``attention(..., backend=None)`` uses backend ``name``."""
    global _open_scopes
    _lookup(name)
    token = _SCOPED.set(name)
    with _scopes_lock:
        _open_scopes += 1
    try:
        yield
    finally:
        with _scopes_lock:
            _open_scopes -= 1
        _SCOPED.reset(token)


def _lookup(name: str) -> Backend:
    if name not in _REGISTRY:
        raise AttnkitError(f"unknown backend {name!r}; available backends: "
                           f"{', '.join(backends())}")
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
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    dropout_seed: int | None = None,
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
        softcap: a number > 0: each scaled score ``s`` becomes ``softcap * tanh(s / softcap)``
            before the bias and the mask are applied (Gemma 2's logit soft-capping).
        sinks: ``(Hq,)`` float, one logit per query head added to every row's softmax
            denominator with no value (GPT-OSS's ``sinks``/``s_aux``): the probabilities of a row
            sum to less than 1 and the lse includes the sink, so ``pattern()`` gives the
            weights eager attention returns. A query that sees no key still gets zeros, and
            ``lse = sinks[h]`` (finite). Gets a gradient if it requires one. When partial results
            are combined with ``merge``, pass ``sinks`` to exactly one of the partial calls.
        dropout_p: in ``[0, 1)``: each probability is dropped with this chance after the softmax
            and the kept ones scaled by ``1 / (1 - dropout_p)``; applied whenever it is > 0 (pass
            0 at evaluation). The lse stays the one before dropout.
        dropout_seed: an int in ``[0, 2**63)`` that, with each ``(batch, head, query, key)``
            position, decides what is dropped (``attnkit.kernels.dropout``; every backend draws
            the same mask). None draws one from torch's default generator, so
            ``torch.manual_seed`` makes calls reproducible. Unused when ``dropout_p == 0``.
        return_lse: also return the log-sum-exp of each query's scaled scores.
        backend: ``"fused"``, ``"blockwise"``, ``"reference"``, ``"sdpa"``, the CUDA ones or any
            registered name (``attnkit.backends()`` lists them and where they run); None picks
            the scoped choice (``use_backend``) or the first backend, by priority, that runs on
            q's device and supports the call (docs/backends.md).

    Returns:
        ``out (B, Hq, Sq, Dv)`` in q's dtype; with ``return_lse`` also ``lse (B, Hq, Sq)``, float32
        (float64 for float64 inputs), natural log. A query that sees no key gets zeros and
        ``lse = -inf`` (``sinks[h]`` with sinks).
    """
    spec, scale = validate(q, k, v, causal=causal, window=window, mask=mask, bias=bias, scale=scale,
                           softcap=softcap, sinks=sinks, dropout_p=dropout_p,
                           dropout_seed=dropout_seed)
    _check_flag("return_lse", return_lse)
    if spec.dropout_p > 0 and spec.dropout_seed is None:
        spec = dataclasses.replace(spec, dropout_seed=dropout.draw_seed())
    chosen = _choose(backend, spec, return_lse, q)
    if chosen.split is not None and torch.compiler.is_compiling():
        # one opaque node with its own fake implementation and autograd (compiled.py)
        out, lse = compiled_attention(chosen.name, q, k, v, spec, scale)
    else:
        out, lse = chosen.kernel(q, k, v, spec, scale)
    return (out, lse) if return_lse else out


def _choose(name: str | None, spec: MaskSpec, return_lse: bool, q: torch.Tensor) -> Backend:
    """The backend named (or scoped by ``use_backend``), if it supports the call; else, with no
    name, the first backend by priority that runs on q's device and supports it."""
    if name is None and _open_scopes:
        name = _SCOPED.get()
    if name is not None:
        chosen = _lookup(name)
        why = _refusal(chosen, spec, return_lse, q)
        if why is None and not _runs_on(chosen, q.device):
            why = f"tensors on {q.device} (it runs on {', '.join(chosen.devices)})"
        if why is not None:
            able = [b.name for b in _REGISTRY.values() if _runs_on(b, q.device)
                    and _refusal(b, spec, return_lse, q) is None]
            raise BackendUnsupportedError(
                f"backend {name!r} does not support {why}; "
                f"use backend={able[0]!r} (backends that can: {', '.join(able)})")
        return chosen
    for candidate in sorted(_REGISTRY.values(), key=lambda b: -b.priority):
        if (candidate.auto and _runs_on(candidate, q.device)
                and _refusal(candidate, spec, return_lse, q) is None):
            return candidate
    raise AttnkitError(f"no registered backend supports this call on {q.device}; "
                       f"backends there: {', '.join(backends(q.device)) or 'none'}")


def _runs_on(backend: Backend, device: torch.device) -> bool:
    """(Meta tensors, which only carry shapes, go to any backend.)"""
    return device.type in backend.devices or device.type == "meta"


def _refusal(backend: Backend, spec: MaskSpec, return_lse: bool, q: torch.Tensor) -> str | None:
    """Why ``backend`` cannot do the call: its own reason first (it may know a better one), then
    any softmax option it does not list in ``options``."""
    why = backend.unsupported(spec, return_lse, q)
    if why is not None:
        return why
    for option in spec.score_options:
        if option not in backend.options:
            return f"{_describe(option, spec)} (not implemented by this backend)"
    return None


def _describe(option: str, spec: MaskSpec) -> str:
    """An option as the caller wrote it, for messages."""
    if option == "softcap":
        return f"softcap={spec.softcap}"
    if option == "sinks":
        return f"sinks (a ({spec.hq},) tensor)"
    return f"dropout_p={spec.dropout_p}"


def validate(q, k, v, *, causal=False, window=None, mask=None, bias=None, scale=None,
             softcap=None, sinks=None, dropout_p=0.0, dropout_seed=None):
    """Check shapes, dtypes, devices and options; return ``(MaskSpec, scale)`` or raise an
    ``AttnkitError`` (``InputTypeError`` for a wrong type) that names the problem and the fix.
    The spec's ``dropout_seed`` is the one given (possibly None: ``attention`` draws one)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise InputTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise AttnkitError(f"{name} must be 4-D (batch, heads, seq, head_dim); got shape "
                               f"{tuple(t.shape)}. For one sequence use {name}[None, None] "
                               "or .unsqueeze(0)")
        if not t.is_floating_point():
            raise InputTypeError(f"{name} must be floating point (float32, bfloat16, float16, "
                                 f"float64); got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise InputTypeError(f"q, k, v must share one dtype; got q {q.dtype}, k {k.dtype}, "
                             f"v {v.dtype}. Cast them, e.g. k.to({q.dtype})")
    if not (q.device == k.device == v.device):
        raise AttnkitError(f"q, k, v must be on one device; got q on {q.device}, k on {k.device}, "
                           f"v on {v.device}. Move them with .to(device)")
    (b, hq, sq, d), (bk, hkv, sk, dk), (bv, hv, sv, _) = q.shape, k.shape, v.shape
    if not (b == bk == bv):
        raise AttnkitError(f"batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                           f"v {tuple(v.shape)}; dim 0 must match")
    if d != dk:
        raise AttnkitError(f"q and k must have the same head_dim (last dim); got "
                           f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    if (hkv, sk) != (hv, sv):
        raise AttnkitError(f"k and v must have the same heads and length (dims 1 and 2); got k "
                           f"{tuple(k.shape)} and v {tuple(v.shape)}")
    if hkv == 0:
        raise AttnkitError(f"k and v have 0 heads (k {tuple(k.shape)}); attention needs at least "
                           "one key/value head (dim 1)")
    if hq % hkv != 0:
        divisors = [n for n in range(1, hq + 1) if hq % n == 0]
        raise AttnkitError(f"q has {hq} heads and k/v have {hkv}; query heads must be a multiple "
                           "of key/value heads (grouped-query attention). "
                           f"k/v heads could be one of {divisors}")
    _check_flag("causal", causal)
    window = _check_window(window)
    full = (b, hq, sq, sk)
    mask = _check_broadcast("mask", mask, full, q.device)
    bias = _check_broadcast("bias", bias, full, q.device)
    if mask is not None and mask.dtype != torch.bool:
        raise InputTypeError(f"mask must be boolean (True = may attend); got {mask.dtype}. "
                             "For an additive float mask pass it as bias=")
    if bias is not None and not bias.is_floating_point():
        raise InputTypeError("bias must be a floating-point tensor (added to the scores); "
                             f"got {bias.dtype}. For a True/False mask pass it as mask=")
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0  # D = 0: every score is 0 whatever the scale
    else:
        scale = _check_scale(scale)
    softcap = None if softcap is None else _check_softcap(softcap)
    sinks = _check_sinks(sinks, hq, q.device)
    dropout_p = _check_dropout_p(dropout_p)
    dropout_seed = _check_seed(dropout_seed)
    spec = MaskSpec(sq=sq, sk=sk, hq=hq, hkv=hkv, causal=bool(causal), window=window, mask=mask,
                    bias=bias, softcap=softcap, sinks=sinks, dropout_p=dropout_p,
                    dropout_seed=dropout_seed)
    return spec, scale


def _check_flag(name: str, value) -> None:
    """``causal`` and ``return_lse`` are True or False: a string such as "no" is truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"{name} must be True or False; got {value!r} "
                             f"({type(value).__name__}). Pass {name}=True or {name}=False")


def _check_scale(scale) -> float:
    """A Python or numpy number, or a 0-d tensor, as a finite float."""
    value = _real("scale", scale, "scale=0.125")
    if not math.isfinite(value):
        raise AttnkitError(f"scale must be a finite number; got {value!r}. Leave scale=None for "
                           "1/sqrt(head_dim)")
    return value


def _real(name: str, x, example: str) -> float:
    """A Python or numpy real number, or a 0-d real tensor that needs no gradient, as a float."""
    if isinstance(x, torch.Tensor):
        if x.dim() != 0 or x.is_complex() or x.dtype == torch.bool:
            raise InputTypeError(f"{name} must be a number or a 0-d real tensor; got a "
                                 f"{x.dtype} tensor of shape {tuple(x.shape)}")
        if x.requires_grad:
            raise InputTypeError(f"{name} is a tensor that requires grad, but no gradient flows "
                                 f"to {name}; pass {name}=float({name})"
                                 + (" (or fold a learned scale into q)" if name == "scale"
                                    else ""))
    elif isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise InputTypeError(f"{name} must be a real number, e.g. {example}; got {x!r} "
                             f"({type(x).__name__})")
    return float(x)


def _check_softcap(softcap) -> float:
    value = _real("softcap", softcap, "softcap=50.0")
    if not (math.isfinite(value) and value > 0):
        raise AttnkitError(f"softcap must be a finite number > 0 (scores become "
                           f"softcap * tanh(score / softcap), e.g. softcap=50.0); got {value!r}. "
                           "Pass softcap=None for no capping")
    return value


def _check_sinks(sinks, hq: int, device: torch.device) -> torch.Tensor | None:
    if sinks is None:
        return None
    if not isinstance(sinks, torch.Tensor):
        raise InputTypeError(f"sinks must be a torch.Tensor of shape (Hq,) = ({hq},), one logit "
                             f"per query head, or None; got {type(sinks).__name__}")
    if not sinks.is_floating_point():
        raise InputTypeError(f"sinks must be a floating-point tensor (one logit per query "
                             f"head); got {sinks.dtype}")
    if tuple(sinks.shape) != (hq,):
        raise AttnkitError(f"sinks must have shape (Hq,) = ({hq},), one logit per query head; "
                           f"got {tuple(sinks.shape)}. A model's per-head sinks of shape "
                           f"(1, {hq}, 1, 1) can be passed as sinks.reshape(-1)")
    if sinks.device != device:
        raise AttnkitError(f"sinks is on {sinks.device} but q is on {device}; "
                           "move it with .to(q.device)")
    return sinks


def _check_dropout_p(p) -> float:
    value = _real("dropout_p", p, "dropout_p=0.1")
    if not 0.0 <= value < 1.0:
        raise AttnkitError(f"dropout_p must be in [0, 1) (the chance that a probability is "
                           f"dropped); got {value!r}. Pass dropout_p=0.0 for no dropout")
    return value


def _check_seed(seed) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not hasattr(seed, "__index__"):
        raise InputTypeError(f"dropout_seed must be an int in [0, 2**63) or None (drawn from "
                             f"torch's generator); got {seed!r} ({type(seed).__name__})")
    value = operator.index(seed)
    if not 0 <= value < dropout.SEED_LIMIT:
        raise AttnkitError(f"dropout_seed must be an int in [0, 2**63); got {value}. "
                           "Reduce it, e.g. dropout_seed % 2**63")
    return value


def _check_window(window):
    if window is None:
        return None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise AttnkitError("window must be a pair (left, right) of ints >= 0 or None; "
                           f"got {window!r}")
    sizes = []
    for side, size in zip(("left", "right"), window):
        if size is not None:
            # ints of any kind (numpy's too) have __index__; floats and bools are refused
            if isinstance(size, (bool, np.bool_)) or not hasattr(size, "__index__"):
                raise InputTypeError(f"window={tuple(window)}: the {side} size must be an int "
                                     f">= 0 or None for unbounded; got {type(size).__name__}. "
                                     "e.g. window=(128, 0) looks 128 keys back")
            size = operator.index(size)
            if size < 0:
                raise AttnkitError(f"window={tuple(window)}: the {side} size must be an int >= 0, "
                                   "or None for unbounded; e.g. window=(128, 0) looks 128 keys "
                                   "back")
        sizes.append(size)
    return tuple(sizes)


def _check_broadcast(name, t, full, device):
    """``t`` as a 4-D view ``(B|1, Hq|1, Sq|1, Sk|1)``, or an error naming shapes that work."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.device != device:
        raise AttnkitError(f"{name} is on {t.device} but q is on {device}; "
                         "move it with .to(q.device)")
    shape = tuple(t.shape)
    if t.dim() > 4 or any(s not in (1, f) for s, f in zip(shape[::-1], full[::-1])):
        b, h, sq, sk = full
        raise AttnkitError(f"{name} of shape {shape} does not broadcast to (B, Hq, Sq, Sk) = "
                           f"{full}; use e.g. ({sq}, {sk}), ({b}, 1, {sq}, {sk}), "
                           f"({b}, {h}, {sq}, {sk}) or ({b}, 1, 1, {sk}) for key padding")
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
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    dropout_seed: int | None = None,
    rows: Index | None = None,
    cols: Index | None = None,
) -> torch.Tensor:
    """Exact attention probabilities for a slice of queries (rows) and keys (cols).

    Recomputed as ``exp(q_i . k_j * scale + bias - lse_i)`` (the score soft-capped first with
    ``softcap``) from the inputs of a call to ``attention(..., return_lse=True)`` and the same
    options; costs only the slice asked for. Differentiable: gradients reach q, k and bias, and
    through the lse (when it comes from ``attention`` on the autograd graph) q, k, bias and sinks
    again, as the gradients of eager attention's softmax weights do.

    Args:
        q ``(B, Hq, Sq, D)``, k ``(B, Hkv, Sk, D)``, lse ``(B, Hq, Sq)``.
        sinks: accepted so that ``attention()``'s options can be passed unchanged; the lse of a
            call with sinks already includes them (its rows here sum to less than 1, as eager's
            weights do), so they change nothing here.
        dropout_p, dropout_seed: 0 (the default) gives the probabilities before dropout. With
            ``dropout_p > 0`` and the seed the call used, the weights after dropout: dropped
            cells 0, kept ones scaled by ``1 / (1 - dropout_p)`` — what transformers' eager
            attention returns as ``output_attentions`` in training (its ``attn_weights`` are
            taken after ``nn.functional.dropout``). The seed must then be given: the one a call
            drew for itself is not kept (pass ``dropout_seed=`` to both calls).
        rows, cols: a ``slice`` (any step, negative too) or a 1-D list/LongTensor of positions;
            None means all.

    Returns:
        ``(B, Hq, R, C)`` float32 (float64 for float64 inputs), ``[query, key]``; hidden keys and
        queries that see no key give 0. A full row sums to 1 (less with sinks).

    Accuracy: the probabilities are as exact as the float32 ``lse`` they are given. Its rounding
    (half a unit in its last place) shifts every probability of a row by a relative
    ``|lse| * 2**-24``: nothing at ordinary scores, 6e-4 at ``|lse| = 1e4`` (a huge scale or
    bias), where a one-hot row can read 0.9994 for 1. No recomputation can undo that (scoring
    in float64 measured worse: the lse carries the kernel's float32 score rounding, which this
    function repeats exactly). That holds for an lse from ``blockwise``; one from a fused kernel
    carries that kernel's own float32 dot products, which this function cannot repeat: they
    differ by up to about ``2 sqrt(D) 2**-24 S`` per score (``S = |scale| sum_d |q_d k_d| +
    |bias|``), nothing at ordinary scores, ~1e-2 at scores ~1e4 — for exact patterns there, use
    ``backend="blockwise"`` or float64 inputs. ``attention()``'s outputs and gradients do not
    have this limit; float64 inputs give a float64 lse.
    """
    spec, scale = validate(q, k, k[..., :1], causal=causal, window=window, mask=mask, bias=bias,
                           scale=scale, softcap=softcap, sinks=sinks, dropout_p=dropout_p,
                           dropout_seed=dropout_seed)
    _check_lse(lse, q)
    if spec.dropout_p > 0 and spec.dropout_seed is None:
        raise AttnkitError(f"pattern(): dropout_p={spec.dropout_p} needs the dropout_seed the "
                           "attention call used (pass the same dropout_seed= to both); for the "
                           "probabilities before dropout pass dropout_p=0")
    rows = slice(None) if rows is None else _check_index("rows", rows, spec.sq, q.device)
    cols = slice(None) if cols is None else _check_index("cols", cols, spec.sk, q.device)
    work = work_dtype(q.dtype)
    b, hq, _, d = q.shape
    g = spec.groups
    q_rows = q[:, :, rows] if isinstance(rows, slice) else q.index_select(2, rows)
    k_cols = k[:, :, cols] if isinstance(cols, slice) else k.index_select(2, cols)
    n_rows = q_rows.shape[2]
    # scored exactly as the blockwise kernel scored when it made lse (base 2, q scaled first,
    # bias added with alpha), so s - lse repeats the kernel's rounding instead of adding its own
    q_factor = scale * LOG2E if spec.softcap is None else scale / spec.softcap
    q5 = q_rows.to(work).view(b, spec.hkv, g, n_rows, d) * q_factor  # (B, Hkv, G, R, D)
    kt = k_cols.to(work).unsqueeze(2).transpose(-1, -2)  # (B, Hkv, 1, D, C)
    s = torch.matmul(q5, kt).permute(0, 1, 3, 2, 4)  # (B, Hkv, R, G, C), as masks.py slices
    if spec.softcap is not None:
        s = torch.tanh(s) * (spec.softcap * LOG2E)
    bias_t = spec.tile_bias(rows, cols)
    if bias_t is not None:
        s = s.add(bias_t.to(work), alpha=LOG2E)
    # lse * log2(e) in float64, split into two work-dtype parts subtracted in turn: a rounded
    # product would add a second rounding as large as the lse's own
    lse_rows = lse[:, :, rows] if isinstance(rows, slice) else lse.index_select(2, rows)
    lse2 = lse_rows.double().view(b, spec.hkv, g, n_rows).permute(0, 1, 3, 2).unsqueeze(-1)
    lse2 = lse2 * LOG2E  # (B, Hkv, R, G, 1), base 2
    sees_none = torch.isneginf(lse2)
    hi = lse2.to(work)
    lo = torch.where(sees_none, torch.zeros_like(lse2), lse2 - hi).to(work)
    hi = hi.masked_fill(sees_none, float("inf"))  # rows that saw no key: exp2(s - inf) = 0
    p = torch.exp2((s - hi).sub_(lo))  # (B, Hkv, R, G, C)
    visible = spec.tile_mask(rows, cols, q.device)
    if visible is not None:
        p = p.masked_fill(~visible, 0.0)
    p = p.permute(0, 1, 3, 2, 4).reshape(b, hq, p.shape[2], p.shape[4])  # (B, Hq, R, C)
    if spec.dropout_p > 0:
        row_keys = dropout.row_keys(spec.dropout_seed, b, hq, spec.sq, q.device)  # (B, Hq, Sq)
        row_keys = _take_index(row_keys, 2, rows)[..., None]  # (B, Hq, R, 1)
        key_keys = _take_index(dropout.key_keys(spec.dropout_seed, spec.sk, q.device), 0, cols)
        gone = dropout.dropped(row_keys, key_keys, spec.dropout_p)  # (B, Hq, R, C)
        p = p.masked_fill(gone, 0.0) * dropout.keep_scale(spec.dropout_p)
    return p


def _take_index(t: torch.Tensor, dim: int, index: Index) -> torch.Tensor:
    return t[(slice(None),) * dim + (index,)] if isinstance(index, slice) \
        else t.index_select(dim, index)


def _check_lse(lse, q: torch.Tensor) -> None:
    if not isinstance(lse, torch.Tensor):
        raise InputTypeError(f"lse must be a torch.Tensor of shape (B, Hq, Sq) = "
                             f"{tuple(q.shape[:3])}; got {type(lse).__name__}. "
                             "Get it from attention(..., return_lse=True)")
    if tuple(lse.shape) != tuple(q.shape[:3]):
        raise AttnkitError(f"lse must have shape (B, Hq, Sq) = {tuple(q.shape[:3])}; got "
                           f"{tuple(lse.shape)}. Get it from attention(..., return_lse=True)")
    if not lse.is_floating_point():
        raise InputTypeError(f"lse must be floating point (float32 from attention(..., "
                             f"return_lse=True)); got {lse.dtype}")
    if lse.device != q.device:
        raise AttnkitError(f"lse is on {lse.device} but q is on {q.device}; "
                           "move it with .to(q.device)")


def _check_index(name: str, index, size: int, device: torch.device) -> Index:
    """A slice with step 1 as ``slice(start, stop)``; any other slice, an int, or a list or
    tensor of positions (negative ones count from the end) as a LongTensor in ``0..size-1`` on
    ``device``."""
    if isinstance(index, slice):
        try:
            start, stop, step = index.indices(size)
        except (TypeError, ValueError) as error:  # a step of 0, or bounds that are not ints
            raise AttnkitError(f"{name}={index!r} is not a usable slice ({error}); use e.g. "
                               f"{name}=slice(0, {size}) or {name}=slice(None, None, -1)"
                               ) from None
        if step == 1:
            return slice(start, max(start, stop))
        # e.g. reversed: torch cannot slice with a step < 0, so these become positions
        return torch.arange(start, stop, step, device=device)
    if hasattr(index, "__index__") and not isinstance(index, (bool, np.bool_, torch.Tensor)):
        index = [operator.index(index)]  # one position: a Python or numpy int
    try:
        index = torch.as_tensor(index)
    except (TypeError, ValueError, RuntimeError):
        raise InputTypeError(f"{name} must be a slice or a 1-D list/tensor of positions; got "
                             f"{index!r}") from None
    if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
        raise InputTypeError(f"{name} must be a slice or a 1-D list/tensor of positions; got "
                             f"shape {tuple(index.shape)} of {index.dtype}")
    if len(index) and (int(index.min()) < -size or int(index.max()) >= size):
        raise AttnkitError(f"{name} has positions outside 0..{size - 1}: min "
                           f"{int(index.min())}, max {int(index.max())}")
    return index.to(device=device, dtype=torch.long) % size


def _supports_everything(spec: MaskSpec, return_lse: bool, q: torch.Tensor) -> None:
    return None


register_backend(Backend("blockwise", blockwise_attention, _supports_everything, priority=10,
                         description="tiles, online softmax, linear memory, own backward; the "
                                     "readable, fully general kernel", options=SCORE_OPTIONS,
                         split=blockwise.SPLIT))
register_backend(Backend("fused", fused_cpu_attention, fused_cpu_unsupported, priority=20,
                         description="torch's fused CPU flash kernel, with the lse, on the tiles "
                                     "the band leaves visible", devices=("cpu",),
                         split=fused_cpu.SPLIT))
register_backend(Backend("flash", fused_cuda.flash_attention, fused_cuda.flash_unsupported,
                         priority=40, devices=("cuda",), split=fused_cuda.FLASH_SPLIT,
                         description="torch's FlashAttention-2, with the lse: float16/bfloat16, "
                                     "causal, windows, grouped heads"))
register_backend(Backend("efficient", fused_cuda.efficient_attention,
                         fused_cuda.efficient_unsupported, priority=30, devices=("cuda",),
                         split=fused_cuda.EFFICIENT_SPLIT,
                         description="torch's memory-efficient kernel, with the lse: float32 too, "
                                     "masks, a bias (with its gradient), causal; no window"))
register_backend(Backend("flex", flex_attention_kernel, flex_unsupported, priority=25,
                         devices=("cuda",), options=frozenset({"softcap"}),
                         description="compiled FlexAttention: any mask with a window, a bias, "
                                     "soft-capping"))
register_backend(Backend("sdpa", sdpa_attention, lambda spec, lse, q: sdpa_unsupported(spec, lse),
                         priority=5, auto=False,
                         description="torch.nn.functional.scaled_dot_product_attention"))
register_backend(Backend("reference", reference_attention, _supports_everything, priority=0,
                         description="materialized scores in the input dtype; the float64 oracle",
                         options=SCORE_OPTIONS))
