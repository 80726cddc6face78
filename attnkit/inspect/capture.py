"""Record the queries, keys and log-sum-exp of a model's attention during a forward pass.

``with attnkit.capture(model) as cap: model(...)`` keeps, per layer, ``q``, ``k`` (as the model
used them, after rotary embeddings) and ``lse`` — never a pattern. Any piece of any pattern is then
recomputed exactly on demand: ``cap.pattern(layer, head, rows=..., cols=...)`` (see ``Captured``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from attnkit.errors import AttnkitError, OutOfRangeError
from attnkit.inspect.arena import Arena
from attnkit.inspect.captured import Captured, Record
from attnkit.inspect.families import ModelInfo, family_of
from attnkit.inspect.rotary import rotary_of
from attnkit.kernels.recording import recording

__all__ = ["capture", "Capture", "Record"]


class Capture(Captured):
    """What ``attnkit.capture`` recorded: per layer ``q``, ``k`` and ``lse``.

    Layers are numbered like the model's (its family's numbering: a Hugging Face attention
    module's ``layer_idx``, or the order of attnkit modules in ``model.modules()``). When a layer
    runs again inside the block, a decoding step over a KV cache (its keys extend the previous
    call's by one per query) adds its queries as new rows, so after ``generate()`` the capture
    holds the whole sequence; any other call replaces what the layer had. The model's
    ``input_ids`` are recorded the same way, so ``tokens`` are known when a tokenizer was given.
    """

    def __init__(self, model: nn.Module, layers: list[int] | None, heads: list[int] | None,
                 tokenizer: Any = None):
        super().__init__(type(model).__name__)
        self._module_ids = {id(m) for m in model.modules()}
        self._wanted_layers = None if layers is None else sorted(set(layers))
        self._wanted_heads = None if heads is None else sorted(set(heads))
        family = family_of(model)
        self._table = family.attention_layers(model)
        self.model_info = _describe(family, model)
        self.rotary = rotary_of(model)  # queries and keys are recorded after rotation
        self._tokenizer = tokenizer
        self.input_ids: torch.Tensor | None = None  # (B, S) ids fed so far, when the model had ids
        self._dynamic: dict[int, int] = {}  # modules that call attend() but are not in the table
        known = len(self._table)
        beyond = [x for x in self._wanted_layers or [] if x >= known]
        if known and beyond:
            raise OutOfRangeError(f"capture(layers={self._wanted_layers}): {self._name} has "
                                  f"{known} attention layers (0..{known - 1}); no layer {beyond}")
        self._active = False
        self._arena = Arena()  # the copies of q, k and lse that the records hold

    # ---- the recorder protocol (used by attnkit.kernels.recording) ----------------------------

    def _layer_of(self, module: Any) -> int:
        key = id(module)
        if key in self._table:
            return self._table[key]
        return self._dynamic.setdefault(key, len(self._table) + len(self._dynamic))

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
            raise OutOfRangeError(f"capture(heads={self._wanted_heads}): layer {layer} of "
                                  f"{self._name} has {hq} heads (0..{hq - 1}); no head {missing}")
        options = {name: value for name, value in options.items() if name != "backend"}
        for name in ("mask", "bias"):  # as 4-D (B|1, H|1, Sq|1, Sk|1), detached
            t = options.get(name)
            if isinstance(t, torch.Tensor):
                options[name] = t.detach().reshape((1,) * (4 - t.dim()) + tuple(t.shape))
        if isinstance(options.get("sinks"), torch.Tensor):
            options["sinks"] = options["sinks"].detach().clone()  # (Hq,)
        q, k, lse = q.detach(), k.detach(), lse.detach()
        if self._wanted_heads is not None:
            index = torch.tensor(heads, device=q.device)
            q = q.index_select(1, index)  # (B, H, Sq, D)
            lse = lse.index_select(1, index)  # (B, H, Sq)
            k = k.index_select(1, index // (hq // hkv))  # (B, H, Sk, D): each head's key head
            for name in ("mask", "bias"):
                t = options.get(name)
                if t is not None and t.shape[1] > 1:
                    options[name] = t.index_select(1, index)
            if isinstance(options.get("sinks"), torch.Tensor):  # (Hq,) -> (H,): one per slot
                options["sinks"] = options["sinks"].index_select(0, index)
        # copies: a KV cache may hand out views of buffers it later overwrites. A layer's first
        # call goes to the arena; later ones (decoding steps) replace what they had, so their
        # memory must go with it: plain clones.
        copy = torch.Tensor.clone if layer in self._records else self._arena.copy
        q, k, lse = copy(q), copy(k), copy(lse)
        record = Record(q, k, lse, options, tuple(heads), hq)
        previous = self._records.get(layer)
        if previous is not None and _continues(previous, record):
            # a decoding step over a KV cache: its queries are the next rows of one pattern
            record = Record(torch.cat([previous.q, q], dim=2), k,
                            torch.cat([previous.lse, lse], dim=2), options, tuple(heads), hq)
        self._records[layer] = record

    def _saw_input_ids(self, ids: torch.Tensor) -> None:
        """After a forward pass fed ``ids (B, S)``: keep them, joined to the earlier ones when the
        pass was a decoding step (the records grew by exactly S queries)."""
        if not self._records:
            return
        length = self._records[self.layers[0]].q.shape[2]
        ids = ids.detach().cpu()
        if self.input_ids is not None and self.input_ids.shape[1] + ids.shape[1] == length:
            self.input_ids = torch.cat([self.input_ids, ids], dim=1)
        elif ids.shape[1] == length:
            self.input_ids = ids
        else:
            self.input_ids = None  # the model's attention does not line up with its inputs
        self._token_lists = None
        if self.input_ids is not None and self._tokenizer is not None:
            self._token_lists = [[str(t) for t in self._tokenizer.convert_ids_to_tokens(row)]
                                 for row in self.input_ids.tolist()]

    # ---- what was recorded ---------------------------------------------------------------------

    def _require(self) -> None:
        if not self._records:
            where = "inside" if self._active else "after"
            raise AttnkitError(
                f"this capture of {self._name} has recorded nothing {where} its `with` "
                "block: run the model's forward inside `with attnkit.capture(model) as cap:` "
                "first. Only attention computed by attnkit is recorded: Hugging Face models "
                "loaded with attn_implementation='attnkit', or attnkit MultiHeadAttention/"
                "AttentionHead modules")

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
        return super().heads

    @property
    def model_name(self) -> str:
        """The model's name as its family reads it (a Hugging Face id or path), else its class."""
        return self.model_info.name if self.model_info is not None else self._name

    @property
    def n_layers(self) -> int:
        """How many attention layers the model has (at least as many as were recorded)."""
        return max(len(self._table) + len(self._dynamic), max(self._records, default=-1) + 1)


def _describe(family: Any, model: nn.Module) -> ModelInfo | None:
    """The model's ``ModelInfo`` for capture files; None for a model its family cannot describe
    (capturing it still works)."""
    try:
        return family.describe(model)
    except (AttnkitError, AttributeError, TypeError, ValueError):
        return None


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


def _check_selection(name: str, values: list[int] | None) -> None:
    if values is None:
        return
    if (isinstance(values, (int, str)) or not hasattr(values, "__iter__")
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in values)):
        raise AttnkitError(f"capture({name}=...) takes a list of ints >= 0 or None; "
                           f"got {values!r}")


