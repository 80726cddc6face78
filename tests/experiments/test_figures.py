"""The docs' Q/K picture: the points it draws are the head's real queries and keys."""

import torch

from attnkit.experiments.adjectives import generate, head_view, load_toy
from attnkit.experiments.figures import qk_points, qk_projection_figure


def test_qk_points_are_the_heads_queries_and_keys():
    model, tokenizer = load_toy()
    sentences = generate(5, seed=3, held_out=True)
    view = head_view(model, tokenizer, sentences)
    first = qk_points(view, 1)
    assert first["noun query"].shape == (5, model.config.d_key)
    n_own = sum(len(s.adjectives_of[s.nouns[0]]) for s in sentences)
    assert first["key of its own adjective"].shape[0] == n_own
    assert "key of the other noun's adjective" not in first  # noun 1 sees no other adjectives
    second = qk_points(view, 2)
    assert second["key of the other noun's adjective"].shape[0] == n_own
    s0 = sentences[0]
    E = model.embed(tokenizer(s0.text, return_tensors="pt")["input_ids"])  # (1, S, d_model)
    q = E[0, s0.nouns[0]] @ model.attention.W_Q  # the notes: Q = E · W_Q
    torch.testing.assert_close(first["noun query"][0], q.detach())


def test_projection_figure_draws_two_panels():
    model, tokenizer = load_toy()
    fig = qk_projection_figure(head_view(model, tokenizer, generate(20, seed=4, held_out=True)))
    assert len([ax for ax in fig.axes if ax.collections]) == 2
