"""Views of patterns that read at any length: words instead of word pieces, an all-heads overview,
and the difference of two captures where their tokens line up.

Word pooling merges a word's pieces: a query word's row is the mean of its pieces' rows (so it
still sums to one), a key word's weight is the sum of its pieces' weights. Plain torch, no
matplotlib; every view is computed from a capture's q, k and lse, never from an N x N buffer
unless that is the size asked for.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Sequence
from typing import Any

import torch

from attnkit.errors import AttnkitError
from attnkit.inspect.captured import Captured
from attnkit.inspect.patterns import HeadPattern, from_capture, pooled

__all__ = ["word_spans", "word_tokens", "pool_words", "word_head", "overview", "align",
           "difference_head", "SPECIAL"]

SPECIAL = re.compile(r"^(\[[A-Z_]+\]|<\|[^|]*\|>|<[^<>\s]+>)$")
"""What a special token looks like when the tokenizer's own list is not at hand: [CLS], <s>,
<|endoftext|>."""

CONTINUES = "##"  # WordPiece: a piece that continues the word before it
STARTS = ("Ġ", "▁", "Ċ")  # byte-level BPE / SentencePiece: a piece that starts after a space


def word_spans(tokens: Sequence[str],
               special: Collection[str] | None = None) -> list[tuple[int, int]]:
    """The words of ``tokens`` as half-open ``(start, stop)`` piece ranges, in order.

    A word is what lies between spaces: with WordPiece (pieces like ``##ed``) a piece starting
    with ``##`` continues the word before it; with byte-level BPE or SentencePiece (pieces
    starting with ``Ġ`` or ``▁``) a piece starts a word only when it starts with that mark;
    otherwise every token is a word. Special tokens (``special``, or ones that look like
    ``[CLS]``/``<s>``) are words of their own.
    """
    def is_special(t: str) -> bool:
        return t in special if special is not None else bool(SPECIAL.match(t))

    wordpiece = any(t.startswith(CONTINUES) for t in tokens)
    marked = not wordpiece and any(t.startswith(STARTS) for t in tokens)
    spans: list[list[int]] = []
    for i, t in enumerate(tokens):
        starts = (not spans or is_special(t) or is_special(tokens[i - 1])
                  or (wordpiece and not t.startswith(CONTINUES))
                  or (marked and t.startswith(STARTS)) or not (wordpiece or marked))
        if starts:
            spans.append([i, i + 1])
        else:
            spans[-1][1] = i + 1
    return [(a, b) for a, b in spans]


def word_tokens(tokens: Sequence[str], spans: Sequence[tuple[int, int]]) -> list[str]:
    """Each word written out: its pieces joined, the ``##`` and space marks dropped."""
    words = []
    for a, b in spans:
        pieces = [tokens[a]] + [t[len(CONTINUES):] if t.startswith(CONTINUES) else t
                                for t in tokens[a + 1:b]]
        text = "".join(pieces)
        words.append(text[1:] if text.startswith(STARTS) and len(text) > 1 else text)
    return words


def _membership(spans: Sequence[tuple[int, int]], n: int) -> torch.Tensor:
    """``(W, n)`` float64: 1 where piece ``i`` belongs to word ``w``."""
    m = torch.zeros(len(spans), n, dtype=torch.float64)
    for w, (a, b) in enumerate(spans):
        m[w, a:b] = 1.0
    return m


