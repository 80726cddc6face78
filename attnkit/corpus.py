"""Attention statistics over a whole data set of texts: batched, resumable, shared across
processes.

``corpus_stats(model, texts, out=DIR)`` runs the model over every text, measures every head
(``attnkit.inspect.stats``) and, with ``out``, appends each text's sums to ``DIR/per_text*.jsonl``
as it goes — a rerun skips the texts already there — then writes ``stats.json``, ``heads.csv`` and
the pictures. Under ``torch.distributed`` (``torchrun``) each rank takes every W-th batch and the
sums meet in one ``all_reduce``: the result is the single-process one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from attnkit.errors import AttnkitError, InputTypeError
from attnkit.inspect.capture import capture
from attnkit.inspect.families import describe
from attnkit.inspect.running import check_text
from attnkit.inspect.stats import STATISTICS, AttentionStats, sequence_stats
from attnkit.runtime import check_positive_int, written_together

__all__ = ["read_texts", "corpus_stats", "CorpusStats", "OUTPUTS", "RUN_FILE"]

RUN_FILE = "run.json"
"""What a results folder was made with; a rerun with the same settings resumes it."""

OUTPUTS = ("stats.json", "heads.csv", "heatmap-entropy.png", "heatmap-sink.png",
           "heatmap-max_weight.png", "heatmap-distance.png", "distance-profiles.png")
"""The files a finished run writes into its folder."""


def read_texts(path: str | os.PathLike) -> list[str]:
    """The texts of ``path``: one text a line (blank lines skipped), or for ``.jsonl`` one JSON
    object a line with a ``"text"`` string."""
    path = Path(path)
    if path.is_dir():
        raise AttnkitError(f"{path} is a directory; give a file of texts (one a line, or .jsonl)")
    lines = path.read_text(encoding="utf-8").splitlines()
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise AttnkitError(f"{path}, line {number}: not JSON ({err.msg}); a .jsonl file "
                                   'holds one object a line, like {"text": "…"}') from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise AttnkitError(f'{path}, line {number}: no "text" string; each line of a '
                                   '.jsonl file must be an object like {"text": "…"}')
            if text.strip():
                texts.append(text)
        else:
            texts.append(line)
    if not texts:
        raise AttnkitError(f"{path} holds no text; give one text a line (or .jsonl with a "
                           '"text" field)')
    return texts


@dataclass(frozen=True)
class CorpusStats:
    """The statistics of every head over a data set (``stats``, sums and counts), with what they
    were measured on: ``n_texts`` texts, ``n_tokens`` tokens in all, ``n_cut`` texts cut to
    ``max_tokens``; ``files``: what was written (with ``out``)."""

    stats: AttentionStats
    model_name: str
    n_texts: int
    n_tokens: int
    n_cut: int
    max_tokens: int | None
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "texts": self.n_texts, "tokens": self.n_tokens,
                "texts_cut": self.n_cut, "max_tokens": self.max_tokens,
                "definitions": dict(STATISTICS), **self.stats.to_dict()}

    def table(self, top: int = 10) -> str:
        """The most focused heads (lowest entropy) with each statistic, as text."""
        rows = sorted(self.stats.rows(), key=lambda r: r["entropy"])[:top]
        lines = [f"{self.model_name}: {self.n_texts} texts, {self.n_tokens} tokens"
                 + (f" ({self.n_cut} cut to {self.max_tokens} tokens)" if self.n_cut else ""),
                 f"{'layer':>5} {'head':>4} {'entropy':>7} {'sink':>6} {'max w':>6}  "
                 "distance share 0 | 1 | 2-3 | 4+"]
        for r in rows:
            d = self.stats.distance[self.stats.layers.index(r["layer"]),
                                    self.stats.heads.index(r["head"])].tolist() + [0.0] * 3
            lines.append(f"{r['layer']:>5} {r['head']:>4} {r['entropy']:>7.3f} {r['sink']:>6.3f} "
                         f"{r['max_weight']:>6.3f}  {d[0]:.2f} | {d[1]:.2f} | {d[2]:.2f} | "
                         f"{sum(d[3:]):.2f}")
        return "\n".join(lines)


# ---- the run ----------------------------------------------------------------------------------


def corpus_stats(model: str | nn.Module, texts: Sequence[str] | str | os.PathLike, *,
                 tokenizer: Any = None, out: str | os.PathLike | None = None,
                 max_tokens: int | None = None, layers: Sequence[int] | None = None,
                 batch_size: int = 8, overwrite: bool = False,
                 allow: str = "pass overwrite=True", progress: bool = False) -> CorpusStats:
    """Every head's attention statistics over ``texts``.

    Args:
        model: a bundled name ("minilm", "toy", "induction"), a Hugging Face id or directory, or
            a loaded model with its ``tokenizer``.
        texts: a list of texts, or a file of them (see ``read_texts``).
        out: a folder for the results. Each text's sums are appended there as it is done, and a
            rerun with the same settings skips those texts; at the end ``stats.json``,
            ``heads.csv`` and the pictures are written. A folder holding other results is
            refused unless ``overwrite=True`` (which starts over); ``allow`` is how the refusal
            says to permit that.
        max_tokens: cut each text to its first ``max_tokens`` tokens (default: the model's
            limit).
        layers: measure only these layers (None: all).
        batch_size: texts run together (padded).

    Under an initialized ``torch.distributed`` group every rank calls this with the same
    arguments; each takes every W-th batch and rank 0 writes the files.
    """
    from attnkit.models import load_model

    batch_size = check_positive_int("batch_size", batch_size)
    if isinstance(model, str):
        net, tokenizer, name = *load_model(model), model
    elif isinstance(model, nn.Module):
        net, name = model, describe(model).name
        tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise AttnkitError("a loaded model needs its tokenizer: corpus_stats(model, texts, "
                               "tokenizer=tokenizer), or pass a name such as 'minilm'")
    else:
        raise InputTypeError(f"model must be a name or a loaded nn.Module; got "
                             f"{type(model).__name__}")
    if isinstance(texts, (str, os.PathLike)):
        texts = read_texts(texts)
    texts = [check_text(t) for t in texts]
    if not texts:
        raise AttnkitError("no texts to measure; give at least one")
    limit = describe(net).max_len
    max_tokens = check_positive_int("max_tokens", max_tokens, allow_none=True)
    if max_tokens is not None and limit is not None and max_tokens > limit:
        raise AttnkitError(f"max_tokens {max_tokens} is more than {name} reads ({limit} tokens); "
                           f"give at most {limit}")
    max_tokens = max_tokens or limit
    layers = None if layers is None else sorted({int(x) for x in layers})
    rank, world = _world()
    folder = _Folder(Path(out), rank, world) if out is not None else None
    settings = {"model": name, "max_tokens": max_tokens, "layers": layers,
                "texts": len(texts), "texts_sha1": _digest("\n\0".join(texts))}
    done: dict[int, dict[str, Any]] = {}
    if folder is not None:
        done = folder.open(settings, texts, overwrite, allow)
    todo = [i for i in range(len(texts)) if i not in done]
    encoded = {i: _encode(tokenizer, texts[i], max_tokens) for i in todo}
    order = sorted(todo, key=lambda i: len(encoded[i]))  # similar lengths share a batch
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)][rank::world]
    mine = [AttentionStats.from_dict(r["stats"]) for i, r in done.items() if i % world == rank]
    tokens = sum(r["tokens"] for i, r in done.items() if i % world == rank)
    cut = sum(r["cut"] for i, r in done.items() if i % world == rank)
    bar = tqdm(batches, desc="attnkit stats", unit="batch", disable=not progress or rank != 0)
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    with torch.no_grad():
        for batch in bar:
            inputs = _pad(tokenizer, [encoded[i] for i in batch], device)
            with capture(net, layers=layers) as cap:
                net(**inputs)
            for i, stats in zip(batch, sequence_stats(cap), strict=True):
                stats = stats.without_received()
                n, was_cut = len(encoded[i]), bool(encoded[i].cut)
                mine.append(stats)
                tokens, cut = tokens + n, cut + was_cut
                if folder is not None:
                    folder.append({"index": i, "sha1": _digest(texts[i]), "tokens": n,
                                   "cut": was_cut, "stats": stats.to_dict(means=False)})
    total, tokens, cut = _all_reduce(mine, tokens, cut, world)
    result = CorpusStats(total, name, len(texts), tokens, cut, max_tokens)
    if folder is not None and rank == 0:
        result = folder.finish(result)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return result


class _Encoded(list):
    """One text's token ids; ``cut`` says whether it was cut to ``max_tokens``."""

    cut = False


