"""How a pattern is laid out on the page, whatever draws it: orientation, hidden cells, labels.

Plain torch, no matplotlib: the terminal grid and the command line use it without the [viz] extra.
"""

from __future__ import annotations

import torch

from attnkit.errors import AttnkitError

__all__ = ["ORIENTATIONS", "check_orientation", "hidden_cells", "oriented", "cell_text"]

ORIENTATIONS = ("notes", "query-key")
"""notes: keys as rows, queries as columns (each column sums to 1); query-key: the transpose."""


def check_orientation(orientation: str) -> str:
    if orientation not in ORIENTATIONS:
        raise AttnkitError(f"orientation must be one of {', '.join(ORIENTATIONS)}; "
                           f"got {orientation!r}")
    return orientation


def cell_text(weight: float) -> str:
    """A weight written into its cell: ".42", or "1" for weights that round to one."""
    return "1" if weight >= 0.995 else f"{weight:.2f}"[1:]


def hidden_cells(n_queries: int, n_keys: int, causal: bool) -> torch.Tensor:
    """``(Sq, Sk)`` bool, ``[query, key]``: True where a causal model hides the key from the query.

    Causal is aligned bottom-right: query ``i`` sees keys ``j <= i + Sk - Sq``.
    """
    if not causal:
        return torch.zeros(n_queries, n_keys, dtype=torch.bool)
    i = torch.arange(n_queries)[:, None]
    j = torch.arange(n_keys)[None, :]
    return j > i + n_keys - n_queries


def oriented(pattern: torch.Tensor, orientation: str) -> torch.Tensor:
    """``[query, key]`` ``(Sq, Sk)`` → what is drawn: ``(Sk, Sq)`` for "notes", else as is."""
    data = pattern.detach().float().cpu()
    return data.T if check_orientation(orientation) == "notes" else data
