"""Training the toy adjective model: next-word prediction on the grammar's training split.

Seeded and reproducible (same seed, same machine → same weights); about a minute on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from attnkit.errors import AttnkitError
from attnkit.experiments.grammar import VOCAB, Sentence, generate
from attnkit.models.tokenizer import ToyTokenizer
from attnkit.models.toy import ToyConfig, ToyModel, save_toy, toy_paths
from attnkit.runtime import check_writable, torch_threads


@dataclass(frozen=True)
class TrainConfig:
    """How the toy model is trained. The defaults make the shipped weights."""

    seed: int = 0
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-2
    n_sentences: int = 20_000
    d_model: int = 32
    d_key: int = 3


def batch_ids(tokenizer: ToyTokenizer, sentences: list[Sentence]) -> torch.Tensor:
    """The sentences as one right-padded id tensor ``(N, S_max)``."""
    return tokenizer([s.text for s in sentences], return_tensors="pt")["input_ids"]


def train_toy(out: str | Path | None = None, seed: int = 0, *, steps: int | None = None,
              progress: bool = True, config: TrainConfig | None = None,
              overwrite: bool = False) -> tuple[ToyModel, ToyTokenizer]:
    """Train the toy model from scratch; return ``(model, tokenizer)`` in eval mode.

    ``out``: also save the weights there (a ``.safetensors`` path or a directory; checked before
    training, an existing file replaced only with ``overwrite=True``). ``seed`` sets
    the initial weights and the batch order (the sentences are always the grammar's training
    split, seeded with ``seed`` too). ``steps`` overrides ``config.steps``.
    """
    config = config or TrainConfig()
    config = TrainConfig(**{**config.__dict__, "seed": seed,
                            **({"steps": steps} if steps is not None else {})})
    if config.steps <= 0:
        raise AttnkitError(f"steps must be a positive number of optimizer steps; "
                           f"got {config.steps}")
    if out is not None:
        check_writable(toy_paths(out), overwrite=overwrite)
    tokenizer = ToyTokenizer(VOCAB)
    ids = batch_ids(tokenizer, generate(config.n_sentences, seed=config.seed))  # (N, S_max)
    # The matrices are tiny: one thread is faster than several waiting on each other, and it
    # keeps the arithmetic order (so the weights) the same on any machine.
    with torch_threads(1):
        model = _fit(config, tokenizer, ids, progress)
    if out is not None:
        save_toy(model, out, overwrite=overwrite)
    return model, tokenizer


def _fit(config: TrainConfig, tokenizer: ToyTokenizer, ids: torch.Tensor,
         progress: bool) -> ToyModel:
    """The optimisation loop: AdamW with a one-cycle schedule on random batches of ``ids``."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = ToyModel(ToyConfig(vocab=tuple(tokenizer.vocab), d_model=config.d_model,
                                   d_key=config.d_key))
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                       total_steps=config.steps, pct_start=0.1)
        order = torch.Generator().manual_seed(config.seed)
        model.train()
        bar = tqdm(range(config.steps), desc="train-toy", disable=not progress, leave=False)
        for _ in bar:
            rows = torch.randint(0, ids.shape[0], (config.batch_size,), generator=order)
            x = ids[rows]  # (batch, S_max)
            logits = model(input_ids=x[:, :-1]).logits  # (batch, S_max - 1, vocab)
            target = x[:, 1:].clone()  # (batch, S_max - 1): the next word
            target[target == tokenizer.pad_token_id] = -100  # padding predicts nothing
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                   ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model
