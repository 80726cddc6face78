"""Tiny random Hugging Face models of many architectures, built offline from configs, and inputs
for them: the material of the peer tests (eager against "attnkit").

``build(kind)`` returns ``Setup``: the model class and config, how to make a batch, and what the
architecture is (causal LM / encoder / encoder-decoder / speech).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers as t

VOCAB = 96

# every decoder config: small sizes, ids 0/1 for bos/eos/pad
_IDS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
_SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=128)


@dataclass(frozen=True)
class Setup:
    """One architecture: ``cls(config)`` builds it; ``kind`` is "decoder" (a causal LM that can
    generate), "encoder" (bidirectional, no generation), "seq2seq" (encoder-decoder on token
    ids) or "speech" (Whisper: audio features in, tokens out)."""

    name: str
    cls: type
    config: Any
    kind: str
    refused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def model(self, implementation: str = "eager", dtype: torch.dtype = torch.float32):
        """The model, built for ``implementation``: the same weights whatever it is (seeded)."""
        torch.manual_seed(0)
        # a copy: a model reads its config's implementation at every call, so models built for
        # two implementations must not share one config object
        config = copy.deepcopy(self.config)
        config._attn_implementation = implementation
        model = self.cls(config).to(dtype).eval()
        for name, p in model.named_parameters():
            if name.endswith("sinks"):  # GPT-OSS starts its sinks at 0; make them matter
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape) * 2)
        return model


def _decoder(name, cls, config_cls, **settings) -> Setup:
    return Setup(name, cls, config_cls(**{**_SMALL, **_IDS, **settings}), "decoder")


def _version() -> tuple[int, ...]:
    return tuple(int(p) for p in t.__version__.split(".")[:2])


# T5 computes attention in its own code before transformers 5.15 (found by installing 5.14.1
# and 5.15.0); there the check refuses it.
T5_DISPATCHES = _version() >= (5, 15)


def setups() -> dict[str, Setup]:
    """The architectures, by name (a fresh config each call: tests may change them)."""
    s = [
        _decoder("llama", t.LlamaForCausalLM, t.LlamaConfig, num_key_value_heads=2),
        _decoder("mistral", t.MistralForCausalLM, t.MistralConfig, num_key_value_heads=2,
                 sliding_window=5),
        _decoder("qwen2", t.Qwen2ForCausalLM, t.Qwen2Config, num_key_value_heads=2,
                 sliding_window=4, use_sliding_window=True, max_window_layers=1),
        _decoder("phi3", t.Phi3ForCausalLM, t.Phi3Config, num_key_value_heads=2),
        _decoder("stablelm", t.StableLmForCausalLM, t.StableLmConfig, num_key_value_heads=2),
        _decoder("gpt_neox", t.GPTNeoXForCausalLM, t.GPTNeoXConfig),
        # soft-capping at 1.0 with weights drawn 10x the usual size: scores of a few units,
        # which the cap changes
        _decoder("gemma2", t.Gemma2ForCausalLM, t.Gemma2Config, num_key_value_heads=2,
                 head_dim=8, attn_logit_softcapping=1.0, final_logit_softcapping=None,
                 initializer_range=0.2,
                 sliding_window=4, query_pre_attn_scalar=8),
        _decoder("gemma3", t.Gemma3ForCausalLM, t.Gemma3TextConfig, num_key_value_heads=2,
                 head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
                 layer_types=["sliding_attention", "full_attention"]),
        _decoder("gpt_oss", t.GptOssForCausalLM, t.GptOssConfig, num_key_value_heads=2,
                 head_dim=8, num_local_experts=2, num_experts_per_tok=1, sliding_window=4,
                 layer_types=["sliding_attention", "full_attention"],
                 experts_implementation="eager"),  # grouped_mm has no float64 (the truth)
        Setup("gpt2", t.GPT2LMHeadModel,
              t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                           **_IDS), "decoder"),
        Setup("bert", t.BertModel,
              t.BertConfig(**{**_SMALL, "intermediate_size": 64}), "encoder"),
        Setup("modernbert", t.ModernBertModel,
              t.ModernBertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 max_position_embeddings=128, local_attention=4,
                                 global_attn_every_n_layers=2, pad_token_id=1), "encoder"),
        Setup("t5", t.T5ForConditionalGeneration,
              t.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                         num_decoder_layers=2, num_heads=4, decoder_start_token_id=0,
                         **_IDS), "seq2seq", refused=not T5_DISPATCHES),
        Setup("bart", t.BartForConditionalGeneration,
              t.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4,
                           encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=128,
                           decoder_start_token_id=0, forced_eos_token_id=None, **_IDS),
              "seq2seq"),
        Setup("whisper", t.WhisperForConditionalGeneration,
              t.WhisperConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                              encoder_attention_heads=4, decoder_attention_heads=4,
                              encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=8,
                              max_source_positions=12, max_target_positions=64,
                              decoder_start_token_id=0, suppress_tokens=None,
                              begin_suppress_tokens=None, **_IDS), "speech"),
        # refused: their attention is their own code, which would be handed attnkit's mask
        Setup("bloom", t.BloomForCausalLM,
              t.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, **_IDS),
              "decoder", refused=True),
        Setup("falcon", t.FalconForCausalLM,
              t.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, **_IDS), "decoder", refused=True),
    ]
    return {setup.name: setup for setup in s}


def token_batch(side: str, n: int = 2, length: int = 11, seed: int = 1):
    """``(ids (n, length), mask (n, length))``: row 0 unpadded, the others padded on ``side``
    ("left" or "right") by 3, 5, ... tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    for row in range(1, n):
        pad = 1 + 2 * row
        if side == "left":
            mask[row, :pad] = 0
        else:
            mask[row, length - pad:] = 0
    ids = ids.masked_fill(mask == 0, 1)
    return ids, mask


def inputs(setup: Setup, side: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A padded batch for ``setup`` (for seq2seq/speech models the decoder side is padded)."""
    ids, mask = token_batch(side)
    if setup.kind in ("decoder", "encoder"):
        return {"input_ids": ids, "attention_mask": mask}
    dec_ids, dec_mask = token_batch(side, length=7, seed=2)
    if setup.kind == "seq2seq":
        return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec_ids,
                "decoder_attention_mask": dec_mask}
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 8, 24, generator=g).to(dtype)  # (B, mels, 2 * source positions)
    return {"input_features": features, "decoder_input_ids": dec_ids,
            "decoder_attention_mask": dec_mask}


def real_rows(setup: Setup, batch: dict[str, Any]) -> torch.Tensor:
    """``(B, S)`` bool: the positions of the output (decoder side for seq2seq) that are tokens."""
    mask = batch.get("decoder_attention_mask", batch.get("attention_mask"))
    return mask.bool()