def pool_words(pattern: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``(..., S, S)`` ``[query, key]`` piece pattern → ``(..., W, W)`` word pattern: row ``a`` is
    the mean of word ``a``'s pieces' rows, column ``b`` the sum of word ``b``'s pieces' columns
    (rows still sum to one)."""
    n = pattern.shape[-1]
    if pattern.shape[-2] != n or not spans or spans[0][0] != 0 or spans[-1][1] != n:
        raise AttnkitError(f"word spans must cover the {n} tokens of a square pattern")
    m = _membership(spans, n)  # (W, S)
    rows = m / m.sum(-1, keepdim=True)  # (W, S): a mean over each word's pieces
    return (rows @ pattern.double() @ m.T).to(pattern.dtype)  # (..., W, W)


def word_head(cap: Captured, layer: int, head: int, spans: Sequence[tuple[int, int]],
              batch: int = 0) -> HeadPattern:
    """A ``HeadPattern`` over words: tile ``(rows, cols)`` of word positions is computed from the
    pieces' exact tile, so ``pooled``/``top_keys`` work on words at any length."""
    n = cap.seq_len(batch)
    starts = torch.tensor([a for a, _ in spans])
    stops = torch.tensor([b for _, b in spans])
    word_of = torch.repeat_interleave(torch.arange(len(spans)), stops - starts)  # (S,)

    def tile(rows: slice, cols: slice) -> torch.Tensor:
        r0, r1, _ = rows.indices(len(spans))
        c0, c1, _ = cols.indices(len(spans))
        p0, p1 = int(starts[r0]), int(stops[r1 - 1])
        k0, k1 = int(starts[c0]), int(stops[c1 - 1])
        pieces = cap.pattern(layer, head, batch=batch, rows=slice(p0, p1),
                             cols=slice(k0, k1)).double()  # (Rp, Cp)
        out = torch.zeros(p1 - p0, c1 - c0, dtype=torch.float64)
        out.index_add_(1, word_of[k0:k1] - c0, pieces)  # sum over each key word's pieces
        words = torch.zeros(r1 - r0, c1 - c0, dtype=torch.float64)
        words.index_add_(0, word_of[p0:p1] - r0, out)
        counts = (stops[r0:r1] - starts[r0:r1]).double()[:, None]
        return (words / counts).float()  # (R, C): the mean over each query word's pieces

    if int(stops[-1]) != n:
        raise AttnkitError(f"word spans cover {int(stops[-1])} tokens; the capture has {n}")
    return HeadPattern(len(spans), len(spans), tile)


def overview(cap: Captured, layer: int, *, size: int = 32, batch: int = 0,
             exact_up_to: int = 1024, rows_per_block: int = 2) -> dict[str, Any]:
    """Every captured head of ``layer`` as a small max-pooled thumbnail, ``(h, s, s)``.

    Inputs up to ``exact_up_to`` tokens pool every query row; longer ones pool
    ``rows_per_block`` evenly spaced query rows of each block (said in ``sampled_rows``), so a
    layer costs ``O(h · size · rows_per_block · N · d)`` however long the input."""
    n = cap.seq_len(batch)
    heads = cap.heads
    block = math.ceil(n / size)
    values = []
    sampled = None
    if n <= exact_up_to:
        for h in heads:
            values.append(pooled(from_capture(cap, layer, h, batch), size=size).values)
    else:
        picks = []
        for start in range(0, n, block):
            stop = min(start + block, n)
            count = min(rows_per_block, stop - start)
            picks += [start + (stop - start - 1) * i // max(1, count - 1) for i in range(count)]
        rows = torch.tensor(sorted(set(picks)))
        group = rows // block  # (R,) the row block of each sampled row
        sampled = len(rows)
        for h in heads:
            p = cap.pattern(layer, h, batch=batch, rows=rows, cols=slice(0, n))  # (R, N)
            pad = -n % block
            cols = torch.nn.functional.pad(p, (0, pad)).view(len(rows), -1, block).amax(-1)
            values.append(torch.stack([cols[group == b].amax(0)
                                       for b in range(math.ceil(n / block))]))  # (s, s)
    return {"layer": layer, "heads": list(heads), "n": n, "block": block,
            "sampled_rows": sampled, "values": torch.stack(values)}


def align(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    """Positions ``(i, j)`` where token ``a[i]`` lines up with ``b[j]``: the longest matching
    runs (``difflib.SequenceMatcher``), in order."""
    if list(a) == list(b):
        return [(i, i) for i in range(len(a))]
    matcher = difflib.SequenceMatcher(None, list(a), list(b), autojunk=False)
    return [(m.a + t, m.b + t) for m in matcher.get_matching_blocks() for t in range(m.size)]


def difference_head(cap_a: Captured, cap_b: Captured, layer: int, head: int,
                    pairs: Sequence[tuple[int, int]], batch: int = 0) -> HeadPattern:
    """``A - B`` over the lined-up tokens: cell ``[i, j]`` is ``pattern_a[a_i, a_j] -
    pattern_b[b_i, b_j]`` for the ``i``-th and ``j``-th pairs of ``pairs``."""
    if not pairs:
        raise AttnkitError("no tokens of the two texts line up, so there is no difference "
                           "to show")
    ia = torch.tensor([p[0] for p in pairs])
    ib = torch.tensor([p[1] for p in pairs])

    def tile(rows: slice, cols: slice) -> torch.Tensor:
        a = cap_a.pattern(layer, head, batch=batch, rows=ia[rows], cols=ia[cols])
        b = cap_b.pattern(layer, head, batch=batch, rows=ib[rows], cols=ib[cols])
        return a - b  # (R, C) in [-1, 1]

    return HeadPattern(len(pairs), len(pairs), tile)
