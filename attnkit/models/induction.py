"""The induction model: a two-layer, attention-only causal transformer (token + position
embeddings, two attnkit ``MultiHeadAttention`` layers of one head each, a LayerNorm and an
unembedding), trained on random token sequences that repeat — so its two heads are known: a
previous-token head in layer 0 and an induction head in layer 1. Ground truth for head detectors.

Its words are syllables ("ba", "de", …): texts such as "ko ma ri ko ma ri" read back as tokens.
Weights ship as safetensors in ``attnkit/data/`` with the config (JSON) beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from attnkit.core.multihead import MultiHeadAttention
from attnkit.errors import AttnkitError
from attnkit.models.tokenizer import PAD, ToyTokenizer
from attnkit.models.toy import ToyOutput
from attnkit.models.weights import load_weights, save_weights, weight_paths

__all__ = ["SYLLABLES", "VOCAB", "InductionConfig", "InductionModel", "induction_paths",
           "save_induction", "load_induction"]

WEIGHTS = "induction.safetensors"

SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")[:64]
"""The model's 64 words: consonant + vowel syllables, "ba" … ."""

VOCAB = (PAD, *SYLLABLES)
"""Ids in order: padding first, then the syllables."""


@dataclass(frozen=True)
class InductionConfig:
    """Sizes of the induction model. ``vocab`` is the tokenizer's word list, in id order."""

    vocab: tuple[str, ...] = VOCAB
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 1
    d_key: int = 32
    max_len: int = 128
    model_name: str = "induction"

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


class InductionModel(nn.Module):
    """``logits = unembed(LayerNorm(layer_1(layer_0(E))))`` with ``E = token + position``
    embeddings; each layer is a causal ``MultiHeadAttention`` returning ``E + ΔE`` (attention
    only, no MLP). Called like a Hugging Face model: ``model(input_ids=…, attention_mask=…)``.
    """

    def __init__(self, config: InductionConfig):
        super().__init__()
        self.config = config
        self.name = config.model_name  # what attnkit.inspect.families.describe reports
        self.max_len = config.max_len
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_len, config.d_model)
        self.layers = nn.ModuleList(
            MultiHeadAttention(config.d_model, n_heads=config.n_heads, d_key=config.d_key,
                               causal=True)
            for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.unembed = nn.Linear(config.d_model, config.vocab_size)

    @property
    def tokenizer(self) -> ToyTokenizer:
        """The word tokenizer of this model's syllables."""
        return ToyTokenizer(self.config.vocab)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> ToyOutput:
        """``input_ids (B, S)`` (and ``attention_mask (B, S)``, 1 = real token, padding on the
        right) → logits ``(B, S, vocab)``; ``logits[:, i]`` predicts token ``i + 1``."""
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        S = input_ids.shape[-1]
        if S > self.config.max_len:
            raise AttnkitError(f"the induction model reads at most {self.config.max_len} tokens; "
                               f"got {S}. Use a shorter input")
        positions = torch.arange(S, device=input_ids.device)  # (S,)
        E = self.token_embedding(input_ids) + self.position_embedding(positions)  # (B, S, d)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S): padding keys masked
        for layer in self.layers:
            E = layer(E, mask=mask)  # (B, S, d_model): E + ΔE
        return ToyOutput(logits=self.unembed(self.norm(E)))  # (B, S, vocab)


def induction_paths(out: str | Path) -> tuple[Path, Path]:
    """``(weights, config)`` paths for ``out``: a ``.safetensors`` path, or a directory that will
    hold ``WEIGHTS``; the config is the same name with ``.json``."""
    return weight_paths(out, WEIGHTS)


def save_induction(model: InductionModel, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model``'s weights to ``out`` (a ``.safetensors`` path or a directory) and its
    config beside them, both or neither; existing files are replaced only with
    ``overwrite=True``. Returns the weights path."""
    return save_weights(model, model.config, out, WEIGHTS, overwrite=overwrite)


def load_induction(path: str | Path | None = None) -> tuple[InductionModel, ToyTokenizer]:
    """``(model, tokenizer)`` in eval mode: the shipped weights (``path=None``) or those written
    by ``attnkit train-induction --out PATH`` (the ``.safetensors`` file or its directory)."""
    state, raw = load_weights(path, WEIGHTS, "attnkit train-induction")
    config = InductionConfig(**{**raw, "vocab": tuple(raw["vocab"])})
    model = InductionModel(config)
    model.load_state_dict(state)
    return model.eval(), ToyTokenizer(config.vocab)
