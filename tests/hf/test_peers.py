"""Eager against "attnkit" on 15 architectures built from tiny configs, in the spirit of
transformers' own eager-vs-SDPA tests: outputs in float32 and bfloat16 with left and right
padding, ``output_attentions`` weights and the gradients of a loss on them, greedy generation.
Bloom and Falcon are refused when built (and T5 before transformers 5.15, whose T5 computes
attention in its own code).

The oracle rule (DESIGN.md), at model scale: the truth is the same model (same weights) in
float64 on attnkit's reference backend, the float64 oracle (eager in float64 is no truth: it
takes its softmax in float32, where the float64 mask minimum of a padding query that sees no
key overflows to NaN, which then reaches real rows through the values); attnkit's error against
it is at most 2x eager's own error in the same dtype (3x for gradients) plus a floor of 1e-6
times the largest value compared. That the truth is one: eager's own error against it stays
within what the dtype can do (``SANITY``), so a mistake shared by both attnkit backends could
not pass. Only rows of real tokens are compared: a padding query that sees no key gets made-up
values from eager and zeros from attnkit.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

pytest.importorskip("transformers")

from transformers import GenerationMixin  # noqa: E402

import attnkit  # noqa: E402
import attnkit.hf  # noqa: E402,F401  (registers "attnkit")
from attnkit.errors import UnsupportedModelError  # noqa: E402
from tests.hf.models import inputs, setups  # noqa: E402

SETUPS = setups()
SUPPORTED = [name for name, s in SETUPS.items() if not s.refused]
REFUSED = [name for name, s in SETUPS.items() if s.refused]


@functools.cache
def _models(name: str) -> dict[str, torch.nn.Module]:
    """The model built for "eager" and for "attnkit", same weights (built, not switched:
    transformers cannot switch every model after loading)."""
    return {impl: SETUPS[name].model(impl) for impl in ("eager", "attnkit")}


def run(models: dict, implementation: str, batch: dict, **options):
    model = models[implementation]
    assert model.config._attn_implementation == implementation
    return model(**batch, **options)


def cast(batch: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


def main_output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


# eager's largest error against the float64 truth, relative to the largest value compared
SANITY = {torch.float32: 1e-4, torch.bfloat16: 0.1}


def within_oracle(ours, eager, truth, factor: float) -> None:
    truth = truth.double()
    scale = truth.abs().max().clamp_min(1)
    err_ours = (ours.double() - truth).abs().max()
    err_eager = (eager.double() - truth).abs().max()
    assert err_eager <= SANITY[eager.dtype] * scale, ("eager is far from the truth",
                                                      float(err_eager))
    assert err_ours <= factor * err_eager + 1e-6 * scale, (float(err_ours), float(err_eager))


def truth_of(models: dict, batch: dict, fn):
    """``fn(models, batch)`` on the float64 oracle: the "attnkit" model in float64 running
    attnkit's reference backend. Leaves that model in float64."""
    models["attnkit"].double()
    with attnkit.use_backend("reference"):
        return fn(models, cast(batch, torch.float64))


def real_rows(batch: dict) -> torch.Tensor:
    """``(B, S)`` bool of the output positions that are tokens (decoder side when there is one)."""
    return batch.get("decoder_attention_mask", batch.get("attention_mask")).bool()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", SUPPORTED)
def test_outputs_equal_eager_within_the_oracle_rule(name, dtype, side):
    setup = SETUPS[name]
    # copies in the dtype: the float64 truth is made from these rounded weights
    models = {impl: copy.deepcopy(m).to(dtype) for impl, m in _models(name).items()}
    batch = cast(inputs(setup, side), dtype)
    real = real_rows(batch)
    with torch.no_grad():
        eager = main_output(run(models, "eager", batch))[real]
        ours = main_output(run(models, "attnkit", batch))[real]
        truth = main_output(truth_of(models, batch, lambda m, b: run(m, "attnkit", b)))[real]
    assert ours.dtype == dtype
    within_oracle(ours, eager, truth, factor=2)