def _input_ids(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The ``input_ids (B, S)`` a forward call was given, if any."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if isinstance(ids, torch.Tensor) and not ids.is_floating_point() and ids.dim() in (1, 2):
        return ids if ids.dim() == 2 else ids[None]
    return None


@contextlib.contextmanager
def capture(model: nn.Module, layers: list[int] | None = None,
            heads: list[int] | None = None, *, tokenizer: Any = None) -> Iterator[Capture]:
    """Record ``q``, ``k`` and ``lse`` of ``model``'s attention during forward passes in the block.

    Works on Hugging Face models running ``attn_implementation="attnkit"`` and on any module
    containing attnkit MultiHeadAttention/AttentionHead. ``layers``/``heads`` keep only those
    (None = all). With ``tokenizer``, ``cap.tokens`` names the tokens the model was fed. Memory:
    copies of ``q``, ``k`` and ``lse`` per kept layer, linear in sequence length, packed into
    blocks apart from the model's own memory (``attnkit.inspect.arena``).

    >>> with attnkit.capture(model, tokenizer=tokenizer) as cap:
    ...     model(**inputs)
    >>> cap.pattern(0, 3)  # (S, S) [query, key], exact
    """
    _check_selection("layers", layers)
    _check_selection("heads", heads)
    family = family_of(model)
    family.check_capturable(model)
    cap = Capture(model, layers, heads, tokenizer)
    fed: list[torch.Tensor] = []

    def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = _input_ids(args, kwargs)
        if ids is not None:
            fed.append(ids)

    def after(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if fed:
            cap._saw_input_ids(fed.pop())

    hooks = [model.register_forward_pre_hook(before, with_kwargs=True),
             model.register_forward_hook(after, with_kwargs=True)]
    cap._active = True
    try:
        with recording(cap):
            yield cap
    finally:
        cap._active = False
        for hook in hooks:
            hook.remove()
