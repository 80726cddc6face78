"""One attention head, exactly as the notes draw it: ``W_Q`` and ``W_K`` map each embedding ``E_i``
to a query ``Q_i`` and a key ``K_i``; dot products say which keys answer which queries.

Read top to bottom: ``queries`` → ``keys`` → ``scores`` → ``pattern`` → ``values`` → ``update``.
``scores``/``pattern``/``values`` are the plain path a learner reads; ``update`` is the same
arithmetic through ``attnkit.attention`` (fast, exact, memory linear in length) — the tests check
that both agree.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnkit.errors import AttnkitError, InputTypeError
from attnkit.kernels.recording import attend
from attnkit.runtime import check_positive_int


def check_embeddings(E: torch.Tensor, d_model: int, dtype: torch.dtype, name: str,
                     owner: str) -> torch.Tensor:
    """``E`` unchanged when it is a ``(seq, d_model)`` or ``(batch, seq, d_model)`` tensor of
    ``dtype``; otherwise a clear error naming ``name`` and the ``owner`` ("head", "layer")."""
    if not isinstance(E, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor of shape (seq, d_model) or "
                             f"(batch, seq, d_model); got {type(E).__name__}")
    if E.dim() not in (2, 3) or E.shape[-1] != d_model:
        raise AttnkitError(f"{name} must have shape (seq, {d_model}) or (batch, seq, {d_model}) "
                           f"for this {owner} (d_model={d_model}); got {tuple(E.shape)}")
    if E.dtype != dtype:
        raise InputTypeError(f"{name} is {E.dtype} but this {owner}'s weights are {dtype}; convert "
                             f"one of them, e.g. {name}.to({dtype}) or {owner}.to({E.dtype})")
    return E

__all__ = ["AttentionHead"]


class AttentionHead(nn.Module):
    """A single attention head with the notes' names.

    Args:
        d_model: size of each embedding ``E_i`` (12,288 in GPT-3).
        d_key: size of the smaller query/key space (128 in GPT-3).
        d_value: size of the value bottleneck, ``value↓`` then ``value↑``; default ``d_key``.
        causal: a query may only look at keys at its own position or before (as in GPT).

    Parameters (row vector times matrix, as the notes write ``E_1 · W_K = K_1``):
        ``W_Q (d_model, d_key)``, ``W_K (d_model, d_key)``, ``W_V_down (d_model, d_value)``,
        ``W_V_up (d_value, d_model)``.

    Every method takes ``E`` of shape ``(seq, d_model)`` or ``(batch, seq, d_model)``; results keep
    the leading batch dimension if ``E`` had one. Scores and patterns are ``[..., query, key]``:
    ``scores[..., j, i]`` is the notes' ``K_i · Q_j`` (scaled).
    """

    n_heads = 1  # one head; the same attribute names as MultiHeadAttention, for inspection tools
    n_kv_heads = 1

    def __init__(self, d_model: int, d_key: int, d_value: int | None = None, causal: bool = True,
                 *, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        d_value = d_key if d_value is None else d_value
        for name, size in (("d_model", d_model), ("d_key", d_key), ("d_value", d_value)):
            check_positive_int(f"AttentionHead: {name}", size)
        self.d_model, self.d_key, self.d_value, self.causal = d_model, d_key, d_value, bool(causal)
        kw = {"device": device, "dtype": dtype}
        # Scaled so that E @ W has entries of about the size of E's entries (fan-in init).
        self.W_Q = nn.Parameter(torch.randn(d_model, d_key, **kw) / math.sqrt(d_model))
        self.W_K = nn.Parameter(torch.randn(d_model, d_key, **kw) / math.sqrt(d_model))
        self.W_V_down = nn.Parameter(torch.randn(d_model, d_value, **kw) / math.sqrt(d_model))
        self.W_V_up = nn.Parameter(torch.randn(d_value, d_model, **kw) / math.sqrt(d_value))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_key={self.d_key}, d_value={self.d_value}, "
                f"causal={self.causal}")

    # -- the notes, line by line -----------------------------------------------------------------

    def queries(self, E: torch.Tensor) -> torch.Tensor:
        """``Q_i = E_i · W_Q``: what each position is looking for. ``(..., seq, d_key)``."""
        return self._check(E) @ self.W_Q  # (..., seq, d_key)

    def keys(self, E: torch.Tensor) -> torch.Tensor:
        """``K_i = E_i · W_K``: what each position offers as an answer. ``(..., seq, d_key)``."""
        return self._check(E) @ self.W_K  # (..., seq, d_key)

    def scores(self, E: torch.Tensor) -> torch.Tensor:
        """How well each key matches each query: ``K_i · Q_j / sqrt(d_key)`` at ``[..., j, i]``.

        Returns ``(..., seq_q, seq_k)``; with ``causal``, keys after the query are ``-inf``.
        """
        Q, K = self.queries(E), self.keys(E)  # (..., seq, d_key) each
        S = Q @ K.transpose(-1, -2) / math.sqrt(self.d_key)  # (..., seq_q, seq_k)
        if self.causal:
            seq = S.shape[-1]
            later = torch.ones(seq, seq, dtype=torch.bool, device=S.device).triu(1)  # key > query
            S = S.masked_fill(later, float("-inf"))
        return S

    def pattern(self, E: torch.Tensor) -> torch.Tensor:
        """The attention pattern: softmax over keys of the scores; each query's row sums to 1.

        Returns ``(..., seq_q, seq_k)``.
        """
        return self.scores(E).softmax(dim=-1)  # (..., seq_q, seq_k)

    def values(self, E: torch.Tensor) -> torch.Tensor:
        """``V_i = E_i · W_V_down · W_V_up``: what position ``i`` adds to whoever attends to it.

        Returns ``(..., seq, d_model)`` — value vectors live in embedding space; the value matrix
        is factored ``value↓ (d_model, d_value)`` · ``value↑ (d_value, d_model)`` to keep it small.
        """
        return self._check(E) @ self.W_V_down @ self.W_V_up  # (..., seq, d_model)

    def update(self, E: torch.Tensor) -> torch.Tensor:
        """``ΔE_j = Σ_i pattern[j, i] · V_i``: the change this head proposes for each embedding.

        Computed as ``pattern @ values(E)`` would be, but through ``attnkit.attention`` (no
        ``seq × seq`` buffer) and applying ``value↑`` after the weighted sum — the same by
        linearity, and ``d_model / d_value`` times cheaper. Returns ``(..., seq, d_model)``.
        """
        E = self._check(E)
        E4 = E.reshape(-1, 1, *E.shape[-2:])  # (B, 1, seq, d_model): one head
        q = E4 @ self.W_Q  # (B, 1, seq, d_key)
        k = E4 @ self.W_K  # (B, 1, seq, d_key)
        v = E4 @ self.W_V_down  # (B, 1, seq, d_value)
        mixed = attend(self, q, k, v, causal=self.causal,
                       scale=1.0 / math.sqrt(self.d_key))  # (B, 1, seq, d_value)
        dE = mixed @ self.W_V_up  # (B, 1, seq, d_model)
        return dE.reshape(E.shape)  # (..., seq, d_model)

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        """``E + ΔE``: the embeddings after this head's update. ``(..., seq, d_model)``."""
        return E + self.update(E)

    def _check(self, E: torch.Tensor) -> torch.Tensor:
        return check_embeddings(E, self.d_model, self.W_Q.dtype, "E", "head")
