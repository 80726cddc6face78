"""Record the queries, keys and log-sum-exp of a model's attention during a forward pass.

``with attnkit.capture(model) as cap: model(...)`` keeps, per layer, ``q``, ``k`` (as the model
used them, after rotary embeddings) and ``lse`` — never a pattern. Any piece of any pattern is then
recomputed exactly on demand: ``cap.pattern(layer, head, rows=..., cols=...)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnkit.inspect.recording import recording
from attnkit.kernels.api import pattern as _pattern
from attnkit.kernels.masks import Index

__all__ = ["capture", "Capture", "Record"]


@dataclass(frozen=True)
class Record:
    """One attention call: ``q (B, H, Sq, D)``, ``k (B, H', Sk, D)``, ``lse (B, H, Sq)``, and the
    options it ran with (causal, window, mask, bias, scale). ``heads`` are the model's head numbers
    of ``q``'s heads; when only some heads were kept ``k`` holds one key head per kept head.
    ``n_heads`` is the module's number of query heads."""

    q: torch.Tensor
    k: torch.Tensor
    lse: torch.Tensor
    options: dict[str, Any]
    heads: tuple[int, ...]
    n_heads: int


def _attnkit_modules(model: nn.Module) -> list[nn.Module]:
    """attnkit MultiHeadAttention/AttentionHead modules of ``model`` in ``modules()`` order,
    leaving out heads that live inside a MultiHeadAttention."""
    try:
        from attnkit.core.head import AttentionHead
        from attnkit.core.multihead import MultiHeadAttention
    except ImportError:
        return []
    found, inner = [], set()
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            inner.update(id(sub) for sub in m.modules() if sub is not m)
    for m in model.modules():
        if isinstance(m, (MultiHeadAttention, AttentionHead)) and id(m) not in inner:
            found.append(m)
    return found


def _hf_attention_modules(model: nn.Module) -> list[nn.Module]:
    """Attention modules of a transformers model: modules named ``*Attention*`` with an int
    ``layer_idx``, innermost only (BertAttention wraps the BertSelfAttention that calls the
    attention interface)."""
    found = [m for m in model.modules()
             if "Attention" in type(m).__name__ and isinstance(getattr(m, "layer_idx", None), int)]
    ids = {id(m) for m in found}
    return [m for m in found if not any(id(sub) in ids for sub in m.modules() if sub is not m)]


def _is_hf(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def _one(t: torch.Tensor | None, batch: int, head: int | None) -> torch.Tensor | None:
    """Slice a 4-D ``(B|1, H|1, Sq|1, Sk|1)`` mask/bias to one batch item (and head)."""
    if t is None:
        return None
    if t.shape[0] > 1:
        t = t[batch:batch + 1]
    if head is not None and t.shape[1] > 1:
        t = t[:, head:head + 1]
    return t


class Capture:
    """What ``attnkit.capture`` recorded: per layer ``q``, ``k`` and ``lse``.

    Layers are numbered like the model's: a Hugging Face attention module's ``layer_idx``, or the
    order of attnkit MultiHeadAttention/AttentionHead modules in ``model.modules()``. When a layer
    runs again inside the block, a decoding step over a KV cache (its keys extend the previous
    call's by one per query) adds its queries as new rows, so after ``generate()`` the capture
    holds the whole sequence; any other call replaces what the layer had.
    """

    def __init__(self, model: nn.Module, layers: list[int] | None, heads: list[int] | None):
        self._model_name = type(model).__name__
        self._module_ids = {id(m) for m in model.modules()}
        self._wanted_layers = None if layers is None else sorted(set(int(x) for x in layers))
        self._wanted_heads = None if heads is None else sorted(set(int(h) for h in heads))
        self._table = self._layer_table(model)
        known = len(self._table)
        beyond = [x for x in self._wanted_layers or [] if x >= known]
        if known and beyond:
            raise ValueError(f"capture(layers={self._wanted_layers}): {self._model_name} has "
                             f"{known} attention layers (0..{known - 1}); no layer {beyond}")
        self._records: dict[int, Record] = {}
        self._dynamic: dict[int, int] = {}
        self._active = False
        self.tokens: list[str] | None = None

    @staticmethod
    def _layer_table(model: nn.Module) -> dict[int, int]:
        """``id(module) -> layer`` for the attention modules known before the forward pass."""
        modules = _attnkit_modules(model) + (_hf_attention_modules(model) if _is_hf(model) else [])
        idx = [getattr(m, "layer_idx", None) for m in modules]
        if modules and all(isinstance(i, int) for i in idx) and len(set(idx)) == len(idx):
            return {id(m): i for m, i in zip(modules, idx, strict=True)}
        return {id(m): n for n, m in enumerate(modules)}

    # ---- the recorder protocol (used by attnkit.inspect.recording) ----------------------------

    def _layer_of(self, module: Any) -> int:
        key = id(module)
        if key in self._table:
            return self._table[key]
        if key not in self._dynamic:  # a module that calls attend() but is not in the table
            self._dynamic[key] = len(self._table) + len(self._dynamic)
        return self._dynamic[key]

    def wants(self, module: Any) -> bool:
        if id(module) not in self._module_ids:
            return False
        return self._wanted_layers is None or self._layer_of(module) in self._wanted_layers

    def record(self, module: Any, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor,
               options: dict[str, Any]) -> None:
        layer = self._layer_of(module)
        hq, hkv = q.shape[1], k.shape[1]
        heads = list(range(hq)) if self._wanted_heads is None else self._wanted_heads
        missing = [h for h in heads if h >= hq]
        if missing:
            raise ValueError(f"capture(heads={self._wanted_heads}): layer {layer} of "
                             f"{self._model_name} has {hq} heads (0..{hq - 1}); no head {missing}")
        options = dict(options)
        for name in ("mask", "bias"):  # as 4-D (B|1, H|1, Sq|1, Sk|1), detached
            t = options.get(name)
            if isinstance(t, torch.Tensor):
                options[name] = t.detach().reshape((1,) * (4 - t.dim()) + tuple(t.shape))
        # copies: a KV cache may hand out views of buffers it later overwrites
        q, k, lse = q.detach().clone(), k.detach().clone(), lse.detach()
        if self._wanted_heads is not None:
            index = torch.tensor(heads, device=q.device)
            kv_index = index // (hq // hkv)  # the key head each kept query head reads
            q = q.index_select(1, index)  # (B, H, Sq, D)
            lse = lse.index_select(1, index)  # (B, H, Sq)
            k = k.index_select(1, kv_index)  # (B, H, Sk, D)
            for name in ("mask", "bias"):
                t = options.get(name)
                if t is not None and t.shape[1] > 1:
                    options[name] = t.index_select(1, index)
        record = Record(q, k, lse, options, tuple(heads), hq)
        previous = self._records.get(layer)
        if previous is not None and _continues(previous, record):
            # a decoding step over a KV cache: its queries are the next rows of one pattern
            record = Record(torch.cat([previous.q, q], dim=2), k,
                            torch.cat([previous.lse, lse], dim=2), options, tuple(heads), hq)
        self._records[layer] = record

    # ---- what was recorded ---------------------------------------------------------------------

    def _require(self) -> None:
        if not self._records:
            where = ("inside" if self._active else "after")
            raise RuntimeError(
                f"this capture of {self._model_name} has recorded nothing {where} its `with` "
                "block: run the model's forward inside `with attnkit.capture(model) as cap:` "
                "first. Only attention computed by attnkit is recorded: Hugging Face models "
                "loaded with attn_implementation='attnkit', or attnkit MultiHeadAttention/"
                "AttentionHead modules")

    def _record(self, layer: int) -> Record:
        self._require()
        if layer not in self._records:
            raise KeyError(f"layer {layer} was not captured; captured layers: {self.layers}"
                           + ("" if self._wanted_layers is None else
                              f" (capture was asked for layers={self._wanted_layers})"))
        return self._records[layer]

    @property
    def layers(self) -> list[int]:
        """The captured layers (before any forward pass: the layers asked for, or [])."""
        if not self._records:
            return list(self._wanted_layers or [])
        return sorted(self._records)

    @property
    def heads(self) -> list[int]:
        """The captured heads (before any forward pass: the heads asked for, or [])."""
        if not self._records:
            return list(self._wanted_heads or [])
        return list(next(iter(self._records.values())).heads)

    @property
    def n_layers(self) -> int:
        """How many attention layers the model has (at least as many as were recorded)."""
        return max(len(self._table) + len(self._dynamic), max(self._records, default=-1) + 1)

    @property
    def n_heads(self) -> int:
        """Query heads per layer in the model (all of them, even if fewer were kept)."""
        self._require()
        return next(iter(self._records.values())).n_heads

    def _slot(self, record: Record, layer: int, head: int) -> int:
        if head not in record.heads:
            raise KeyError(f"head {head} of layer {layer} was not captured; captured heads: "
                           f"{list(record.heads)}")
        return record.heads.index(head)

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
        if not 0 <= batch < record.q.shape[0]:
            raise IndexError(f"batch {batch} out of range: the capture holds {record.q.shape[0]} "
                             "sequences")
        mask = record.options.get("mask")
        if mask is not None and mask.dim() == 4 and mask.shape[2] == 1:
            return int(_one(mask, batch, 0)[0, 0, 0].sum())  # key padding (B, 1, 1, Sk)
        return record.q.shape[2]

    def _head_inputs(self, layer: int, head: int, batch: int):
        record = self._record(layer)
        if not 0 <= batch < record.q.shape[0]:
            raise IndexError(f"batch {batch} out of range: layer {layer} holds "
                             f"{record.q.shape[0]} sequences")
        slot = self._slot(record, layer, head)
        hq, hkv = record.q.shape[1], record.k.shape[1]
        kv = slot // (hq // hkv)
        q = record.q[batch:batch + 1, slot:slot + 1]  # (1, 1, Sq, D)
        k = record.k[batch:batch + 1, kv:kv + 1]  # (1, 1, Sk, D)
        lse = record.lse[batch:batch + 1, slot:slot + 1]  # (1, 1, Sq)
        opts = dict(record.options)
        opts["mask"] = _one(opts.get("mask"), batch, slot)
        opts["bias"] = _one(opts.get("bias"), batch, slot)
        opts.pop("backend", None)
        if opts.get("scale") is None:
            opts["scale"] = q.shape[-1] ** -0.5
        return q, k, lse, opts

    def pattern(self, layer: int, head: int, batch: int = 0, rows: Index | None = None,
                cols: Index | None = None) -> torch.Tensor:
        """Exact attention probabilities ``(R, C)`` float32, ``[query, key]``, of one head for
        query positions ``rows`` and key positions ``cols`` (slices or 1-D positions; None = all).
        Equal to eager ``output_attentions[layer][batch, head][rows][:, cols]``; costs R x C."""
        q, k, lse, opts = self._head_inputs(layer, head, batch)
        return _pattern(q, k, lse, rows=rows, cols=cols, **opts)[0, 0]

    def scores(self, layer: int, head: int, batch: int = 0, rows: Index | None = None,
               cols: Index | None = None) -> torch.Tensor:
        """Scaled scores ``(R, C)`` float32, ``[query, key]``: ``q·k * scale + bias``, -inf where
        the query may not see the key. ``softmax(scores, -1) == pattern`` on rows that see a key."""
        q, k, lse, opts = self._head_inputs(layer, head, batch)
        rows_ = slice(None) if rows is None else rows
        cols_ = slice(None) if cols is None else cols
        work = torch.float64 if q.dtype == torch.float64 else torch.float32
        q_rows = _take(q[0, 0], rows_).to(work)  # (R, D)
        k_cols = _take(k[0, 0], cols_).to(work)  # (C, D)
        s = (q_rows * opts["scale"]) @ k_cols.T  # (R, C)
        if opts.get("bias") is not None:
            bias = torch.broadcast_to(opts["bias"][0, 0], (q.shape[2], k.shape[2]))
            s = s + _take(_take(bias, rows_).T, cols_).T.to(work)
        # which cells are visible: the pattern of all-zero queries with lse 0 is exactly 1 there
        seen = _pattern(torch.zeros_like(q), k, torch.zeros_like(lse), rows=rows, cols=cols,
                        **{**opts, "bias": None})[0, 0]
        return s.masked_fill(seen == 0, float("-inf"))


def _continues(old: Record, new: Record) -> bool:
    """Whether ``new`` is ``old``'s sequence one decoding step on: its keys are ``old``'s keys
    followed by one key per new query, with the same options. Then, with causal and windows
    aligned bottom-right, ``old``'s queries keep their diagonals in the joined record."""
    sk_old = old.k.shape[2]
    if (new.q.shape[:2] != old.q.shape[:2] or new.k.shape[2] != sk_old + new.q.shape[2]
            or new.heads != old.heads or new.q.dtype != old.q.dtype):
        return False
    a, b = dict(old.options), dict(new.options)
    if a.pop("bias", None) is not None or b.pop("bias", None) is not None:
        return False
    mask_a, mask_b = a.pop("mask", None), b.pop("mask", None)
    if a != b:
        return False
    if mask_a is not None or mask_b is not None:  # key padding only, the old part unchanged
        if mask_a is None or mask_b is None or mask_a.shape[2] != 1 or mask_b.shape[2] != 1:
            return False
        if not torch.equal(mask_b[..., :sk_old], mask_a):
            return False
    return torch.equal(new.k[:, :, :sk_old], old.k)


def _take(t: torch.Tensor, index: Index) -> torch.Tensor:
    """Rows ``index`` (a slice or 1-D positions) of ``t``."""
    if isinstance(index, slice):
        return t[index]
    return t.index_select(0, torch.as_tensor(index, device=t.device).long() % t.shape[0])


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError("capture() needs a torch.nn.Module (a Hugging Face model or one built "
                        "from attnkit's MultiHeadAttention/AttentionHead); got "
                        f"{type(model).__name__}")
    if not _is_hf(model):
        return
    from attnkit.hf import NAME, check_supported

    check_supported(model)
    implementation = model.config._attn_implementation
    if implementation != NAME:
        raise ValueError(
            f"{type(model).__name__} runs attn_implementation={implementation!r}, which attnkit "
            f"cannot see; load it with from_pretrained(..., attn_implementation={NAME!r}) or call "
            f"model.set_attn_implementation({NAME!r}) (after `import attnkit.hf`)")


def _check_selection(name: str, values: list[int] | None) -> None:
    if values is None:
        return
    if isinstance(values, int) or not all(isinstance(v, int) and v >= 0 for v in values):
        raise ValueError(f"capture({name}=...) takes a list of ints >= 0 or None; got {values!r}")


@contextlib.contextmanager
def capture(model: nn.Module, layers: list[int] | None = None,
            heads: list[int] | None = None) -> Iterator[Capture]:
    """Record ``q``, ``k`` and ``lse`` of ``model``'s attention during forward passes in the block.

    Works on Hugging Face models running ``attn_implementation="attnkit"`` and on any module
    containing attnkit MultiHeadAttention/AttentionHead. ``layers``/``heads`` keep only those
    (None = all). Memory: ``q``, ``k`` and ``lse`` per kept layer, linear in sequence length.

    >>> with attnkit.capture(model) as cap:
    ...     model(**inputs)
    >>> cap.pattern(0, 3)  # (S, S) [query, key], exact
    """
    _check_selection("layers", layers)
    _check_selection("heads", heads)
    _check_model(model)
    cap = Capture(model, layers, heads)
    cap._active = True
    try:
        with recording(cap):
            yield cap
    finally:
        cap._active = False
