"""Pictures of attention statistics: each heat map draws its statistic, the distance profiles draw
the chosen heads' bins, and the defaults pick the most focused heads."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import attnkit
from attnkit.inspect.stats import AttentionStats
from attnkit.viz.stats import (
    HEATMAPS,
    distance_profile_figure,
    focused_heads,
    heatmap_figure,
    typical_distance_bin,
)


def made_up() -> AttentionStats:
    """2 layers x 3 heads with known sums (head (1, 2) saw no query)."""
    queries = torch.tensor([[10.0, 10.0, 10.0], [10.0, 10.0, 0.0]], dtype=torch.float64)
    entropy = torch.tensor([[5.0, 1.0, 20.0], [3.0, 9.0, 0.0]], dtype=torch.float64)
    distance = torch.zeros(2, 3, 3, dtype=torch.float64)
    distance[..., 0], distance[..., 1], distance[..., 2] = 2.0, 3.0, 5.0
    distance[1, 2] = 0
    return AttentionStats([0, 5], [0, 1, 2], queries=queries, entropy_sum=entropy,
                          sink_sum=entropy / 4, max_weight_sum=entropy / 2,
                          distance_sum=distance, sequences=3)


def test_each_heat_map_draws_its_statistic():
    stats = made_up()
    for name in HEATMAPS:
        fig = heatmap_figure(stats, name)
        assert isinstance(fig, Figure)
        drawn = np.asarray(fig.axes[0].images[0].get_array())
        expected = typical_distance_bin(stats) if name == "distance" else getattr(stats, name)
        np.testing.assert_allclose(drawn, expected.float().numpy())
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["0", "5"]
    assert typical_distance_bin(stats)[0, 0] == pytest.approx(0.3 * 1 + 0.5 * 2)


def test_distance_profiles_of_the_most_focused_heads():
    stats = made_up()
    assert focused_heads(stats, top=3) == [(0, 1), (5, 0), (0, 0)]  # lowest entropy first
    fig = distance_profile_figure(stats)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 5 + 1  # five heads saw queries, and their mean
    np.testing.assert_allclose(lines[0].get_ydata(), [0.2, 0.3, 0.5])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["0", "1", "2-3"]


def test_errors_name_the_choices():
    with pytest.raises(attnkit.AttnkitError, match="no heat map 'speed'; choose one of entropy"):
        heatmap_figure(made_up(), "speed")
    with pytest.raises(attnkit.AttnkitError, match="layer 3 head 0 is not in these statistics"):
        distance_profile_figure(made_up(), [(3, 0)])
