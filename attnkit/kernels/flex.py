"""The flex backend: ``torch.nn.attention.flex_attention``, compiled into a Triton kernel, for the
masks the fused CUDA kernels cannot take (a window together with a mask or a bias, soft-capping).

attnkit's options become Flex's two hooks: the causal/window band and the boolean mask a
``BlockMask`` (built from a ``mask_mod``; blocks it hides entirely are skipped), the bias and
``softcap`` a ``score_mod`` (``softcap * tanh(s / softcap) + bias``, on the scaled score, as
attnkit defines them). The lse comes back through ``AuxRequest(lse=True)`` (``return_lse`` on
older torch), natural log and differentiable. Head dims are padded with zero columns to a power
of two of at least 16, which Flex's kernels want.

On the CPU this torch (2.13) compiles Flex only for inference and without the lse, so there the
backend refuses by name; ``flex_attention_kernel(..., compiled=False)`` runs Flex's own eager
reference, which the tests use on the CPU to check the hooks against the float64 oracle.
"""

from __future__ import annotations

import functools

import torch

from attnkit.kernels.masks import MaskSpec

try:  # torch >= 2.5
    from torch.nn.attention import flex_attention as _flex_module
except ImportError:  # pragma: no cover - older torch
    _flex_module = None

FLEX_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def flex_unsupported(spec: MaskSpec, return_lse: bool, q: torch.Tensor) -> str | None:
    """Why compiled FlexAttention cannot compute this call exactly, or None when it can."""
    if _flex_module is None:
        return f"this torch ({torch.__version__}): it has no torch.nn.attention.flex_attention"
    if q.device.type == "cpu":
        return ("CPU tensors (torch compiles FlexAttention on the CPU only for inference and "
                "without the lse)")
    if q.device.type != "cuda":
        return f"tensors on {q.device} (flex runs on CUDA)"
    if not _has_triton():
        return "this install: FlexAttention compiles to Triton, which is missing"
    if q.dtype not in FLEX_DTYPES:
        return f"dtype {q.dtype} (flex takes float32, float16, bfloat16)"
    if spec.bias is not None and spec.bias.requires_grad:
        return "a bias that requires grad (flex reads the bias as a constant)"
    return None


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover
        return False
    return has_triton()


@functools.cache
def _compiled_flex():
    return torch.compile(_flex_module.flex_attention)


def flex_attention_kernel(q, k, v, spec: MaskSpec, scale: float, compiled: bool = True):
    """FlexAttention. q ``(B, Hq, Sq, D)``, k ``(B, Hkv, Sk, D)``, v ``(B, Hkv, Sk, Dv)`` →
    ``out (B, Hq, Sq, Dv)`` in q's dtype, ``lse (B, Hq, Sq)`` float32, both differentiable
    (through Flex's own autograd). ``compiled=False``: Flex's eager reference (tests)."""
    b, hq, sq, d = q.shape
    dv = v.shape[-1]
    if 0 in (b, hq, sq, spec.sk, d):
        from attnkit.kernels.reference import reference_attention

        return reference_attention(q, k, v, spec, scale)
    e = max(16, 1 << (max(d, dv) - 1).bit_length())  # a power of two >= 16
    qp, kp, vp = (torch.nn.functional.pad(t, (0, e - t.shape[-1])) if t.shape[-1] != e else t
                  for t in (q, k, v))
    flex = _compiled_flex() if compiled else _flex_module.flex_attention
    kwargs = {}
    if hasattr(_flex_module, "AuxRequest"):
        kwargs["return_aux"] = _flex_module.AuxRequest(lse=True)
    else:  # pragma: no cover - torch < 2.9
        kwargs["return_lse"] = True
    out, aux = flex(qp, kp, vp, score_mod=_score_mod(spec), block_mask=_block_mask(spec, q),
                    scale=scale, enable_gqa=spec.hq != spec.hkv, **kwargs)
    lse = aux.lse if hasattr(aux, "lse") else aux
    out = out[..., :dv]
    # a row that sees no key: Flex gives 0 and -inf, as the contract says; make sure of it
    seen = torch.isfinite(lse)
    out = torch.where(seen[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out, lse.masked_fill(~seen, float("-inf")).float()


def _score_mod(spec: MaskSpec):
    """``softcap * tanh(s / softcap)`` then ``+ bias`` on Flex's scaled score ``s``; None when
    neither is asked for."""
    bias, softcap = spec.bias, spec.softcap
    if bias is None and softcap is None:
        return None
    if bias is not None:
        bias = bias.detach().expand(bias.shape[0], spec.hq if bias.shape[1] != 1 else 1,
                                    spec.sq, spec.sk)

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        if bias is not None:
            score = score + bias[b if bias.shape[0] != 1 else 0,
                                 h if bias.shape[1] != 1 else 0, q_idx, kv_idx]
        return score

    return score_mod


def _block_mask(spec: MaskSpec, q: torch.Tensor):
    """A ``BlockMask`` for the band and the boolean mask; None when every key is visible."""
    if not spec.has_band and spec.mask is None:
        return None
    offset, left, right = spec.offset, spec.left, spec.right
    mask = spec.mask
    if mask is not None:
        mask = mask.expand(mask.shape[0], mask.shape[1], spec.sq, spec.sk)
    batched = mask is not None and mask.shape[0] != 1
    headed = mask is not None and mask.shape[1] != 1

    def mask_mod(b, h, q_idx, kv_idx):
        keep = kv_idx >= 0
        if right is not None:
            keep = keep & (kv_idx <= q_idx + offset + right)
        if left is not None:
            keep = keep & (kv_idx >= q_idx + offset - left)
        if mask is not None:
            keep = keep & mask[b if batched else 0, h if headed else 0, q_idx, kv_idx]
        return keep

    # on a GPU the mask is evaluated by a compiled kernel, never as an Sq x Sk tensor
    return _flex_module.create_block_mask(
        mask_mod, q.shape[0] if batched else None, spec.hq if headed else None, spec.sq,
        spec.sk, device=q.device, _compile=q.device.type == "cuda")