def _weights(out, setup, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's ``output_attentions`` weights with the ``(B, Sq)`` rows of real queries."""
    if setup.kind in ("decoder", "encoder"):
        rows = batch["attention_mask"].bool()
        return [(w, rows) for w in out.attentions]
    dec = batch["decoder_attention_mask"].bool()
    enc = batch.get("attention_mask")
    enc = (torch.ones(out.encoder_attentions[0].shape[0], out.encoder_attentions[0].shape[2],
                      dtype=torch.bool) if enc is None else enc.bool())
    return ([(w, enc) for w in out.encoder_attentions]
            + [(w, dec) for w in out.decoder_attentions]
            + [(w, dec) for w in out.cross_attentions])


def _weights_and_grads(models, implementation, setup, batch, probes):
    """The weights of real query rows, and the gradients of ``sum(weights * probe)`` with respect
    to every parameter (attention × gradient attribution takes exactly such gradients)."""
    model = models[implementation]
    out = run(models, implementation, batch, output_attentions=True)
    pairs = _weights(out, setup, batch)
    loss = sum((w * probe * rows[:, None, :, None]).sum()
               for (w, rows), probe in zip(pairs, probes, strict=True))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if g is None else g.reshape(-1)
                       for p, g in zip(params, grads, strict=True)])
    weights = torch.cat([w.permute(0, 2, 1, 3)[rows].reshape(-1) for w, rows in pairs])
    return weights, grads


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", SUPPORTED)
def test_output_attentions_and_their_gradients_equal_eager(name, side):
    setup = SETUPS[name]
    models = _models(name)
    batch = inputs(setup, side)
    with torch.no_grad():
        shapes = [w.shape for w, _ in _weights(run(models, "eager", batch, output_attentions=True),
                                               setup, batch)]
    g = torch.Generator().manual_seed(4)
    probes = [torch.randn(shape, generator=g) for shape in shapes]
    try:
        eager_w, eager_g = _weights_and_grads(models, "eager", setup, batch, probes)
        ours_w, ours_g = _weights_and_grads(models, "attnkit", setup, batch, probes)
        truth_w, truth_g = truth_of(models, batch, lambda m, b: _weights_and_grads(
            m, "attnkit", setup, b, [p.double() for p in probes]))
    finally:
        models["attnkit"].float()
    assert ours_g.abs().max() > 0  # the weights do carry gradients
    within_oracle(ours_w, eager_w, truth_w, factor=2)
    within_oracle(ours_g, eager_g, truth_g, factor=3)


GENERATING = [n for n in SUPPORTED if SETUPS[n].kind != "encoder"]


@pytest.mark.parametrize("name", GENERATING)
def test_greedy_generation_gives_eager_tokens(name):
    setup = SETUPS[name]
    batch = inputs(setup, "left")
    if setup.kind != "decoder":  # the decoder starts from its start token
        batch = {k: v for k, v in batch.items() if not k.startswith("decoder_")}
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=1, eos_token_id=None)
    tokens = {}
    for implementation, model in _models(name).items():
        # Whisper's own generate wants language tables; the plain one does not
        generate = GenerationMixin.generate if setup.kind == "speech" else type(model).generate
        with torch.no_grad():
            tokens[implementation] = generate(model, **batch, **settings)
    assert tokens["attnkit"].shape[1] >= 6
    assert torch.equal(tokens["attnkit"], tokens["eager"])


@pytest.mark.parametrize("name", REFUSED)
def test_refused_architectures_are_refused_when_built(name):
    setup = SETUPS[name]
    why = (r"does not compute attention through transformers' AttentionInterface" if name == "t5"
           else r"cannot run on attnkit: its \w+Attention computes attention itself")
    with pytest.raises(UnsupportedModelError,
                       match=rf"^{setup.cls.__name__} {why}.*attn_implementation='eager'"):
        setup.model("attnkit")
    eager = setup.model("eager")  # eager still builds and runs
    batch = inputs(setup, "left")
    with torch.no_grad():
        assert torch.isfinite(eager(**batch).logits).all()