def _encode(tokenizer: Any, text: str, max_tokens: int | None) -> _Encoded:
    if max_tokens is None:
        ids = tokenizer(text)["input_ids"]
        return _Encoded(ids)
    ids = tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
    out = _Encoded(ids)
    # cut when the text holds more than it kept: one token more would have been taken
    out.cut = len(ids) == max_tokens and len(
        tokenizer(text, truncation=True, max_length=max_tokens + 1)["input_ids"]) > max_tokens
    return out


def _pad(tokenizer: Any, rows: list[list[int]], device: torch.device) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``(B, S_max)``, padded on the tokenizer's side."""
    width = max(len(r) for r in rows)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[b, span] = torch.tensor(row, dtype=torch.long)
        mask[b, span] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialized torch.distributed group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(parts: list[AttentionStats], tokens: int, cut: int,
                world: int) -> tuple[AttentionStats, int, int]:
    """The sum over every rank of ``parts`` (and the token and cut counts)."""
    mine = AttentionStats.combine(parts) if parts else None
    if world == 1:
        if mine is None:
            raise AttnkitError("no text was measured")
        return mine, tokens, cut
    import torch.distributed as dist

    # every rank must send tensors of one shape: agree on the shapes first
    n_layers = len(mine.layers) if mine else 0
    shape = torch.tensor([n_layers, len(mine.heads) if mine else 0,
                          mine.n_bins if mine else 0], dtype=torch.long)
    dist.all_reduce(shape, op=dist.ReduceOp.MAX)
    lh, n_bins = (int(shape[0]), int(shape[1])), int(shape[2])
    layout = [mine.layers, mine.heads] if mine else None
    layouts: list[Any] = [None] * world
    dist.all_gather_object(layouts, layout)
    known = next(x for x in layouts if x is not None)
    if mine is None:  # a rank with no batch of its own adds zeros
        zeros = torch.zeros(lh, dtype=torch.float64)
        mine = AttentionStats(known[0], known[1], queries=zeros, entropy_sum=zeros.clone(),
                              sink_sum=zeros.clone(), max_weight_sum=zeros.clone(),
                              distance_sum=torch.zeros(*lh, n_bins, dtype=torch.float64),
                              sequences=0)
    mine = mine.with_bins(n_bins)
    flat = torch.cat([mine.queries.flatten(), mine.entropy_sum.flatten(),
                      mine.sink_sum.flatten(), mine.max_weight_sum.flatten(),
                      mine.distance_sum.flatten(),
                      torch.tensor([mine.sequences, tokens, cut], dtype=torch.float64)])
    dist.all_reduce(flat)
    n = lh[0] * lh[1]
    pieces = torch.split(flat, [n, n, n, n, n * n_bins, 3])
    total = AttentionStats(known[0], known[1], queries=pieces[0].view(lh),
                           entropy_sum=pieces[1].view(lh), sink_sum=pieces[2].view(lh),
                           max_weight_sum=pieces[3].view(lh),
                           distance_sum=pieces[4].view(*lh, n_bins),
                           sequences=int(pieces[5][0]))
    return total, int(pieces[5][1]), int(pieces[5][2])


