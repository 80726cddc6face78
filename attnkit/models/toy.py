"""The toy adjective model: token + position embeddings, one attnkit ``MultiHeadAttention`` layer
with a small query/key space, and an unembedding — small enough to read, and to train in a minute.

Weights are saved as safetensors with the config (JSON) beside them; the trained model ships in
``attnkit/data/`` and ``load_toy()`` loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from attnkit.core.multihead import MultiHeadAttention
from attnkit.errors import AttnkitError
from attnkit.models.tokenizer import ToyTokenizer
from attnkit.models.weights import load_weights, save_weights, weight_paths

WEIGHTS = "toy_adjectives.safetensors"


@dataclass(frozen=True)
class ToyConfig:
    """Sizes of the toy model. ``vocab`` is the tokenizer's word list, in id order."""

    vocab: tuple[str, ...]
    d_model: int = 32
    n_heads: int = 1
    d_key: int = 3
    max_len: int = 16
    n_layers: int = 1  # fixed: one attention layer, so the head that finds adjectives is the one
    causal: bool = True
    model_name: str = "toy"

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


@dataclass
class ToyOutput:
    """What the toy model returns, named as in Hugging Face: ``logits (B, S, vocab)``."""

    logits: torch.Tensor


class ToyModel(nn.Module):
    """``logits = unembed(LayerNorm(E + ΔE))`` with ``E = token + position`` embeddings and ``ΔE``
    from one causal ``MultiHeadAttention``.

    Called like a Hugging Face model: ``model(input_ids=..., attention_mask=...)``.
    """

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.name = config.model_name  # what attnkit.models.model_info reports
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_len, config.d_model)
        self.attention = MultiHeadAttention(config.d_model, n_heads=config.n_heads,
                                            d_key=config.d_key,
                                            causal=config.causal)
        self.norm = nn.LayerNorm(config.d_model)
        self.unembed = nn.Linear(config.d_model, config.vocab_size)

    @property
    def tokenizer(self) -> ToyTokenizer:
        """The word tokenizer of this model's vocabulary."""
        return ToyTokenizer(self.config.vocab)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``E``, the embeddings the attention layer reads: ``(B, S)`` ids → ``(B, S, d_model)``."""
        S = input_ids.shape[-1]
        if S > self.config.max_len:
            raise AttnkitError(f"the toy model reads at most {self.config.max_len} tokens; got "
                               f"{S}. Shorten the text (one sentence of the toy grammar has at "
                               "most 14)")
        positions = torch.arange(S, device=input_ids.device)  # (S,)
        return self.token_embedding(input_ids) + self.position_embedding(positions)  # (B, S, d)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> ToyOutput:
        """``input_ids (B, S)`` (and ``attention_mask (B, S)``, 1 = real token) → logits
        ``(B, S, vocab)``; ``logits[:, i]`` predicts token ``i + 1``."""
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        E = self.embed(input_ids)  # (B, S, d_model)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S): padding keys masked
        E = self.attention(E, mask=mask)  # (B, S, d_model): E + ΔE
        return ToyOutput(logits=self.unembed(self.norm(E)))  # (B, S, vocab)


def toy_paths(out: str | Path) -> tuple[Path, Path]:
    """``(weights, config)`` paths for ``out``: a ``.safetensors`` path, or a directory that will
    hold ``WEIGHTS``; the config is the same name with ``.json``."""
    return weight_paths(out, WEIGHTS)


def save_toy(model: ToyModel, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model``'s weights to ``out`` (a ``.safetensors`` path or a directory) and its
    config beside them as ``<name>.json``, both or neither; an existing file is replaced only
    with ``overwrite=True``. Returns the weights path."""
    return save_weights(model, model.config, out, WEIGHTS, overwrite=overwrite)


def load_toy(path: str | Path | None = None) -> tuple[ToyModel, ToyTokenizer]:
    """``(model, tokenizer)``: the trained toy model in eval mode.

    ``path=None`` loads the weights shipped in ``attnkit/data/``; otherwise a ``.safetensors``
    file written by ``train_toy`` / ``attnkit train-toy --out`` (or the directory holding it).
    """
    state, raw = load_weights(path, WEIGHTS, "attnkit train-toy")
    config = ToyConfig(**{**raw, "vocab": tuple(raw["vocab"])})
    model = ToyModel(config)
    model.load_state_dict(state)
    model.eval()
    return model, ToyTokenizer(config.vocab)
