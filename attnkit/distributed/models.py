"""Hugging Face models context-parallel: ``with akd.context_parallel(model, group, layout):`` each
rank feeds its shard of the sequence, and every attention layer runs ``akd.attention``.

Importing this module registers ``"attnkit-context-parallel"`` with transformers'
``AttentionInterface`` (the attention function) and ``AttentionMaskInterface`` (attnkit's compact
mask builder), and a model family that lets ``attnkit.capture`` see a model while it runs under
``context_parallel``. Nothing is switched outside the ``with`` block: on entry the model is set
to ``"attnkit-context-parallel"`` and on exit put back to what it ran before.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from attnkit import hf
from attnkit.distributed.api import MODES, run
from attnkit.distributed.capture import record_whole
from attnkit.distributed.groups import Group, resolve
from attnkit.distributed.layouts import check_layout, local_error, positions_of, shard, unshard
from attnkit.errors import AttnkitError, UnsupportedModelError
from attnkit.hf.attention import _attentions_requested as attentions_requested
from attnkit.inspect.families import register_family
from attnkit.kernels import recording

__all__ = ["NAME", "context_parallel", "ContextParallel"]

NAME = "attnkit-context-parallel"

# id(module) -> the ContextParallel its model runs under, for every module of every model inside
# a `context_parallel` block of this context
_RUNNING: contextvars.ContextVar[dict[int, ContextParallel] | None] = contextvars.ContextVar(
    "attnkit_context_parallel", default=None)


def _running() -> dict[int, ContextParallel]:
    return _RUNNING.get() or {}


class ContextParallel:
    """What ``context_parallel`` yields: the model's group, layout and mode, and helpers that
    shard inputs and gather outputs the same way (sequence dim 1 by default, as ``(B, S)`` ids
    and ``(B, S, V)`` logits have it)."""

    def __init__(self, model: torch.nn.Module, group: Any, resolved: Group, layout: str,
                 mode: str, backend: str | None):
        self.model = model
        self.group = group
        self.layout = layout
        self.mode = mode
        self.backend = backend
        self.rank, self.size = resolved.rank, resolved.size
        self._resolved = resolved

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's part of the whole ``x`` (ids, attention mask, labels) along ``dim``."""
        return shard(x, layout=self.layout, dim=dim, group=self.group)

    def unshard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The whole sequence from every rank's ``x`` (e.g. logits), on every rank."""
        return unshard(x, layout=self.layout, dim=dim, group=self.group)

    def positions(self, n_local: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(n_local,)``: the global positions of this rank's tokens (its ``position_ids``)."""
        return positions_of(self.layout, self.rank, self.size, n_local, device)

    def __repr__(self) -> str:
        return (f"ContextParallel({type(self.model).__name__}, rank {self.rank} of {self.size}, "
                f"layout={self.layout!r}, mode={self.mode!r})")

    # ---- the model's inputs ----------------------------------------------------------------

    def _inputs(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook: fill in the global ``position_ids`` of this rank's tokens (so rotary
        embeddings see true positions), an all-ones ``attention_mask`` when none is given (so
        transformers does not read zigzag's jumping positions as packed sequences), and
        ``use_cache=False``; refuse what would be silently wrong on a shard."""
        try:
            bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
        except TypeError:
            return args, kwargs
        given = dict(bound.arguments)
        extra = given.pop("kwargs", None)
        if isinstance(extra, dict):
            given.update(extra)
        ids, embeds = given.get("input_ids"), given.get("inputs_embeds")
        tokens = ids if ids is not None else embeds
        if tokens is None:
            return args, kwargs
        batch, n_local = tokens.shape[0], tokens.shape[1]
        error = local_error(self.layout, n_local, "the input")
        if error:
            raise AttnkitError(f"context_parallel: {error}")
        if given.get("labels") is not None:
            raise AttnkitError(
                "context_parallel: labels= would be shifted inside each rank's shard (wrong at "
                "the shard edges); leave labels out and compute the loss from the logits, with "
                "labels shifted on the whole sequence before cp.shard(labels)")
        if given.get("past_key_values") is not None or given.get("use_cache"):
            raise AttnkitError(
                "context_parallel runs whole sequences (prefill, training, capture), not "
                "KV-cache decoding; pass use_cache=False and no past_key_values")
        given["use_cache"] = False
        if given.get("position_ids") is None:
            pos = self.positions(n_local, tokens.device)  # (n_local,)
            given["position_ids"] = pos.expand(batch, n_local)
        mask = given.get("attention_mask")
        if mask is None:
            given["attention_mask"] = torch.ones(batch, n_local, dtype=torch.long,
                                                 device=tokens.device)
        elif not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[1] != n_local:
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise AttnkitError(
                f"context_parallel: attention_mask must be this rank's (B, n) = ({batch}, "
                f"{n_local}) part of the padding mask, like input_ids; got {shape}. Shard it "
                "with cp.shard(attention_mask)")
        return (), given


@contextlib.contextmanager
def context_parallel(model: torch.nn.Module, group: Any = None, layout: str = "zigzag",
                     mode: str = "ring", *, backend: str | None = None
                     ) -> Iterator[ContextParallel]:
    """Run a Hugging Face model context-parallel inside the block.

    Each rank calls the model on its shard of the sequence (``cp.shard(input_ids)``); position
    ids default to the shard's global positions and every attention layer computes
    ``akd.attention`` over the whole sequence. ``cp.unshard(logits)`` gives the whole logits,
    equal to one process's forward. ``attnkit.capture(model)`` inside the block records each
    layer's whole ``q``, ``k`` and lse (gathered on the ranks that capture).

    >>> with akd.context_parallel(model, layout="zigzag") as cp:
    ...     logits = cp.unshard(model(input_ids=cp.shard(ids)).logits)

    Args:
        model: a transformers model whose attention goes through ``AttentionInterface``
            (Llama, Mistral, Qwen2, GPT-2, Gemma 2's soft-capping, GPT-OSS's sinks, ...).
        group, layout, mode, backend: as ``akd.attention``.
    """
    hf.check_supported(model)
    check_layout(layout)
    if mode not in MODES:
        raise AttnkitError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    resolved = resolve(group)
    running = _running()
    if any(cp.model is model for cp in running.values()):
        raise AttnkitError(f"{type(model).__name__} already runs under context_parallel; "
                           "nest no second block for the same model")
    cp = ContextParallel(model, group, resolved, layout, mode, backend)
    previous = model.config._attn_implementation
    token = _RUNNING.set({**running, **{id(m): cp for m in model.modules()}})
    hook = model.register_forward_pre_hook(cp._inputs, with_kwargs=True)
    try:
        model.set_attn_implementation(NAME)
        yield cp
    finally:
        hook.remove()
        model.set_attn_implementation(previous)
        _RUNNING.reset(token)


def context_parallel_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: hf.CompactMask | torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention contract on ``akd.attention``: query ``(B, Hq, n, D)``, key
    ``(B, Hkv, n, D)``, value ``(B, Hkv, n, Dv)`` of this rank's shard → ``(B, n, Hq, Dv)``."""
    cp = _running().get(id(module))
    name = type(module).__name__
    if cp is None:
        raise AttnkitError(
            f"{name} runs attn_implementation={NAME!r} outside a context_parallel block; use "
            "`with attnkit.distributed.context_parallel(model, ...):`, or switch the model to "
            "'attnkit' with model.set_attn_implementation('attnkit')")
    if dropout and module.training:
        raise AttnkitError(
            f"context_parallel does not apply attention dropout across shards, but {name} is in "
            f"training mode with attention dropout {dropout} (attnkit's dropout mask is drawn "
            "per position of one call, and a shard's calls see their own positions); call "
            "model.eval(), or set the config's attention dropout to 0")
    if kwargs.get("position_bias") is not None:
        raise AttnkitError(f"context_parallel does not support `position_bias` ({name}): a "
                           "(B, H, Sq, Sk) bias cannot be split by the ring; run this model on "
                           "one process")
    if kwargs.get("output_attentions") or attentions_requested():
        raise AttnkitError(
            "output_attentions under context_parallel would build a (B, H, n, N) pattern per "
            "layer on every rank; use attnkit.capture(model) and cap.pattern(...) instead")
    if isinstance(attention_mask, torch.Tensor):
        raise UnsupportedModelError(
            f"{name}'s mask is not causal / sliding-window / bidirectional with key padding "
            "(transformers built a general (B, 1, Sq, Sk) mask), which context_parallel cannot "
            "split; run this model on one process")
    options = hf.attention_options(module, query, key, attention_mask, scaling=scaling,
                                   is_causal=is_causal, softcap=kwargs.get("softcap"),
                                   s_aux=kwargs.get("s_aux"))
    recorder = recording._ACTIVE.get()
    wants = recorder is not None and recorder.wants(module)
    out, lse, everyone = run(
        query, key, value, layout=cp.layout, mode=cp.mode, causal=options["causal"],
        window=options.get("window"), key_mask=options.get("mask"), scale=options["scale"],
        softcap=options.get("softcap"), sinks=options.get("sinks"), return_lse=True,
        group=cp.group, backend=cp.backend, anyone={"record": wants},
        what=f"context_parallel ({name}, layer {getattr(module, 'layer_idx', '?')})")
    recorders = [r for r, e in enumerate(everyone) if e["record"]]
    if recorders:
        padded = any(e["key_mask"] for e in everyone)
        record_whole(cp._resolved, cp.layout, module, recorder if wants else None, query, key,
                     lse, options, padded, recorders)
    return out.transpose(1, 2).contiguous(), None


class ContextParallelFamily(hf.HuggingFaceFamily):
    """A Hugging Face model while it runs under ``context_parallel``: read like any transformers
    model, and capturable on ``"attnkit-context-parallel"``."""

    name = "transformers (context parallel)"

    def owns(self, model: torch.nn.Module) -> bool:
        return any(cp.model is model for cp in _running().values())

    def check_capturable(self, model: torch.nn.Module) -> None:
        hf.check_supported(model)
        implementation = model.config._attn_implementation
        if implementation != NAME:
            raise UnsupportedModelError(
                f"{type(model).__name__} runs attn_implementation={implementation!r} inside "
                f"context_parallel; it should run {NAME!r} there (was it switched inside the "
                "block?)")


AttentionInterface.register(NAME, context_parallel_attention)
AttentionMaskInterface.register(NAME, hf.attnkit_mask)
register_family(ContextParallelFamily())
