"""Many heads at once: ``MultiHeadAttention`` (self, cross, grouped-query) and its ``KVCache``.

The weights of all heads sit side by side in wide matrices, so one matmul serves every head and
one ``attnkit.attention`` call does the rest; ``heads()`` hands back the same computation as the
notes' separate ``AttentionHead`` objects.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from attnkit.core.head import AttentionHead, check_embeddings
from attnkit.errors import AttnkitError, InputTypeError
from attnkit.kernels.recording import attend
from attnkit.runtime import check_positive_int

__all__ = ["MultiHeadAttention", "KVCache"]


class KVCache:
    """Keys and values of the positions seen so far, for decoding one step at a time.

    Made by ``MultiHeadAttention.new_cache(batch, max_len)`` and usable only with that module.
    ``k (batch, n_kv_heads, max_len, d_key)`` and ``v (batch, n_kv_heads, max_len, d_value)`` are
    preallocated; the first ``length`` positions are filled. Meant for inference
    (``torch.no_grad()``): each call writes into the buffers in place.
    """

    def __init__(self, owner: MultiHeadAttention, batch: int, max_len: int,
                 k: torch.Tensor, v: torch.Tensor):
        self._owner = weakref.ref(owner)
        self._owner_name = f"{type(owner).__name__}(d_model={owner.d_model}, " \
                           f"n_heads={owner.n_heads}, n_kv_heads={owner.n_kv_heads})"
        self.batch, self.max_len, self.length = batch, max_len, 0
        self.k, self.v = k, v  # (B, Hkv, max_len, d_key), (B, Hkv, max_len, d_value)

    def __repr__(self) -> str:
        return (f"KVCache(batch={self.batch}, length={self.length}, max_len={self.max_len}, "
                f"for {self._owner_name})")

    def keys(self) -> torch.Tensor:
        """The keys so far: ``(batch, n_kv_heads, length, d_key)``."""
        return self.k[:, :, : self.length]

    def values(self) -> torch.Tensor:
        """The values so far: ``(batch, n_kv_heads, length, d_value)``."""
        return self.v[:, :, : self.length]

    def reset(self) -> None:
        """Forget every position (the buffers are kept)."""
        self.length = 0

    def append(self, module: MultiHeadAttention, k_new: torch.Tensor,
               v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k_new (B, Hkv, S_new, d_key)``, ``v_new (B, Hkv, S_new, d_value)`` after the
        filled positions; return all keys and values so far (``length`` positions each)."""
        if self._owner() is not module:
            raise AttnkitError(f"this KV cache was made by another module ({self._owner_name}); "
                               "each attention layer needs its own cache: use "
                               "cache = layer.new_cache(batch, max_len) with the layer you call")
        b, _, s_new, _ = k_new.shape
        if b != self.batch:
            raise AttnkitError(f"the KV cache holds a batch of {self.batch} sequences but E has "
                               f"batch {b}; make a cache with new_cache(batch={b}, max_len=...)")
        if (k_new.dtype, k_new.device) != (self.k.dtype, self.k.device):
            raise AttnkitError(f"the KV cache is {self.k.dtype} on {self.k.device} but the module "
                               f"now computes {k_new.dtype} on {k_new.device}; make a new cache "
                               "after moving the module (new_cache uses its dtype and device)")
        end = self.length + s_new
        if end > self.max_len:
            raise AttnkitError(f"the KV cache is full: it holds {self.length} of max_len="
                               f"{self.max_len} positions and cannot take {s_new} more; make a "
                               f"bigger one with new_cache(batch, max_len={end}) or larger")
        self.k[:, :, self.length : end] = k_new
        self.v[:, :, self.length : end] = v_new
        self.length = end
        return self.keys(), self.values()


