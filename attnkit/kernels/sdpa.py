"""The sdpa backend: PyTorch's fused ``scaled_dot_product_attention``, where it can do the job.

SDPA cannot return the log-sum-exp, has no sliding window, aligns ``is_causal`` top-left and
cannot combine it with a mask, and has no soft-capping, no sinks and no seeded dropout mask; for
those it refuses with a message naming a backend that can.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnkit.kernels.masks import MaskSpec


def sdpa_unsupported(spec: MaskSpec, return_lse: bool) -> str | None:
    """Why SDPA cannot compute this call exactly, or None when it can."""
    if return_lse:
        return "return_lse=True (SDPA does not return the log-sum-exp)"
    if spec.window is not None:
        return f"window={spec.window} (SDPA has no sliding window)"
    if spec.causal and spec.sq != spec.sk:
        return (f"causal=True with Sq={spec.sq} != Sk={spec.sk} (SDPA aligns causal top-left; "
                "attnkit aligns it bottom-right)")
    if spec.causal and (spec.mask is not None or spec.bias is not None):
        return "causal=True together with mask= or bias= (SDPA takes one or the other)"
    if spec.softcap is not None:
        return f"softcap={spec.softcap} (SDPA cannot soft-cap the scores)"
    if spec.sinks is not None:
        return "sinks (SDPA has no sink logit in its softmax)"
    if spec.dropout_p > 0:
        return (f"dropout_p={spec.dropout_p} (SDPA's dropout draws its own mask, not attnkit's "
                "seeded one, so the backward and the reference could not repeat it)")
    return None


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float
) -> tuple[torch.Tensor, None]:
    """q ``(B, Hq, Sq, D)``, k ``(B, Hkv, Sk, D)``, v ``(B, Hkv, Sk, Dv)`` →
    ``(out (B, Hq, Sq, Dv), None)``."""
    attn_mask = spec.mask
    if spec.bias is not None:
        attn_mask = spec.bias.to(q.dtype)
        if spec.mask is not None:
            attn_mask = attn_mask.masked_fill(~spec.mask, float("-inf"))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=spec.causal, scale=scale,
        enable_gqa=spec.hq != spec.hkv,
    )
    if attn_mask is not None:
        # depending on torch's version and kernel, SDPA may leave NaN in rows that see no key
        # (all masked, or biased by -inf everywhere); attnkit promises zeros there
        seen = attn_mask if attn_mask.dtype == torch.bool else attn_mask != float("-inf")
        sees_any = seen.any(dim=-1, keepdim=True)  # (B|1, Hq|1, Sq|1, 1)
        out = torch.where(sees_any, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out, None
