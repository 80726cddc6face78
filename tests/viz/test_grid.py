"""Pictures and the terminal grid, checked through the data behind them on a known tiny head."""

import math

import matplotlib.image
import numpy as np
import pytest
import torch

from attnkit.viz.grid import grid_figure, heads_figure
from attnkit.viz.layout import cell_text, hidden_cells
from attnkit.viz.terminal import HIDDEN, best_keys_lines, terminal_grid

TOKENS = ["fluffy", "blue", "creature"]


def tiny_causal_head() -> torch.Tensor:
    """A causal head of dimension 1, every weight easy to check by hand; ``[query, key]``."""
    q = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)  # query of each position
    k = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)  # key of each position
    scores = q[:, None] * k[None, :]  # (Sq, Sk) [query, key]
    scores = scores.masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), -math.inf)
    return torch.softmax(scores, dim=-1).float()


def test_notes_layout_keys_rows_queries_columns():
    p = tiny_causal_head()
    fig = grid_figure(p, TOKENS, causal=True, title="tiny · layer 0 · head 0")
    ax = fig.axes[0]
    drawn = np.asarray(ax.images[0].get_array())
    assert drawn.shape == (3, 3)  # keys x queries
    # row = key, column = query: query "blue" (q=1) scores key "fluffy" (k=1) 1 and itself 0
    assert drawn[0, 1] == pytest.approx(math.e / (math.e + 1))
    assert drawn[0, 0] == pytest.approx(1.0) and drawn[1, 0] == 0.0
    np.testing.assert_allclose(drawn.sum(axis=0), 1.0, atol=1e-6)  # each column sums to one
    assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS
    assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS
    assert ax.get_xlabel() == "queries" and ax.get_ylabel() == "keys"
    assert ax.xaxis.get_label_position() == "top"
    assert fig._suptitle.get_text() == "tiny · layer 0 · head 0"
    # the masked cells: lower-left triangle (key after the query), drawn grey on top
    overlay = ax.images[1].get_array()
    np.testing.assert_array_equal(~np.ma.getmaskarray(overlay), np.tril(np.ones((3, 3)), -1) > 0)


def test_cell_text():
    p = torch.tensor([[1.0, 0.0], [0.998, 0.002]])
    texts = [t.get_text() for t in grid_figure(p, ["x", "y"]).axes[0].texts]
    assert texts == ["1", "1"]  # weights under 0.005 are left blank
    assert cell_text(0.4249) == ".42" and cell_text(0.994) == ".99"


def test_rectangular_and_query_key_orientation():
    p = torch.softmax(torch.randn(2, 5), dim=-1)  # 2 queries over 5 keys
    keys = ["k0", "k1", "k2", "k3", "k4"]
    notes = grid_figure(p, ["q0", "q1"], key_tokens=keys, causal=True)
    assert np.asarray(notes.axes[0].images[0].get_array()).shape == (5, 2)
    qk = grid_figure(p, ["q0", "q1"], key_tokens=keys, orientation="query-key")
    ax = qk.axes[0]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), p.numpy())
    assert ax.get_xlabel() == "keys" and ax.get_ylabel() == "queries"
    assert [t.get_text() for t in ax.get_xticklabels()] == keys
    # bottom-right alignment: query 0 sees keys 0..3, query 1 sees all five
    assert hidden_cells(2, 5, True).tolist() == [[False] * 4 + [True], [False] * 5]


def test_png_is_written_and_not_blank(tmp_path):
    fig = grid_figure(tiny_causal_head(), TOKENS, causal=True, title="t")
    fig.savefig(tmp_path / "grid.png")
    fig.savefig(tmp_path / "grid.svg")
    pixels = matplotlib.image.imread(tmp_path / "grid.png")
    assert pixels.ndim == 3 and pixels.std() > 0.05
    assert "<svg" in (tmp_path / "grid.svg").read_text()[:500]


def test_contact_sheet_has_every_head():
    patterns = torch.softmax(torch.randn(2, 3, 4, 4), dim=-1)  # (L, H, S, S)
    fig = heads_figure(patterns, causal=True, title="m", chosen=(1, 2))
    assert len(fig.axes) == 6
    first = fig.axes[3 * 1 + 2]  # layer 1, head 2, framed
    np.testing.assert_allclose(np.ma.filled(first.images[0].get_array(), 0.0)[0],
                               patterns[1, 2, :, 0].numpy(), atol=1e-6)  # row 0 = key 0
    assert first.spines["top"].get_edgecolor()[:3] == (1.0, 0.0, 0.0)


def test_bad_inputs_name_the_problem():
    p = tiny_causal_head()
    with pytest.raises(ValueError, match="orientation must be one of notes, query-key"):
        grid_figure(p, TOKENS, orientation="sideways")
    with pytest.raises(ValueError, match="3 queries x 3 keys but got 2 query tokens"):
        grid_figure(p, TOKENS[:2])
    with pytest.raises(ValueError, match=r"pattern must be 2-D \[query, key\]"):
        grid_figure(p[None], TOKENS)


def test_terminal_grid_layout():
    p = tiny_causal_head()
    text = terminal_grid(p, TOKENS, causal=True)
    lines = text.splitlines()
    assert lines[0].strip() == "queries →"
    assert any(line.startswith("keys ↓") for line in lines)
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in TOKENS}
    # key "creature" (row) is hidden from the queries "fluffy" and "blue": lower-left triangle
    assert rows["creature"].count(HIDDEN) == 2 and rows["fluffy"].count(HIDDEN) == 0
    assert rows["fluffy"].split()[1] == "██"  # query "fluffy" can only see itself: weight 1
    best = best_keys_lines(p, TOKENS)
    assert best[0].split() == ["fluffy", "←", "fluffy", "(1.00)"]
    assert best[2].split()[2] == "creature"  # q=2 k=3 score 6 beats the others
    qk = terminal_grid(p, TOKENS, causal=True, orientation="query-key")
    assert qk.splitlines()[0].strip() == "keys →"