class MultiHeadAttention(nn.Module):
    """Multi-headed attention: every head proposes a change, ``W_O`` adds them into one ``ΔE``.

    Args:
        d_model: embedding size.
        n_heads: number of query heads (this and every argument after ``d_model`` by keyword).
        d_key: per-head query/key size; default ``d_model // n_heads``.
        d_value: per-head value↓ size (each head's value bottleneck); default ``d_key``.
        n_kv_heads: number of key/value heads; query head ``h`` reads kv head
            ``h // (n_heads // n_kv_heads)`` (grouped-query attention). Default ``n_heads``.
        causal: for self-attention, each query sees only keys at or before its position.
            Cross-attention (``context=``) needs ``causal=False``.
        bias: add bias vectors ``b_Q, b_K, b_V, b_O`` (as ``nn.MultiheadAttention`` does).

    Parameters: ``W_Q (d_model, n_heads·d_key)``, ``W_K (d_model, n_kv_heads·d_key)``,
    ``W_V (d_model, n_kv_heads·d_value)`` — the heads' query, key and value↓ matrices side by
    side — and ``W_O (n_heads·d_value, d_model)``, the heads' value↑ matrices stacked.
    """

    def __init__(self, d_model: int, *, n_heads: int, d_key: int | None = None,
                 d_value: int | None = None, n_kv_heads: int | None = None, causal: bool = True,
                 bias: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        for name, size in (("d_model", d_model), ("n_heads", n_heads), ("d_key", d_key),
                           ("d_value", d_value), ("n_kv_heads", n_kv_heads)):
            check_positive_int(f"MultiHeadAttention: {name}", size,
                               allow_none=name not in ("d_model", "n_heads"))
        if d_key is None:
            if d_model % n_heads != 0:
                raise AttnkitError(f"d_model={d_model} is not divisible by n_heads={n_heads}, so "
                                   "d_key cannot default to d_model // n_heads; pass d_key= "
                                   f"explicitly (e.g. d_key={max(1, d_model // n_heads)}) or "
                                   "choose n_heads dividing d_model")
            d_key = d_model // n_heads
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads % n_kv_heads != 0:
            divisors = [n for n in range(1, n_heads + 1) if n_heads % n == 0]
            raise AttnkitError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}: "
                               "each key/value head must serve the same number of query heads; "
                               f"n_kv_heads could be one of {divisors}")
        d_value = d_key if d_value is None else d_value
        self.d_model, self.n_heads = d_model, n_heads
        self.d_key, self.d_value, self.n_kv_heads = d_key, d_value, n_kv_heads
        self.causal, self.has_bias = bool(causal), bool(bias)
        kw = {"device": device, "dtype": dtype}
        d_q, d_kv, d_v, d_o = n_heads * d_key, n_kv_heads * d_key, n_kv_heads * d_value, \
            n_heads * d_value
        self.W_Q = nn.Parameter(torch.randn(d_model, d_q, **kw) / math.sqrt(d_model))
        self.W_K = nn.Parameter(torch.randn(d_model, d_kv, **kw) / math.sqrt(d_model))
        self.W_V = nn.Parameter(torch.randn(d_model, d_v, **kw) / math.sqrt(d_model))
        self.W_O = nn.Parameter(torch.randn(d_o, d_model, **kw) / math.sqrt(d_o))
        if bias:
            self.b_Q = nn.Parameter(torch.zeros(d_q, **kw))
            self.b_K = nn.Parameter(torch.zeros(d_kv, **kw))
            self.b_V = nn.Parameter(torch.zeros(d_v, **kw))
            self.b_O = nn.Parameter(torch.zeros(d_model, **kw))
        else:
            self.b_Q = self.b_K = self.b_V = self.b_O = None

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_key={self.d_key}, "
                f"d_value={self.d_value}, n_kv_heads={self.n_kv_heads}, causal={self.causal}, "
                f"bias={self.has_bias}")

    def forward(self, E: torch.Tensor, context: torch.Tensor | None = None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``E + ΔE`` where ``ΔE = concat(head outputs) · W_O``.

        Args:
            E: ``(batch, seq, d_model)`` or ``(seq, d_model)``; the queries come from it.
            context: ``(batch, seq_ctx, d_model)`` (or 2-D) for cross-attention: keys and values
                come from it instead of ``E``.
            cache: a ``KVCache`` from ``new_cache``; ``E``'s keys and values are appended to it and
                the queries attend over every position so far (causal, aligned bottom-right, so
                the new positions are the last ones).
            mask: boolean, True = may attend, broadcastable to
                ``(batch, n_heads, seq, seq_keys)``, e.g. ``(batch, 1, 1, seq_keys)`` for padding.

        Returns:
            ``(batch, seq, d_model)`` (or ``(seq, d_model)`` for 2-D ``E``).
        """
        X = self._check("E", E)
        B, S, _ = X.shape
        if context is not None:
            if cache is not None:
                raise AttnkitError("cache= works with self-attention only; for cross-attention "
                                   "pass the same context each step (its keys are recomputed)")
            if self.causal:
                raise AttnkitError("cross-attention (context=...) with causal=True: positions in "
                                   "the context do not follow E's positions; build this layer with "
                                   "MultiHeadAttention(..., causal=False)")
            C = self._check("context", context)
            if C.shape[0] != B:
                raise AttnkitError(f"E has batch {B} but context has batch {C.shape[0]}; they must "
                                   "match")
        else:
            C = X
        q = self._project(X, self.W_Q, self.b_Q, self.n_heads)  # (B, Hq, S, d_key)
        k = self._project(C, self.W_K, self.b_K, self.n_kv_heads)  # (B, Hkv, S_ctx, d_key)
        v = self._project(C, self.W_V, self.b_V, self.n_kv_heads)  # (B, Hkv, S_ctx, d_value)
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise InputTypeError(f"cache must be a KVCache from new_cache(); got "
                                     f"{type(cache).__name__}")
            k, v = cache.append(self, k, v)  # (B, Hkv, length, d_key | d_value)
        mixed = attend(self, q, k, v, causal=self.causal, mask=mask,
                       scale=1.0 / math.sqrt(self.d_key))  # (B, Hq, S, d_value)
        mixed = mixed.transpose(1, 2).reshape(B, S, self.n_heads * self.d_value)  # (B, S, Hq·dv)
        dE = mixed @ self.W_O  # (B, S, d_model)
        if self.b_O is not None:
            dE = dE + self.b_O
        return (X + dE).reshape(E.shape)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty ``KVCache`` for ``batch`` sequences of up to ``max_len`` positions, in this
        module's dtype and device."""
        batch = check_positive_int("new_cache: batch", batch)
        max_len = check_positive_int("new_cache: max_len", max_len)
        kw = {"dtype": self.W_K.dtype, "device": self.W_K.device}
        k = torch.zeros(batch, self.n_kv_heads, max_len, self.d_key, **kw)
        v = torch.zeros(batch, self.n_kv_heads, max_len, self.d_value, **kw)
        return KVCache(self, batch, max_len, k, v)

    def heads(self) -> list[AttentionHead]:
        """The same computation as separate ``AttentionHead``s (copies of the weights).

        ``mha(E) == E + sum(head.update(E) for head in mha.heads())``. A grouped key/value head's
        ``W_K`` and ``W_V`` are copied into each query head that reads it. Needs ``bias=False``.
        """
        if self.has_bias:
            raise AttnkitError("heads() needs a MultiHeadAttention built with bias=False: an "
                               "AttentionHead has no bias vectors, as in the notes")
        group = self.n_heads // self.n_kv_heads
        dk, dv = self.d_key, self.d_value
        p = next(self.parameters())
        result = []
        for h in range(self.n_heads):
            g = h // group  # the kv head this query head reads
            head = AttentionHead(self.d_model, dk, dv, causal=self.causal, device=p.device,
                                 dtype=p.dtype)
            with torch.no_grad():
                head.W_Q.copy_(self.W_Q[:, h * dk : (h + 1) * dk])
                head.W_K.copy_(self.W_K[:, g * dk : (g + 1) * dk])
                head.W_V_down.copy_(self.W_V[:, g * dv : (g + 1) * dv])
                head.W_V_up.copy_(self.W_O[h * dv : (h + 1) * dv, :])
            result.append(head)
        return result

    def _project(self, X: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None,
                 n: int) -> torch.Tensor:
        """``X (B, S, d_model) · W (d_model, n·d)`` split into heads: ``(B, n, S, d)``."""
        Y = X @ W  # (B, S, n·d)
        if b is not None:
            Y = Y + b
        return Y.view(*X.shape[:2], n, -1).transpose(1, 2)  # (B, n, S, d)

    def _check(self, name: str, E: torch.Tensor) -> torch.Tensor:
        """Return ``E`` as ``(B, S, d_model)`` or raise a clear error."""
        E = check_embeddings(E, self.d_model, self.W_Q.dtype, name, "layer")
        return E if E.dim() == 3 else E.unsqueeze(0)
