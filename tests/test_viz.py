"""dense.viz: figures built offscreen (Agg), with the panels, titles and legend entries asked for."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_rgb
from matplotlib.figure import Figure

from dense import viz


def test_heatmaps_one_panel_per_query(tmp_path):
    rgb = random_rgb(30, 50)
    scores = np.random.default_rng(0).random((2, 30, 50)).astype(np.float32)
    fig = viz.heatmaps(rgb, scores, ["red circle", "blue star"])
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "image" and titles[1].startswith("red circle") and titles[2].startswith("blue star")
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(ValueError, match="upsample"):
        viz.heatmaps(rgb, scores[:, :10], ["a", "b"])
    assert isinstance(viz.heatmap(rgb, scores[0], title="x"), Figure)


def test_label_map_legend_lists_present_classes():
    rgb = random_rgb(20, 20)
    labels = np.zeros((20, 20), np.int32)
    labels[:10, :10] = 2
    fig = viz.label_map(rgb, labels, ["red circle", "blue star", "green square"])
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["background", "blue star"]
    with pytest.raises(ValueError, match="outside"):
        viz.label_map(rgb, labels + 5, ["a"])


def test_boxes_and_points():
    fig = viz.boxes(random_rgb(40, 60), [[1, 2, 30, 20], [10, 10, 50, 35]], ["a", "b"], points_xy=[[5, 5], [20, 20]])
    ax = fig.axes[0]
    assert len(ax.patches) == 2 and [t.get_text() for t in ax.texts] == ["a", "b"]
