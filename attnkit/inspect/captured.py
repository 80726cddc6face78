"""Reading what a capture holds: per layer the queries, keys and log-sum-exp of one attention call,
from which any piece of any head's pattern is recomputed exactly.

``Captured`` is the reading API shared by a live ``attnkit.capture`` and a capture loaded from a
file: ``layers``, ``heads``, ``queries``, ``keys``, ``lse``, ``options``, ``seq_len``, ``tokens``,
``pattern``, ``patterns`` (many heads at once), ``scores``, ``why`` (the notes' ``K_i · Q_j`` of
one cell) and ``save`` (a capture file that ``attnkit.load_capture`` reads back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from attnkit.errors import AttnkitError, OutOfRangeError
from attnkit.kernels.api import pattern as _pattern
from attnkit.kernels.masks import Index
from attnkit.runtime import work_dtype

if TYPE_CHECKING:
    import os
    from pathlib import Path

    from attnkit.inspect.families import ModelInfo
    from attnkit.inspect.rotary import Rotary
    from attnkit.inspect.why import Why

__all__ = ["Record", "Captured", "select_one"]


@dataclass(frozen=True)
class Record:
    """One attention call: ``q (B, H, Sq, D)``, ``k (B, H', Sk, D)``, ``lse (B, H, Sq)``, and the
    options it ran with (causal, window, mask, bias, scale; mask and bias 4-D
    ``(B|1, H|1, Sq|1, Sk|1)``). ``heads`` are the model's head numbers of ``q``'s heads; when only
    some heads were kept ``k`` holds one key head per kept head. ``n_heads`` is the module's number
    of query heads."""

    q: torch.Tensor
    k: torch.Tensor
    lse: torch.Tensor
    options: dict[str, Any]
    heads: tuple[int, ...]
    n_heads: int

    def kv_slot(self, slot: int) -> int:
        """The key head that query head number ``slot`` (of ``q``) reads."""
        return slot // (self.q.shape[1] // self.k.shape[1])


def select_one(t: torch.Tensor | None, batch: int, heads: torch.Tensor | None = None
               ) -> torch.Tensor | None:
    """A 4-D ``(B|1, H|1, Sq|1, Sk|1)`` mask or bias cut to one batch item and (when it has a
    head dimension) the query heads ``heads``: ``(1, h|1, Sq|1, Sk|1)``."""
    if t is None:
        return None
    if t.shape[0] > 1:
        t = t[batch:batch + 1]
    if heads is not None and t.shape[1] > 1:
        t = t.index_select(1, heads.to(t.device))
    return t


class Captured:
    """Per layer, the ``Record`` of its attention; subclasses fill ``_records``, ``_tokens``.

    ``model_info`` (a ``ModelInfo``, or None when unknown) and ``rotary`` (how the model rotates
    queries and keys, or None) describe the model the capture came from."""

    def __init__(self, name: str):
        self._name = name
        self._records: dict[int, Record] = {}
        self._token_lists: list[list[str]] | None = None
        self.model_info: ModelInfo | None = None
        self.rotary: Rotary | None = None

    @property
    def model_name(self) -> str:
        """The name of the model the capture came from."""
        return self._name

    # ---- what is there ---------------------------------------------------------------------

    def _require(self) -> None:
        if not self._records:
            raise AttnkitError(f"the capture of {self._name} holds nothing")

    def _record(self, layer: int) -> Record:
        self._require()
        if layer not in self._records:
            raise OutOfRangeError(f"layer {layer!r} was not captured; captured layers: "
                                  f"{self.layers}")
        return self._records[layer]

    @property
    def layers(self) -> list[int]:
        """The captured layers, in order."""
        return sorted(self._records)

    @property
    def heads(self) -> list[int]:
        """The captured heads (the model's head numbers)."""
        self._require()
        return list(next(iter(self._records.values())).heads)

    @property
    def n_heads(self) -> int:
        """Query heads per layer in the model (all of them, even if fewer were kept)."""
        self._require()
        return next(iter(self._records.values())).n_heads

    @property
    def batch_size(self) -> int:
        """How many sequences the capture holds."""
        return self._record(self.layers[0]).q.shape[0]

    @property
    def tokens(self) -> list[str] | None:
        """The tokens of sequence 0 as the model saw them (None when unknown)."""
        return self.tokens_of(0)

    def tokens_of(self, batch: int) -> list[str] | None:
        """The tokens of sequence ``batch``, one per query position (None when unknown)."""
        if self._token_lists is None:
            return None
        self._check_batch(batch, len(self._token_lists))
        return list(self._token_lists[batch])

    def queries(self, layer: int) -> torch.Tensor:
        """The queries of ``layer`` as the model used them: ``(B, H, Sq, D)`` (H = kept heads)."""
        return self._record(layer).q

    def keys(self, layer: int) -> torch.Tensor:
        """The keys of ``layer``: ``(B, Hkv, Sk, D)``; with ``heads=``, one key head per kept
        head."""
        return self._record(layer).k

    def lse(self, layer: int) -> torch.Tensor:
        """Log-sum-exp of each query's scaled scores: ``(B, H, Sq)`` float32; -inf for a query
        that saw no key (a padding position)."""
        return self._record(layer).lse

    def options(self, layer: int) -> dict[str, Any]:
        """The attention options ``layer`` ran with (causal, window, mask, bias, scale)."""
        return dict(self._record(layer).options)

    def seq_len(self, batch: int = 0) -> int:
        """Tokens in sequence ``batch``: the query length, less padding keys when there are any."""
        record = self._record(self.layers[0])
        self._check_batch(batch, record.q.shape[0])
        mask = record.options.get("mask")
        if mask is not None and mask.shape[2] == 1 and mask.shape[1] == 1:  # key padding
            return int(select_one(mask, batch)[0, 0, 0].sum())
        return record.q.shape[2]

    # ---- patterns ------------------------------------------------------------------------------

    def _check_batch(self, batch: int, size: int) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 0 <= batch < size:
            raise OutOfRangeError(f"batch {batch!r} out of range: the capture holds {size} "
                                  f"sequence{'s' if size != 1 else ''} (0..{size - 1})")

    def _slots(self, record: Record, layer: int, heads: Sequence[int]) -> list[int]:
        """Positions in ``record`` of the model's ``heads``, or an error naming the kept ones."""
        slots = []
        for head in heads:
            if isinstance(head, bool) or not isinstance(head, int) or head not in record.heads:
                raise OutOfRangeError(f"head {head!r} of layer {layer} was not captured; "
                                      f"captured heads: {list(record.heads)}")
            slots.append(record.heads.index(head))
        return slots

    def _inputs(self, layer: int, heads: Sequence[int] | None, batch: int):
        """``q (1, h, Sq, D)``, ``k (1, h, Sk, D)`` (each query head's own key head),
        ``lse (1, h, Sq)`` and the pattern options of ``heads`` (None: every captured head)."""
        record = self._record(layer)
        self._check_batch(batch, record.q.shape[0])
        slots = self._slots(record, layer, record.heads if heads is None else heads)
        index = torch.tensor(slots, device=record.q.device)
        kv = torch.tensor([record.kv_slot(s) for s in slots], device=record.q.device)
        q = record.q[batch:batch + 1].index_select(1, index)  # (1, h, Sq, D)
        k = record.k[batch:batch + 1].index_select(1, kv)  # (1, h, Sk, D)
        lse = record.lse[batch:batch + 1].index_select(1, index)  # (1, h, Sq)
        opts = {name: record.options.get(name) for name in ("causal", "window", "scale",
                                                             "softcap")}
        opts["mask"] = select_one(record.options.get("mask"), batch, index)
        opts["bias"] = select_one(record.options.get("bias"), batch, index)
        sinks = record.options.get("sinks")  # (H,) one per slot, or None
        opts["sinks"] = None if sinks is None else sinks.index_select(0, index.to(sinks.device))
        if opts["scale"] is None:
            opts["scale"] = q.shape[-1] ** -0.5
        opts["causal"] = bool(opts["causal"])
        return q, k, lse, opts

    def pattern_inputs(self, layer: int, heads: Sequence[int] | None = None, batch: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """What ``attnkit.pattern`` needs for ``heads`` (None: every captured head) of sequence
        ``batch``: ``(q (1, h, Sq, D), k (1, h, Sk, D), lse (1, h, Sq), options)``, ``k`` holding
        each query head's own key head and the options (causal, window, mask, bias, scale,
        softcap, sinks) cut to that sequence and those heads. For callers that compute many
        tiles of one sequence: ``pattern(q, k, lse, rows=…, cols=…, **options)``."""
        return self._inputs(layer, heads, batch)

    def patterns(self, layer: int, heads: Sequence[int] | None = None, batch: int = 0,
                 rows: Index | None = None, cols: Index | None = None) -> torch.Tensor:
        """Exact attention probabilities of several heads at once: ``(h, R, C)`` float32,
        ``[head, query, key]``, for the model's ``heads`` (None: every captured head)."""
        q, k, lse, opts = self._inputs(layer, heads, batch)
        return _pattern(q, k, lse, rows=rows, cols=cols, **opts)[0]

    def pattern(self, layer: int, head: int, batch: int = 0, rows: Index | None = None,
                cols: Index | None = None) -> torch.Tensor:
        """Exact attention probabilities ``(R, C)`` float32, ``[query, key]``, of one head for
        query positions ``rows`` and key positions ``cols`` (slices or 1-D positions; None = all).
        Equal to eager ``output_attentions[layer][batch, head][rows][:, cols]``; costs R x C."""
        return self.patterns(layer, [head], batch, rows, cols)[0]

    def weights_at(self, layer: int, query: torch.Tensor, key: torch.Tensor, batch: int = 0,
                   heads: Sequence[int] | None = None) -> torch.Tensor:
        """Exact attention weights at listed cells, for many heads at once: ``(h, P)`` float32,
        the weight query ``query[p]`` puts on key ``key[p]`` (1-D positions, ``(P,)`` each).

        Costs ``O(h · P · D)``, whatever the sequence length: what head detectors need to score
        a relation at any length. Computed in float64 from ``q``, ``k`` and ``lse``."""
        q, k, lse, opts = self._inputs(layer, heads, batch)
        query, key = torch.as_tensor(query).long(), torch.as_tensor(key).long()
        sq, sk = q.shape[2], k.shape[2]
        if query.shape != key.shape or query.dim() != 1:
            raise AttnkitError(f"query and key must be 1-D positions of one length; got "
                               f"{tuple(query.shape)} and {tuple(key.shape)}")
        for name, pos, size in (("query", query, sq), ("key", key, sk)):
            if len(pos) and (int(pos.min()) < 0 or int(pos.max()) >= size):
                raise OutOfRangeError(f"{name} positions must lie in 0..{size - 1}; got "
                                      f"{int(pos.min())}..{int(pos.max())}")
        query, key = query.to(q.device), key.to(q.device)
        qa = q[0][:, query].double()  # (h, P, D)
        ka = k[0][:, key].double()  # (h, P, D)
        s = soft_capped((qa * ka).sum(-1) * opts["scale"], opts["softcap"])  # (h, P)
        if opts["bias"] is not None:
            b = opts["bias"][0]  # (h|1, Sq|1, Sk|1)
            rows = query if b.shape[1] > 1 else torch.zeros_like(query)
            cols = key if b.shape[2] > 1 else torch.zeros_like(key)
            s = s + b[:, rows, cols].double()
        lse_at = lse[0][:, query].double()  # (h, P); -inf for a query that sees no key
        p = torch.exp(s - torch.where(torch.isneginf(lse_at), torch.inf, lse_at))
        seen = visible_pairs(opts, query, key, sq, sk)  # (h|1, P)
        return p.masked_fill(~seen, 0.0).float()

    def scores(self, layer: int, head: int, batch: int = 0, rows: Index | None = None,
               cols: Index | None = None) -> torch.Tensor:
        """Scaled scores ``(R, C)`` float32, ``[query, key]``: ``q·k * scale + bias`` (soft-capped
        first, ``c·tanh(s/c)``, where the model caps its logits), -inf where the query may not see
        the key. ``softmax(scores, -1) == pattern`` on rows that see a key (with attention sinks
        the pattern is that softmax times ``exp(lse_keys - lse)``: its rows sum to less than 1)."""
        q, k, lse, opts = self._inputs(layer, [head], batch)
        work = work_dtype(q.dtype)
        q_rows = _take(q[0, 0], rows).to(work)  # (R, D)
        k_cols = _take(k[0, 0], cols).to(work)  # (C, D)
        s = soft_capped((q_rows * opts["scale"]) @ k_cols.T, opts["softcap"])  # (R, C)
        if opts["bias"] is not None:
            bias = torch.broadcast_to(opts["bias"][0, 0], (q.shape[2], k.shape[2]))
            s = s + _take(_take(bias, rows).T, cols).T.to(work)
        # which cells are visible: the pattern of all-zero queries with lse 0 is exactly 1 there
        seen = _pattern(torch.zeros_like(q), k, torch.zeros_like(lse), rows=rows, cols=cols,
                        **{**opts, "bias": None})[0, 0]
        return s.masked_fill(seen == 0, float("-inf"))

    # ---- the notes' K·Q for one cell, and files ------------------------------------------------

    def why(self, layer: int, head: int, query: int, key: int, batch: int = 0,
            top: int = 8) -> Why:
        """Why key ``key`` answers query ``query`` in this head: the notes' ``K_i · Q_j``.

        Returns a ``Why``: ``q`` and ``k`` ``(d_key,)``, their products ``q * k``, the dot
        product, ``scale``, ``bias`` (None if the head has none), ``score`` (-inf when masked,
        with ``mask_reason``), ``weight`` (the pattern's cell), the key's ``rank`` among the
        query's keys, the query's ``top`` best keys (``competitors``) and, for rotary models,
        the products grouped by rotary frequency band (``bands``). Float64, from q, k and lse:
        ``score`` equals ``scores()`` and ``weight`` equals ``pattern()`` at that cell."""
        from attnkit.inspect.why import why

        return why(self, layer, head, query, key, batch, top)

    def save(self, path: str | os.PathLike, *, model_name: str | None = None,
             overwrite: bool = False) -> Path:
        """Write the capture to one safetensors file that ``attnkit.load_capture`` reads back
        (no model needed): per layer q, k, lse and the options, the tokens, the model's name
        (``model_name``, default ``self.model_name``) and description. Size
        O(layers · heads · N · d), never N². An existing file is replaced only with
        ``overwrite=True``; the file appears whole or not at all."""
        from attnkit.inspect.capture_file import save_capture

        return save_capture(self, path, model_name=model_name, overwrite=overwrite)


def soft_capped(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """``softcap * tanh(scores / softcap)`` (Gemma 2's logit soft-capping), or ``scores`` when
    ``softcap`` is None: what the kernel does to each scaled score before bias and mask."""
    return scores if softcap is None else softcap * torch.tanh(scores / softcap)


def _take(t: torch.Tensor, index: Index | None) -> torch.Tensor:
    """Rows ``index`` (None, a slice or 1-D positions) of ``t``."""
    if index is None:
        return t
    if isinstance(index, slice):
        return t[index]
    return t.index_select(0, torch.as_tensor(index, device=t.device).long() % t.shape[0])


def visible_pairs(options: dict[str, Any], query: torch.Tensor, key: torch.Tensor, n_queries: int,
                  n_keys: int) -> torch.Tensor:
    """``(h|1, P)`` bool: may query ``query[p]`` see key ``key[p]`` under ``options`` (causal and
    window aligned bottom-right, then the boolean ``mask``, already cut to one sequence:
    ``(1, h|1, Sq|1, Sk|1)``)."""
    window = options.get("window") or (None, None)
    left, right = window
    if options.get("causal"):
        right = 0 if right is None else min(right, 0)
    diag = query + (n_keys - n_queries)  # (P,) the key on each query's diagonal
    seen = torch.ones_like(query, dtype=torch.bool)[None]  # (1, P)
    if right is not None:
        seen = seen & (key <= diag + right)
    if left is not None:
        seen = seen & (key >= diag - left)
    mask = options.get("mask")  # (1, h|1, Sq|1, Sk|1)
    if mask is not None:
        m = mask[0]
        rows = query if m.shape[1] > 1 else torch.zeros_like(query)
        cols = key if m.shape[2] > 1 else torch.zeros_like(key)
        seen = seen & m[:, rows, cols]  # (h|1, P)
    return seen


def visible_counts(options: dict[str, Any], n_queries: int, n_keys: int) -> torch.Tensor:
    """``(h|1, Sq)``: how many keys each query may see under ``options`` (mask cut to one
    sequence, as in ``visible_pairs``). Linear in length unless the mask itself is ``Sq × Sk``."""
    window = options.get("window") or (None, None)
    left, right = window
    if options.get("causal"):
        right = 0 if right is None else min(right, 0)
    diag = torch.arange(n_queries) + (n_keys - n_queries)  # (Sq,)
    lo = torch.zeros_like(diag) if left is None else (diag - left).clamp(0, n_keys)
    hi = torch.full_like(diag, n_keys) if right is None else (diag + right + 1).clamp(0, n_keys)
    hi = torch.maximum(hi, lo)  # keys [lo, hi) by causal/window
    mask = options.get("mask")  # (1, h|1, Sq|1, Sk|1)
    if mask is None or mask.shape[3] == 1:
        counts = (hi - lo)[None]  # (1, Sq)
        if mask is not None:
            counts = counts * mask[0, :, :, 0].long()
        return counts
    m = mask[0].long().cpu()  # (h|1, Sq|1, Sk)
    if m.shape[1] == 1:  # key padding: prefix sums give each query's count in O(Sk)
        before = torch.nn.functional.pad(m[:, 0].cumsum(-1), (1, 0))  # (h|1, Sk + 1)
        return before[:, hi] - before[:, lo]
    cols = torch.arange(n_keys)
    band = (cols[None] >= lo[:, None]) & (cols[None] < hi[:, None])  # (Sq, Sk): mask is as big
    return (m.bool() & band).sum(-1)
