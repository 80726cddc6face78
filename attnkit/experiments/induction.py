"""The induction experiment: train the two-layer attention-only model on random token sequences
that repeat, and measure what it learned on held-out sequences.

A sequence is a segment of 4–64 distinct random syllables repeated until it fills the model's
128 positions, and the loss is the next-token loss on the repeats. Only a model that looks up
"what followed this token last time" can predict them, and with one head per layer the classic
circuit is the way: layer 0 copies each token's predecessor into it (a previous-token head),
layer 1 matches the current token against those copies and reads the token that followed (an
induction head). Seeded; a few minutes on a CPU. docs/induction.md tells how the data and the
loss were chosen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from attnkit.errors import AttnkitError
from attnkit.models.induction import (
    InductionConfig,
    InductionModel,
    induction_paths,
    save_induction,
)
from attnkit.models.tokenizer import ToyTokenizer
from attnkit.runtime import check_writable, torch_threads

__all__ = ["TrainConfig", "repeating_batch", "train_induction", "Accuracy", "repeat_accuracy",
           "head_scores"]


@dataclass(frozen=True)
class TrainConfig:
    """How the induction model is trained. The defaults make the shipped weights."""

    seed: int = 0
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 200
    min_period: int = 4
    max_period: int = 64
    d_model: int = 128
    d_key: int = 32


def repeating_batch(n: int, length: int, vocab_size: int, *, min_period: int, max_period: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (n, length), periods (n,))``: ids in ``1 .. vocab_size - 1`` (0 is padding), each
    row a segment of ``period`` distinct random tokens (``min_period``–``max_period``) repeated
    until the row is full. Distinct, so that in a repeat each token has exactly one earlier copy
    per period: what follows it is certain, and only a head that finds that copy predicts it."""
    if max_period > vocab_size - 1:
        raise AttnkitError(f"max_period {max_period} needs that many distinct tokens; the "
                           f"vocabulary has {vocab_size - 1}")
    periods = torch.randint(min_period, max_period + 1, (n,), generator=generator)  # (n,)
    shuffled = torch.rand(n, vocab_size - 1, generator=generator).argsort(-1) + 1  # (n, V - 1)
    at = torch.arange(length)[None] % periods[:, None]  # (n, length): position in the segment
    return shuffled.gather(1, at), periods


def train_induction(out: str | Path | None = None, seed: int = 0, *, steps: int | None = None,
                    progress: bool = True, config: TrainConfig | None = None,
                    overwrite: bool = False) -> tuple[InductionModel, ToyTokenizer]:
    """Train the induction model from scratch; return ``(model, tokenizer)`` in eval mode.

    ``out``: also save the weights there (a ``.safetensors`` path or a directory; checked before
    training, an existing file replaced only with ``overwrite=True``). ``seed`` sets the initial
    weights and the data; ``steps`` overrides ``config.steps``.
    """
    config = replace(config or TrainConfig(), seed=seed,
                     **({"steps": steps} if steps is not None else {}))
    if config.steps <= 0:
        raise AttnkitError(f"steps must be a positive number of optimizer steps; "
                           f"got {config.steps}")
    if out is not None:
        check_writable(induction_paths(out), overwrite=overwrite)
    # Small matrices: one thread beats two waiting on each other, and keeps the arithmetic
    # order (so the weights) the same from run to run.
    with torch_threads(1):
        model = _fit(config, progress)
    if out is not None:
        save_induction(model, out, overwrite=overwrite)
    return model, model.tokenizer


def _fit(config: TrainConfig, progress: bool) -> InductionModel:
    """AdamW, the learning rate warmed up linearly then held; next-token loss on the repeats."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = InductionModel(InductionConfig(d_model=config.d_model, d_key=config.d_key))
        data = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / config.warmup))
        model.train()
        bar = tqdm(range(config.steps), desc="train-induction", disable=not progress,
                   leave=False)
        for _ in bar:
            x, periods = repeating_batch(config.batch_size, model.config.max_len,
                                         model.config.vocab_size, min_period=config.min_period,
                                         max_period=config.max_period, generator=data)
            logits = model(input_ids=x[:, :-1]).logits  # (batch, S - 1, vocab)
            # only the repeats are predictable: the first copy is noise, and scoring it would
            # reward guessing "a token not seen yet" instead of looking the answer up
            target = x[:, 1:].clone()  # (batch, S - 1)
            target[torch.arange(1, x.shape[1])[None] < periods[:, None]] = -100
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                   ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@dataclass(frozen=True)
class Accuracy:
    """Next-token accuracy on held-out sequences: ``first`` on a segment's first copy (chance:
    1 in 64), ``repeat`` on its second copy (where the earlier copy gives the answer)."""

    first: float
    repeat: float
    n_sequences: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"next-token accuracy on {self.n_sequences} held-out sequences: "
                f"{self.repeat:.3f} on the repeat, {self.first:.3f} on the first copy "
                "(chance 1/64)")


@torch.no_grad()
def repeat_accuracy(model: InductionModel, n: int = 200, period: int = 32,
                    seed: int = 20240) -> Accuracy:
    """Accuracy of ``model`` on ``n`` fresh sequences: ``period`` random tokens repeated twice."""
    vocab = model.config.vocab_size
    x, _ = repeating_batch(n, 2 * period, vocab, min_period=period, max_period=period,
                           generator=torch.Generator().manual_seed(seed))  # (n, 2·period)
    right = model(input_ids=x).logits.argmax(-1)[:, :-1] == x[:, 1:]  # (n, 2·period - 1)
    return Accuracy(first=float(right[:, :period - 1].float().mean()),
                    repeat=float(right[:, period:].float().mean()), n_sequences=n)


def head_scores(model: InductionModel) -> list[str]:
    """One line per relation the model was built to show (previous-token, induction): the
    top-ranked head and its score on held-out generated sequences, beside the uniform baseline."""
    from attnkit.inspect.heads import rank_heads
    from attnkit.inspect.relations import induction, previous_token

    lines = []
    for relation in (previous_token(), induction()):
        result = rank_heads(model, model.tokenizer, relation)
        layer, head, score = result.ranking[0]
        lines.append(f"{relation.name}: layer {layer} head {head} scores {score:.3f} (uniform "
                     f"baseline {result.baseline:.3f}; {result.inputs})")
    return lines