# ---- the results folder -----------------------------------------------------------------------


class _Folder:
    """``run.json``, the per-text results (``per_text.jsonl``, or one file per rank) and the
    outputs of one run."""

    def __init__(self, path: Path, rank: int, world: int):
        self.path, self.rank, self.world = path, rank, world
        name = "per_text.jsonl" if world == 1 else f"per_text.rank{rank}.jsonl"
        self.own = path / name

    def _ours(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted([*self.path.glob("per_text*.jsonl"), *(self.path / n for n in
                       (RUN_FILE, *OUTPUTS) if (self.path / n).exists())])

    def open(self, settings: dict[str, Any], texts: list[str], overwrite: bool,
             allow: str) -> dict[int, dict[str, Any]]:
        """Check the folder and read the texts done before: ``index → record``."""
        if self.path.exists() and not self.path.is_dir():
            raise AttnkitError(f"{self.path} is a file; give a folder for the results")
        run = self.path / RUN_FILE
        if overwrite and self.rank == 0:
            for p in self._ours():
                p.unlink()
        _barrier(self.world)
        if run.exists():
            try:
                before = json.loads(run.read_text())
            except json.JSONDecodeError:
                before = None
            if before != settings:
                raise AttnkitError(
                    f"{self.path} holds results of another run ({_differences(before, settings)}"
                    f"); choose another folder, or {allow} to start over")
        elif any((self.path / n).exists() for n in OUTPUTS) or \
                any(self.path.glob("per_text*.jsonl")):
            raise AttnkitError(f"{self.path} holds statistics files without {RUN_FILE}; choose "
                               f"another folder, or {allow} to replace them")
        done = self._read_done(texts, allow)
        _barrier(self.world)  # every rank has read what was there before anything is appended
        if self.rank == 0 and not run.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            with written_together([run]) as (tmp,):
                tmp.write_text(json.dumps(settings, indent=1) + "\n")
        _barrier(self.world)
        return done

    def _read_done(self, texts: list[str], allow: str) -> dict[int, dict[str, Any]]:
        done: dict[int, dict[str, Any]] = {}
        for part in sorted(self.path.glob("per_text*.jsonl")):
            for number, line in enumerate(part.read_text(encoding="utf-8").split("\n"), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short when a run was stopped: that text runs again
                i = record.get("index")
                if not isinstance(i, int) or not 0 <= i < len(texts) or \
                        record.get("sha1") != _digest(texts[i]):
                    raise AttnkitError(f"{part}, line {number}: a result for a text that is not "
                                       f"in this data set; choose another folder, or {allow} "
                                       "to start over")
                done[i] = record
        return done

    def append(self, record: dict[str, Any]) -> None:
        """Add one text's result; a run stopped mid-line leaves a line the next run skips."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.own, "a", encoding="utf-8") as f:
            if f.tell() and not self._ends_with_newline():
                f.write("\n")  # after a line cut short
            f.write(json.dumps(record) + "\n")

    def _ends_with_newline(self) -> bool:
        with open(self.own, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def finish(self, result: CorpusStats) -> CorpusStats:
        """Write ``stats.json``, ``heads.csv`` and the pictures (all or none)."""
        from attnkit.viz.stats import HEATMAPS, distance_profile_figure, heatmap_figure

        stats = result.stats
        table = io.StringIO()
        rows = stats.rows()
        writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        targets = [self.path / n for n in OUTPUTS]
        about = f"{result.model_name}, {result.n_texts} texts, {result.n_tokens} tokens"
        with written_together(targets) as tmp:
            tmp[0].write_text(json.dumps(result.to_dict(), indent=1) + "\n")
            tmp[1].write_text(table.getvalue())
            for path, name in zip(tmp[2:6], HEATMAPS, strict=True):
                heatmap_figure(stats, name, title=f"{HEATMAPS[name]} — {about}").savefig(
                    path, format="png")
            distance_profile_figure(stats, title=f"distance profile of the most focused heads "
                                                 f"— {about}").savefig(tmp[6], format="png")
        return CorpusStats(stats, result.model_name, result.n_texts, result.n_tokens,
                           result.n_cut, result.max_tokens, targets)


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _differences(before: Any, now: dict[str, Any]) -> str:
    if not isinstance(before, dict):
        return f"its {RUN_FILE} is unreadable"
    changed = [f"{k}: {before.get(k)!r} then, {v!r} now" for k, v in now.items()
               if before.get(k) != v]
    return "; ".join(changed) or "other settings"
