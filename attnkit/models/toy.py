"""The toy adjective model: token + position embeddings, one attnkit ``MultiHeadAttention`` layer
with a small query/key space, and an unembedding — small enough to read, and to train in a minute.

Weights are saved as safetensors with the config (JSON) beside them; the trained model ships in
``attnkit/data/`` and ``load_toy()`` loads it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from attnkit.core.multihead import MultiHeadAttention
from attnkit.errors import AttnkitError
from attnkit.models.tokenizer import ToyTokenizer
from attnkit.runtime import check_writable, written_together

WEIGHTS = "toy_adjectives.safetensors"
CONFIG = "toy_adjectives.json"


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
    hold ``toy_adjectives.safetensors``; the config is the same name with ``.json``."""
    path = Path(out)
    if path.suffix != ".safetensors":
        path = path / WEIGHTS
    return path, path.with_suffix(".json")


def save_toy(model: ToyModel, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model``'s weights to ``out`` (a ``.safetensors`` path or a directory) and its
    config beside them as ``<name>.json``, both or neither; an existing file is replaced only
    with ``overwrite=True``. Returns the weights path."""
    from safetensors.torch import save_file

    weights, config = check_writable(toy_paths(out), overwrite=overwrite)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with written_together([weights, config]) as (weights_tmp, config_tmp):
        save_file(state, str(weights_tmp))
        config_tmp.write_text(json.dumps(asdict(model.config), indent=1) + "\n")
    return weights


def load_toy(path: str | Path | None = None) -> tuple[ToyModel, ToyTokenizer]:
    """``(model, tokenizer)``: the trained toy model in eval mode.

    ``path=None`` loads the weights shipped in ``attnkit/data/``; otherwise a ``.safetensors``
    file written by ``train_toy`` / ``attnkit train-toy --out`` (or the directory holding it).
    """
    from safetensors.torch import load_file

    if path is None:
        data = resources.files("attnkit") / "data"
        weights, config_text = data / WEIGHTS, (data / CONFIG).read_text()
    else:
        weights = Path(path)
        if weights.is_dir():
            weights = weights / WEIGHTS
        if not weights.exists():
            raise FileNotFoundError(f"no toy weights at {weights}; train them with "
                                    f"`attnkit train-toy --out {weights}`")
        config_text = weights.with_suffix(".json").read_text()
    raw = json.loads(config_text)
    config = ToyConfig(**{**raw, "vocab": tuple(raw["vocab"])})
    model = ToyModel(config)
    with resources.as_file(weights) if path is None else contextlib.nullcontext(weights) as file:
        model.load_state_dict(load_file(str(file)))
    model.eval()
    return model, ToyTokenizer(config.vocab)
