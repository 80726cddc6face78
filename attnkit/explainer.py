"""``attnkit.explain``: one sentence's attention as the notes draw it (the Python twin of the CLI).

Runs a model on the text through ``attnkit.capture``, keeps every head's pattern, chooses a head,
and draws it: terminal grid, ``grid.png``/``.svg``, the ``heads.png`` contact sheet, ``page.html``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from attnkit.detectors import find_heads
from attnkit.errors import AttnkitError, InputTypeError, OutOfRangeError
from attnkit.experiments.adjective_heads import has_adjective_before_noun
from attnkit.inspect.families import describe
from attnkit.inspect.patterns import from_capture, pooled
from attnkit.inspect.running import check_text, count_tokens, run_and_capture
from attnkit.models import load_model
from attnkit.runtime import check_writable, written_together

__all__ = ["explain", "explain_capture", "Explanation", "show"]

DEMO_TEXT = "a fluffy blue creature roamed the verdant forest"
EVERY_HEAD_UP_TO = 512  # longer inputs keep the chosen head exact and pool the others
SHEET = 128  # cells a side of each pooled grid on a long input's contact sheet
MAX_EXPLAIN = 1024  # explain draws every cell; longer texts belong in the explorer (serve)


@dataclass
class Explanation:
    """One text's attention in one model: every captured head, and one chosen to show.

    Attributes:
        tokens: the tokens as the model saw them (MiniLM adds ``[CLS]``/``[SEP]``; see
            ``explain(special_tokens=...)``).
        pattern: ``(S, S)`` float32 ``[query, key]`` of the chosen head; each row sums to 1.
        patterns: ``(L, H, S, S)`` the same for every captured layer x head — for inputs over
            ``EVERY_HEAD_UP_TO`` tokens only the chosen head ``(1, 1, S, S)``; ``kept`` names them.
        layer, head: the chosen head (model numbering); ``layers``/``heads``: the captured ones.
        sheet: for long inputs, ``(L, H, s, s)`` max-pooled views of every head (blocks of
            ``sheet_block`` tokens) for the contact sheet; None when ``patterns`` has every head.
        choice: how the head was chosen, in words.
        capture: the capture it was drawn from (the page shows any cell's K·Q from it);
            ``positions`` the capture position of each token shown (None: all, in order).
        pieces: for an explanation by words (``words()``), the one by word pieces it pools.
    """

    tokens: list[str]
    patterns: torch.Tensor
    layer: int
    head: int
    model_name: str
    causal: bool
    layers: list[int]
    heads: list[int]
    choice: str = ""
    text: str | None = None
    notes: list[str] = field(default_factory=list)
    kept: tuple[list[int], list[int]] | None = None
    sheet: torch.Tensor | None = None
    sheet_block: int = 1
    capture: Any = field(default=None, repr=False)
    batch: int = 0
    positions: list[int] | None = None
    pieces: Explanation | None = field(default=None, repr=False)

    @property
    def pattern(self) -> torch.Tensor:
        """``(S, S)`` ``[query, key]`` pattern of the chosen head."""
        layers, heads = self.kept or (self.layers, self.heads)
        return self.patterns[layers.index(self.layer), heads.index(self.head)]

    @property
    def title(self) -> str:
        return f"{self.model_name} · layer {self.layer} · head {self.head}"

    def best_keys(self) -> list[tuple[str, str, float]]:
        """For each query: ``(query token, the key token that answers it best, its weight)``."""
        weights, keys = torch.max(self.pattern, dim=-1)  # (S,), (S,)
        return [(q, self.tokens[int(j)], float(w))
                for q, j, w in zip(self.tokens, keys, weights, strict=True)]

    def terminal(self, orientation: str = "notes", color: bool = False) -> str:
        """The text the CLI prints: which model/layer/head, the shaded grid, the best keys."""
        from attnkit.viz.terminal import best_keys_lines, terminal_grid

        lines = [f"model {self.model_name}   layer {self.layer}   head {self.head}   "
                 f"({len(self.tokens)} {'words' if self.pieces is not None else 'tokens'}"
                 f"{', causal' if self.causal else ''})"]
        if self.choice:
            lines.append(f"head chosen: {self.choice}")
        lines += self.notes
        lines += ["", terminal_grid(self.pattern, self.tokens, causal=self.causal,
                                    orientation=orientation, color=color)]
        lines += ["", "each query's best-answering key:"]
        lines += best_keys_lines(self.pattern, self.tokens)
        return "\n".join(lines)

    # ---- pictures and the page ----------------------------------------------------------------

    def grid_figure(self, orientation: str = "notes"):
        """The chosen head as a matplotlib Figure (see ``attnkit.viz.grid.grid_figure``)."""
        from attnkit.viz.grid import grid_figure

        return grid_figure(self.pattern, self.tokens, orientation=orientation, causal=self.causal,
                           title=self.title)

    def heads_figure(self, orientation: str = "notes"):
        """Every captured layer x head as a contact sheet, the chosen one framed."""
        from attnkit.viz.grid import heads_figure

        title = f"{self.model_name}: every layer x head"
        if self.sheet is not None:
            title += f" (max over blocks of {self.sheet_block} x {self.sheet_block} tokens)"
        grids = self.patterns if self.sheet is None else self.sheet
        return heads_figure(grids, orientation=orientation, causal=self.causal, title=title,
                            layers=self.layers, heads=self.heads, chosen=(self.layer, self.head))

    def html(self, orientation: str = "notes") -> str:
        """The standalone page (inline JS/CSS, no network) as a string: click a cell for its
        K·Q; an explanation by words opens with word pieces merged into words."""
        from attnkit.viz.page import MAX_CELLS, kq_data, page_data, render_page

        source = self.pieces or self
        layers, heads = source.kept or (source.layers, source.heads)
        kq = None
        if source.capture is not None:  # K·Q for the heads whose patterns the page holds
            chosen = (source.layer, source.head)
            kept = [chosen]
            if source.patterns.numel() <= MAX_CELLS:
                kept += [(lay, hd) for lay in layers for hd in heads if (lay, hd) != chosen]
            kq = kq_data(source.capture, kept, batch=source.batch, positions=source.positions)
        return render_page(page_data(source.patterns, source.tokens,
                                     model_name=source.model_name, layer=self.layer,
                                     head=self.head, causal=source.causal,
                                     orientation=orientation, layers=layers, heads=heads,
                                     n_layers=max(source.layers) + 1,
                                     n_heads=max(source.heads) + 1, kq=kq,
                                     words=self.pieces is not None))

    def words(self) -> Explanation:
        """The same explanation with word pieces merged into words: a query word's row is the mean
        of its pieces' rows (it still sums to 1), a key word's weight the sum of its pieces'
        weights. Words are read from the tokens (``attnkit.viz.views.word_spans``: WordPiece
        ``##`` pieces continue a word, BPE/SentencePiece pieces starting with a space mark begin
        one); the page it writes still holds the pieces, with words switched on."""
        from attnkit.viz.views import pool_words, word_spans, word_tokens

        if self.pieces is not None:
            return self
        spans = word_spans(self.tokens)
        merged = replace(self, tokens=word_tokens(self.tokens, spans),
                         patterns=pool_words(self.patterns, spans), sheet=self.sheet,
                         notes=[*self.notes, f"{len(self.tokens)} word pieces merged into "
                                f"{len(spans)} words: a query word's row is the mean of its "
                                "pieces' rows, a key word's weight the sum of its pieces'"],
                         pieces=self, positions=None)
        return merged

    def _repr_html_(self) -> str:
        from attnkit.viz.page import iframe

        return iframe(self.html(), height=260 + 30 * min(len(self.tokens), 40))

    def save_grid(self, path: str | os.PathLike, orientation: str = "notes",
                  format: str | None = None) -> Path:
        """Write the chosen head's picture; the format follows the suffix (.png, .svg, .pdf)
        unless ``format`` names it."""
        path = Path(path)
        self.grid_figure(orientation).savefig(path, format=format)
        return path

    def save_heads(self, path: str | os.PathLike, orientation: str = "notes",
                   format: str | None = None) -> Path:
        """Write the contact sheet of every layer x head (format as in ``save_grid``)."""
        path = Path(path)
        self.heads_figure(orientation).savefig(path, format=format)
        return path

    def save_page(self, path: str | os.PathLike, orientation: str = "notes") -> Path:
        path = Path(path)
        path.write_text(self.html(orientation), encoding="utf-8")
        return path

    def save(self, out: str | os.PathLike, orientation: str = "notes", *,
             overwrite: bool = False) -> dict[str, Path]:
        """Write grid.png, grid.svg, heads.png and page.html into directory ``out``.

        Files already there are replaced only with ``overwrite=True`` (checked before anything is
        drawn). All four are made under temporary names and renamed into place only when every
        one is done, so a failure leaves nothing half-written.
        """
        targets = check_out_dir(out, overwrite=overwrite)
        with written_together(targets.values()) as scratch:
            grid_png, grid_svg, heads_png, page = scratch
            self.save_grid(grid_png, orientation, format="png")
            self.save_grid(grid_svg, orientation, format="svg")
            self.save_heads(heads_png, orientation, format="png")
            self.save_page(page, orientation)
        return targets

    # ---- from a capture -----------------------------------------------------------------------

    @classmethod
    def from_capture(cls, cap: Any, *, layer: int | None = None, head: int | None = None,
                     model_name: str = "model", tokens: Sequence[str] | None = None,
                     batch: int = 0, choice: str = "") -> Explanation:
        """Build from an ``attnkit.capture`` result: every captured head of sequence ``batch``."""
        layers, heads = list(cap.layers), list(cap.heads)
        if not layers:
            raise AttnkitError("the capture has recorded nothing: run the model inside "
                               "`with attnkit.capture(model) as cap:` first")
        n = cap.seq_len(batch)
        if n > MAX_EXPLAIN:
            raise AttnkitError(f"the capture holds {n:,} tokens; explain draws every cell and "
                               f"stops at {MAX_EXPLAIN:,} tokens. Explore it in the explorer "
                               "(`attnkit serve --open FILE` for a capture file), which pools "
                               "long patterns")
        if tokens is None:
            tokens = (cap.tokens_of(batch) or [str(i) for i in range(n)])[:n]
        tokens = list(tokens)
        if len(tokens) != n:
            raise AttnkitError(f"got {len(tokens)} tokens for a sequence of {n} positions")
        layer = layers[0] if layer is None else layer
        head = heads[0] if head is None else head
        _check_choice(layer, head, layers, heads, model_name)
        causal = bool(cap.options(layers[0]).get("causal", False))
        span = slice(0, n)
        if n <= EVERY_HEAD_UP_TO:
            patterns = torch.stack([cap.patterns(lay, heads, batch=batch, rows=span, cols=span)
                                    for lay in tqdm(layers, desc="patterns", unit="layer",
                                                    file=sys.stderr, disable=n < 256,
                                                    leave=False)])  # (L, H, S, S) [query, key]
            return cls(tokens, patterns.float(), layer, head, model_name, causal, layers, heads,
                       choice=choice, capture=cap, batch=batch)
        # long: the chosen head exactly, every head as a pooled view for the contact sheet
        chosen = cap.pattern(layer, head, batch=batch, rows=span, cols=span)  # (S, S)
        sheet, block = _pooled_sheet(cap, layers, heads, n, batch)
        return cls(tokens, chosen.float()[None, None], layer, head, model_name, causal, layers,
                   heads, choice=choice, kept=([layer], [head]), sheet=sheet, sheet_block=block,
                   capture=cap, batch=batch)


def _pooled_sheet(cap: Any, layers: list[int], heads: list[int], n: int,
                  batch: int) -> tuple[torch.Tensor, int]:
    """Every head max-pooled to at most ``SHEET`` cells a side: ``(L, H, s, s)`` and the block."""
    views = []
    with tqdm(total=len(layers) * len(heads), desc="pooled views", unit="head",
              file=sys.stderr, leave=False) as bar:
        for lay in layers:
            row = []
            for hd in heads:
                row.append(pooled(from_capture(cap, lay, hd, batch), size=SHEET).values)
                bar.update()
            views.append(torch.stack(row))
    block = -(-n // SHEET)
    return torch.stack(views), block


OUTPUTS = ("grid.png", "grid.svg", "heads.png", "page.html")
"""The files ``Explanation.save`` writes."""


def check_out_dir(out: str | os.PathLike, *, overwrite: bool = False,
                  allow: str = "pass overwrite=True") -> dict[str, Path]:
    """The files ``save`` would write into ``out``, after checking (before any work, creating
    nothing) that ``out`` is or can become a writable directory and that none of them would
    replace a file unless ``overwrite`` (``allow`` says how to permit that)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AttnkitError(f"the output directory {out} is a file; give a directory to write "
                           f"{', '.join(OUTPUTS)} into")
    targets = {name: out / name for name in OUTPUTS}
    check_writable(list(targets.values()), overwrite=overwrite, allow=allow)
    return targets


def _check_choice(layer: int, head: int, layers: list[int], heads: list[int], model: str) -> None:
    for name, value, valid in (("layer", layer, layers), ("head", head, heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value not in valid:
            span = (f"{valid[0]}..{valid[-1]}" if valid == list(range(valid[0], valid[-1] + 1))
                    else ", ".join(map(str, valid)))
            kind = "layers" if name == "layer" else "heads per layer"
            raise OutOfRangeError(f"{name} {value!r} is out of range: {model} has {len(valid)} "
                                  f"{kind} ({span})")


def _find_adjective_head(model: nn.Module, tokenizer: Any, name: str) -> tuple[int, int, str]:
    """The head ``attnkit.find_heads`` ranks best for nouns looking at their adjectives."""
    result = find_heads(model, "adjectives", tokenizer=tokenizer)
    layer, head = result.best
    how = (f"found by find_heads(relation='adjectives'): score {result.score(layer, head):.2f} "
           f"vs baseline {result.baseline:.2f}")
    previous = result.baselines.get("all attention on the previous token")
    if previous is not None:  # a previous-token head also scores well: say so
        how += f" (a head looking only at the previous token scores {previous:.2f})"
    return layer, head, how


def _drop_special(exp: Explanation, special: set[str]) -> Explanation:
    """Leave out special tokens; each query's weights renormalized over the tokens kept."""
    keep = [i for i, t in enumerate(exp.tokens) if t not in special]
    if len(keep) == len(exp.tokens) or not keep:
        return exp
    dropped = sorted({t for t in exp.tokens if t in special})
    index = torch.tensor(keep)
    p = exp.patterns.index_select(2, index).index_select(3, index)  # (L, H, S', S')
    total = p.sum(-1, keepdim=True)
    p = torch.where(total > 0, p / total.clamp_min(1e-30), p)
    exp.patterns = p
    exp.tokens = [exp.tokens[i] for i in keep]
    exp.positions = keep
    exp.notes.append(f"special tokens {', '.join(dropped)} left out; each query's weights "
                     "renormalized over the tokens shown")
    return exp


def explain(text: str, model: str | nn.Module = "minilm", layer: int | None = None,
            head: int | None = None, *, tokenizer: Any = None, find: str | None = None,
            special_tokens: bool = True, model_name: str | None = None,
            words: bool = False) -> Explanation:
    """Run ``model`` on ``text`` and explain one head's attention.

    Args:
        text: the sentence, e.g. "a fluffy blue creature roamed the verdant forest".
        model: "minilm" (the bundled all-MiniLM-L6-v2), "toy", a Hugging Face id or path, or a
            loaded model (then pass its ``tokenizer``).
        layer, head: the head to show; both or neither. Neither: the head ``find`` picks —
            ``find="adjectives"`` ranks heads by how much nouns attend to their adjectives; by
            default that search runs when the text has an adjective before a noun, otherwise
            layer 0 head 0. The choice is kept in ``Explanation.choice``.
        special_tokens: keep the tokenizer's ``[CLS]``/``[SEP]`` (True: the model's real weights,
            which often go to ``[SEP]``); False leaves them out and renormalizes each query's
            weights over the words shown.
        words: merge word pieces into words (``Explanation.words``).

    Returns:
        an ``Explanation``: ``.tokens``, ``.pattern`` ``(S, S)`` ``[query, key]``, ``.layer``,
        ``.head``, ``.model_name``, ``.save(dir)``, ``.html()``; shows itself in Jupyter.
    """
    if not isinstance(text, str) or not text.strip():
        raise AttnkitError(f'the text is empty; give a sentence, e.g. "{DEMO_TEXT}"')
    check_text(text)  # before loading any model: bytes that are not UTF-8, lone surrogates
    if (layer is None) != (head is None):
        raise AttnkitError("give both layer and head, or neither to let attnkit choose")
    if find not in (None, "adjectives"):
        raise AttnkitError(f"find={find!r} is not a relation explain can choose a head by; "
                           "use find='adjectives'")
    if isinstance(model, str):
        net, tokenizer = load_model(model)
    elif isinstance(model, nn.Module):
        if tokenizer is None:
            raise AttnkitError("a loaded model needs its tokenizer: explain(text, model, "
                               "tokenizer=tokenizer)")
        net = model
    else:
        raise InputTypeError(f"model must be a name (e.g. 'minilm', 'toy') or a loaded "
                             f"nn.Module; got {type(model).__name__}")
    info = describe(net)
    name = model_name or (model if isinstance(model, str) else info.name)
    limit = MAX_EXPLAIN if info.max_len is None else min(MAX_EXPLAIN, info.max_len)
    n_tokens = count_tokens(tokenizer, text, max_tokens=limit)
    if info.max_len is not None and n_tokens > info.max_len:
        raise AttnkitError(f"the text is {n_tokens} tokens long but {name} reads at most "
                           f"{info.max_len} tokens; shorten the text")
    if n_tokens > MAX_EXPLAIN:
        raise AttnkitError(f"the text is {n_tokens:,} tokens long; explain draws every cell and "
                           f"stops at {MAX_EXPLAIN:,} tokens. Explore longer texts in the "
                           "explorer (`attnkit serve`), which pools long patterns")
    _check_choice(0 if layer is None else layer, 0 if head is None else head,
                  list(range(info.n_layers)), list(range(info.n_heads)), name)

    choice = "given (layer and head)"
    if layer is None:
        layer, head = 0, 0
        choice = "layer 0 head 0 (the default: the text has no adjective before a noun)"
        if find == "adjectives" or (find is None and has_adjective_before_noun(text)):
            layer, head, choice = _find_adjective_head(net, tokenizer, name)
    cap = run_and_capture(net, tokenizer, text)
    exp = Explanation.from_capture(cap, layer=layer, head=head, model_name=name, choice=choice)
    exp.text = text
    exp.causal = info.causal
    if not special_tokens:
        special = set(getattr(tokenizer, "all_special_tokens", []) or [])
        exp = _drop_special(exp, special)
    return exp.words() if words else exp


def explain_capture(capture: Any, layer: int | None = None, head: int | None = None, *,
                    special_tokens: bool = True, words: bool = False,
                    model_name: str | None = None) -> Explanation:
    """Explain a capture — a live one, a ``CaptureFile``, or the path of a capture file — with
    no model: ``layer``/``head`` both or neither (neither: the first captured layer and head);
    ``special_tokens=False`` leaves out tokens that look like ``[CLS]``/``<s>``; ``words``
    merges word pieces into words."""
    from attnkit.inspect.capture_file import load_capture
    from attnkit.inspect.captured import Captured
    from attnkit.viz.views import SPECIAL

    if isinstance(capture, (str, os.PathLike)):
        capture = load_capture(capture)
    if not isinstance(capture, Captured):
        raise InputTypeError("explain_capture takes a capture or the path of a capture file; "
                             f"got {type(capture).__name__}")
    if (layer is None) != (head is None):
        raise AttnkitError("give both layer and head, or neither to let attnkit choose")
    capture._require()
    choice = "given (layer and head)"
    if layer is None:
        layer, head = capture.layers[0], capture.heads[0]
        choice = f"layer {layer} head {head} (the first in the capture)"
    exp = Explanation.from_capture(capture, layer=layer, head=head,
                                   model_name=model_name or capture.model_name, choice=choice)
    if capture.model_info is not None:
        exp.causal = capture.model_info.causal
    if not special_tokens:
        exp = _drop_special(exp, {t for t in exp.tokens if SPECIAL.match(t)})
    return exp.words() if words else exp


def show(text_or_capture: Any, model: str | nn.Module = "minilm", layer: int | None = None,
         head: int | None = None, **options: Any) -> Explanation:
    """For Jupyter: the page inline. Give a text (explained with ``explain``) or a ``Capture``."""
    if isinstance(text_or_capture, str):
        return explain(text_or_capture, model, layer, head, **options)
    if hasattr(text_or_capture, "pattern") and hasattr(text_or_capture, "layers"):
        return Explanation.from_capture(text_or_capture, layer=layer, head=head, **options)
    raise InputTypeError("show() takes a text or an attnkit Capture; got "
                         f"{type(text_or_capture).__name__}")
