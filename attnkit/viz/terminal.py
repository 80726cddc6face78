"""One head's pattern as text for the terminal, in the notes' layout (keys down, queries across).

Cells are shaded with block characters (and 256-colour backgrounds when ``color=True``); under
the grid, each query's best-answering key.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnkit.viz.layout import check_orientation, hidden_cells

__all__ = ["terminal_grid", "best_keys_lines"]

SHADES = ["  ", "░░", "▒▒", "▓▓", "██"]  # weight 0, <.1, <.3, <.6, >=.6
HIDDEN = "··"  # a causal model hides this key from this query
LABEL = 12  # characters of a token label
MAX_TOKENS = 48  # wider grids are cut; the pictures show everything


def _shade(w: float) -> int:
    if w < 0.005:
        return 0
    return 1 if w < 0.1 else 2 if w < 0.3 else 3 if w < 0.6 else 4


def _label(token: str, width: int = LABEL) -> str:
    token = token.replace("\n", "⏎")
    return token if len(token) <= width else token[: width - 1] + "…"


def terminal_grid(pattern: torch.Tensor, tokens: Sequence[str], *, causal: bool = False,
                  orientation: str = "notes", color: bool = False) -> str:
    """The grid as lines of text.

    Args:
        pattern: ``(S, S)`` ``[query, key]`` probabilities (self-attention: one token list).
        orientation: "notes" (keys as rows, queries as columns, columns sum to 1) or "query-key".
        color: add 256-colour background shading (for a terminal that shows it).
    """
    n = pattern.shape[0]
    shown = min(n, MAX_TOKENS)
    p = pattern[:shown, :shown].detach().float().cpu()  # (S', S') [query, key]
    hidden = hidden_cells(n, n, causal)[:shown, :shown]
    notes = check_orientation(orientation) == "notes"
    cells, hide = (p.T, hidden.T) if notes else (p, hidden)  # [row, column]
    labels = [_label(t) for t in tokens[:shown]]
    rows_name, cols_name = ("keys", "queries") if notes else ("queries", "keys")
    left = max(len(rows_name), *(len(x) for x in labels)) + 1
    lines = [" " * left + f"{cols_name} →"]
    # column labels written downwards, one character per line, like the notes' Q_1 … Q_8
    depth = max(len(x) for x in labels)
    for d in range(depth):
        row = "".join((x[d] if d < len(x) else " ") + "  " for x in labels)
        lines.append(" " * left + row.rstrip())
    lines.append(f"{rows_name} ↓".ljust(left) + "─" * (3 * shown))
    for r in range(shown):
        out = []
        for c in range(shown):
            if hide[r, c]:
                out.append(HIDDEN + " ")
                continue
            w = float(cells[r, c])
            block = SHADES[_shade(w)]
            if color and w >= 0.005:
                level = 255 - min(23, int(w * 23))  # the grey ramp, darker = heavier
                block = f"\x1b[48;5;{level}m{block}\x1b[0m"
            out.append(block + " ")
        lines.append(labels[r].ljust(left) + "".join(out).rstrip())
    legend = "shading: ░░ <0.1  ▒▒ <0.3  ▓▓ <0.6  ██ >=0.6"
    if causal:
        legend += f"   {HIDDEN} hidden by the causal mask"
    lines.append(legend)
    if shown < n:
        lines.append(f"(showing the first {shown} of {n} tokens; the pictures show all of them)")
    return "\n".join(lines)


def best_keys_lines(pattern: torch.Tensor, tokens: Sequence[str]) -> list[str]:
    """For each query, the key that answers it best: ``query  ← key (weight)``.

    pattern ``(S, S)`` ``[query, key]``.
    """
    lines = []
    width = max(len(_label(t)) for t in tokens)
    for i, token in enumerate(tokens):
        w, j = torch.max(pattern[i].float(), dim=0)
        lines.append(f"  {_label(token).ljust(width)}  ← {_label(tokens[int(j)])} ({float(w):.2f})")
    return lines
