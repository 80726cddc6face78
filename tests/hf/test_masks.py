"""Masks attnkit cannot take compact reach it as transformers' exact boolean mask: a static
cache's full-attention layers (their keys include empty slots), packed sequences (a
block-diagonal pattern, given as a 4-D mask or found from position ids); and ``generate`` with
a static cache. Each run is checked to have taken that path (the mask hook's answers are
recorded) and to equal eager, and packed sequences to equal each sequence run alone.

A static cache's sliding-window layers keep their last ``w`` keys in order, so once full they
get a compact window again (Mistral here: every layer slides); before that, dense."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers.masking_utils import AttentionMaskInterface  # noqa: E402

import attnkit.hf  # noqa: E402
from tests.hf.models import setups, token_batch  # noqa: E402


@pytest.fixture
def masks_built(monkeypatch) -> list:
    """The mask hook's answers during the test (``CompactMask`` or a dense tensor)."""
    seen: list = []

    def spy(*args, **kwargs):
        mask = attnkit.hf.attnkit_mask(*args, **kwargs)
        seen.append(mask)
        return mask

    monkeypatch.setitem(AttentionMaskInterface._global_mapping, "attnkit", spy)
    return seen


def dense(seen: list) -> bool:
    return bool(seen) and all(isinstance(m, torch.Tensor) and m.dtype == torch.bool
                              and m.dim() == 4 for m in seen)


def took_dense_mask(seen: list, name: str) -> bool:
    """Every mask dense (llama: full attention only), or at least one (models with sliding
    layers, whose full static window gets a compact mask)."""
    tensors = [m for m in seen if isinstance(m, torch.Tensor)]
    return dense(seen) if name == "llama" else bool(tensors) and dense(tensors)


def logits(model, implementation: str, **inputs) -> torch.Tensor:
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_static_cache_prefill_and_one_step_take_the_dense_mask_and_equal_eager(name,
                                                                               masks_built):
    setup = setups()[name]
    model = setup.model("eager")
    ids, mask = token_batch("left", length=7)
    step = torch.randint(2, 90, (2, 1), generator=torch.Generator().manual_seed(9))
    results = {}
    for implementation in ("eager", "attnkit"):
        cache = transformers.StaticCache(config=model.config, max_cache_len=16)
        first = logits(model, implementation, input_ids=ids, attention_mask=mask,
                       past_key_values=cache, use_cache=True)
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        second = logits(model, implementation, input_ids=step, attention_mask=mask2,
                        past_key_values=cache, use_cache=True)
        results[implementation] = (first, second)
    assert took_dense_mask(masks_built, name), [type(m).__name__ for m in masks_built]
    real = mask.bool()
    (e1, e2), (o1, o2) = results["eager"], results["attnkit"]
    assert (o1 - e1)[real].abs().max() <= 1e-5
    assert (o2 - e2).abs().max() <= 1e-5


def test_packed_sequences_given_as_a_4d_mask_equal_each_sequence_alone(masks_built):
    """Two documents of 5 and 6 tokens packed in one row with positions restarting, as a
    block-diagonal causal 4-D mask, boolean (True = attend) or additive (0 / dtype-min): equal
    to running each document alone (a truth that needs no peer), and to eager for the additive
    mask (eager adds a boolean 4-D mask to its scores as 0/1: no peer there)."""
    model = setups()["llama"].model("eager")
    ids = token_batch("left", n=1)[0]  # (1, 11)
    pos = torch.arange(11)
    doc = (pos >= 5).long()
    allowed = (doc[:, None] == doc[None, :]) & (pos[None, :] <= pos[:, None])  # [query, key]
    additive = torch.zeros(1, 1, 11, 11).masked_fill(~allowed, torch.finfo(torch.float32).min)
    position_ids = torch.cat([torch.arange(5), torch.arange(6)])[None]
    alone = torch.cat([logits(model, "attnkit", input_ids=ids[:, :5]),
                       logits(model, "attnkit", input_ids=ids[:, 5:])], dim=1)
    for mask in (allowed[None, None], additive):
        masks_built.clear()
        packed = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids)
        ours = logits(model, "attnkit", **packed)
        assert masks_built == []  # a 4-D mask skips the hook: attnkit gets it as given
        assert (ours - alone).abs().max() <= 1e-5
    eager = logits(model, "eager", **packed)
    assert (ours - eager).abs().max() <= 1e-5


def test_packed_sequences_found_from_position_ids_take_the_dense_mask(masks_built):
    """No attention mask, positions restarting at 0: transformers builds a packed-sequence mask
    function, which attnkit cannot read, so the hook answers with the exact dense mask."""
    model = setups()["qwen2"].model("eager")
    ids = token_batch("left", n=1)[0]
    position_ids = torch.cat([torch.arange(4), torch.arange(7)])[None]
    packed = dict(input_ids=ids, position_ids=position_ids, use_cache=False)  # with a cache,
    ours = logits(model, "attnkit", **packed)  # transformers does not look for packing
    assert dense(masks_built)
    alone = torch.cat([logits(model, "attnkit", input_ids=ids[:, :4]),
                       logits(model, "attnkit", input_ids=ids[:, 4:])], dim=1)
    assert (ours - alone).abs().max() <= 1e-5
    eager = logits(model, "eager", **packed)
    assert (ours - eager).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "gemma2", "gpt_oss"])
def test_generate_with_a_static_cache_gives_eager_tokens(name, masks_built):
    """Left-padded prompts, 10 new tokens past sliding windows of 4-5, on a static cache."""
    model = setups()[name].model("eager")
    ids, mask = token_batch("left", length=7)
    settings = dict(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                    pad_token_id=1, eos_token_id=None, cache_implementation="static")
    tokens = {}
    for implementation in ("eager", "attnkit"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            tokens[implementation] = model.generate(**settings)
    if name != "mistral":
        assert took_dense_mask(masks_built, name), [type(m).__name__ for m in masks_built]
    assert tokens["attnkit"].shape == (2, 17)
    assert torch.equal(tokens["attnkit"], tokens["eager"])
