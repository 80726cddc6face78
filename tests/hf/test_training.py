"""Fine-tuning through "attnkit": a training step of BERT, ViT, BART and GPT-2 (models with
attention dropout) gives eager's gradients when dropout is 0 (oracle rule against the float64
reference backend), drops attention with the module's own probability when it is not, and
repeats exactly under ``torch.manual_seed``; ``output_attentions`` weights carry the loss's
gradient (attention x gradient) as eager's do."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402
import attnkit.hf  # noqa: E402,F401  (registers "attnkit")
from attnkit.hf import attnkit_attention  # noqa: E402

VOCAB = 64


def classifier(kind: str, attention_dropout: float = 0.0) -> torch.nn.Module:
    """A small random model with a training loss, every dropout 0 but attention's."""
    t = transformers
    p = attention_dropout
    if kind == "bert":
        config = t.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=48, num_labels=3,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=p)
        cls = t.BertForSequenceClassification
    elif kind == "vit":
        config = t.ViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=32,
                             num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                             num_labels=3, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=p)
        cls = t.ViTForImageClassification
    elif kind == "bart":
        config = t.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                              encoder_attention_heads=4, decoder_attention_heads=4,
                              encoder_ffn_dim=48, decoder_ffn_dim=48,
                              max_position_embeddings=64, dropout=0.0, activation_dropout=0.0,
                              attention_dropout=p, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, decoder_start_token_id=0)
        cls = t.BartForConditionalGeneration
    else:
        config = t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=p)
        cls = t.GPT2LMHeadModel
    torch.manual_seed(0)
    return cls(config).train()


def batch(kind: str) -> dict[str, torch.Tensor]:
    """A padded training batch with labels."""
    g = torch.Generator().manual_seed(5)
    if kind == "vit":
        return {"pixel_values": torch.randn(3, 3, 8, 8, generator=g),
                "labels": torch.tensor([0, 2, 1])}
    ids = torch.randint(3, VOCAB, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    if kind == "bert":
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2, 1])}
    if kind == "bart":
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.randint(3, VOCAB, (3, 6), generator=g)}
    return {"input_ids": ids, "attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, -100)}


def step(model, implementation: str, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step's loss and every parameter's gradient, flattened."""
    model.set_attn_implementation(implementation)
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    return loss.detach(), grads


KINDS = ["bert", "vit", "bart", "gpt2"]


@pytest.mark.parametrize("kind", KINDS)
def test_training_step_gradients_equal_eager_within_the_oracle_rule(kind):
    model, inputs = classifier(kind), batch(kind)
    eager_loss, eager = step(model, "eager", inputs)
    ours_loss, ours = step(model, "attnkit", inputs)
    model.double()
    with attnkit.use_backend("reference"):  # the float64 oracle
        double = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
        truth_loss, truth = step(model, "attnkit", double)
    err_ours, err_eager = (ours.double() - truth).abs().max(), (eager.double() - truth).abs().max()
    assert err_eager <= 1e-4 * truth.abs().max()  # the truth is one (eager agrees in float32)
    assert err_ours <= 3 * err_eager + 1e-6 * truth.abs().max()
    assert abs(ours_loss.double() - truth_loss) <= 2 * abs(eager_loss.double() - truth_loss) + 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_attention_dropout_is_applied_in_training_and_repeats_under_manual_seed(kind):
    model, inputs = classifier(kind, attention_dropout=0.3), batch(kind)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(step(model, "attnkit", inputs))
    (loss_a, grad_a), (loss_b, grad_b), (loss_c, grad_c) = runs
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)  # same seed: same step
    assert not torch.equal(grad_a, grad_c)  # another seed: another mask
    undropped = step(classifier(kind), "attnkit", inputs)[1]
    # dropout happened: near-uniform random-init patterns make its effect small (0.8% for BERT)
    # but far above rounding (1e-7)
    assert (grad_a - undropped).norm() > 1e-3 * undropped.norm()
    model.eval()  # eval drops nothing: eager's numbers
    with torch.no_grad():
        model.set_attn_implementation("eager")
        eager = model(**inputs).logits
        model.set_attn_implementation("attnkit")
        ours = model(**inputs).logits
    assert (ours - eager).abs().max() <= 1e-5


def test_dropped_weights_are_the_eval_weights_with_the_modules_probability():
    """In training, ``output_attentions`` are eager's kind of weights after dropout: each either
    0 or the eval weight / (1 - p), about a fraction p of them dropped; and the output is those
    weights times the values."""
    p = 0.3
    model, inputs = classifier("bert", attention_dropout=p), batch("bert")
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    model.set_attn_implementation("attnkit")
    torch.manual_seed(3)
    train = model(**inputs, output_attentions=True).attentions
    model.eval()
    with torch.no_grad():
        evaluated = model(**inputs, output_attentions=True).attentions
    w, e = train[0].detach(), evaluated[0]  # layer 0: later layers see dropped inputs
    seen = e > 0
    gone = (w == 0) & seen
    assert torch.allclose(w[seen & ~gone], e[seen & ~gone] / (1 - p), rtol=1e-5, atol=1e-7)
    fraction = float(gone.sum() / seen.sum())  # ~1,100 cells: a standard deviation of ~0.014
    assert abs(fraction - p) < 0.05, fraction

    attn = model.bert.encoder.layer[0].attention.self.train()
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 4, 9, 8, generator=g) for _ in range(3))
    torch.manual_seed(4)
    out, weights = attnkit_attention(attn, q, k, v, None, dropout=p, output_attentions=True)
    assert (weights == 0).any()
    assert torch.allclose(out, (weights @ v).transpose(1, 2), atol=1e-6)
    torch.manual_seed(4)
    plain, none = attnkit_attention(attn, q, k, v, None, dropout=p)  # the kernel's own dropout
    assert none is None and torch.allclose(plain, out, atol=1e-6)  # draws the same mask


@pytest.mark.parametrize("kind", ["gpt2", "bart"])
def test_attention_times_gradient_equals_eager(kind):
    """``weights.retain_grad(); loss.backward(); weights * weights.grad``: the loss reaches the
    ``output_attentions`` weights, and the model's own gradients are unchanged by asking."""
    model, inputs = classifier(kind), batch(kind)
    model.eval()
    results = {}
    for implementation in ("eager", "attnkit"):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        out = model(**inputs, output_attentions=True)
        weights = out.attentions if kind == "gpt2" else out.decoder_attentions
        for w in weights:
            w.retain_grad()
        out.loss.backward()
        assert all(w.grad is not None for w in weights), implementation
        results[implementation] = (
            torch.cat([(w * w.grad).reshape(-1) for w in weights]),
            torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
    for ours, eager in zip(results["attnkit"], results["eager"], strict=True):
        assert (ours - eager).abs().max() <= 1e-5 * eager.abs().max().clamp_min(1)
