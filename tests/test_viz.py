"""dense.viz: figures built offscreen (Agg) that show in Jupyter, with fixed scales, aspect-sized panels, named colours,
readable legends and labels that do not overprint."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_rgb
from matplotlib.figure import Figure

from dense import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _text_extents(fig):
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    return [t.get_window_extent(renderer) for ax in fig.axes for t in ax.texts]


def test_heatmaps_one_panel_per_query_and_show_in_jupyter(tmp_path):
    rgb = random_rgb(30, 50)
    scores = np.random.default_rng(0).random((2, 30, 50)).astype(np.float32)
    fig = viz.heatmaps(rgb, scores, ["red circle", "blue star"])
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "image" and titles[1].startswith("red circle") and titles[2].startswith("blue star")
    assert fig._repr_png_().startswith(PNG_MAGIC)  # what IPython shows inline, whatever the backend
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(ValueError, match="upsample"):
        viz.heatmaps(rgb, scores[:, :10], ["a", "b"])
    assert isinstance(viz.heatmap(rgb, scores[0], title="x"), Figure)


def test_heatmaps_use_a_fixed_probability_scale_with_a_colour_bar():
    rgb = random_rgb(30, 50)
    scores = np.zeros((2, 30, 50), np.float32)
    scores[0] += 0.9
    scores[1] += 0.001  # "a dog" on a cat photo: must not be drawn at the top of the scale
    fig = viz.heatmaps(rgb, scores, ["a cat", "a dog"])
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert bar.get_ylim() == (0.0, 1.0)
    assert bar.get_ylabel().startswith("probability")
    drawn = [ax.images[-1].get_array() for ax in fig.axes[1:3]]
    assert np.array_equal(drawn[0], viz.heat_overlay(rgb, scores[0]))  # one rendering rule
    assert np.abs(drawn[1].astype(int) - viz.heat_overlay(rgb, np.zeros((30, 50))).astype(int)).max() <= 1


def _coloured_scene():
    """A blue square (hot: p ~ 0.96) and a red circle (cold: p ~ 0.01) on white, as in the issue's photo."""
    H, W = 120, 200
    rgb = np.full((H, W, 3), 255, np.uint8)
    rgb[30:90, 20:80] = (20, 40, 220)  # blue square
    yy, xx = np.mgrid[:H, :W]
    circle = (yy - 60) ** 2 + (xx - 150) ** 2 < 30**2
    rgb[circle] = (220, 30, 30)  # red circle
    scores = np.full((H, W), 0.02, np.float32)
    scores[30:90, 20:80] = 0.96
    scores[circle] = 0.01
    return rgb, scores


def _rendered_rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)  # [rows, cols, 3], row 0 at the top


def _pixel_at(fig, pixels, ax, x, y) -> np.ndarray:
    """The rendered colour at data point (x, y) of ``ax`` (display y runs up, buffer rows run down)."""
    px, py = ax.transData.transform((x, y))
    return pixels[int(round(pixels.shape[0] - py)), int(round(px))]


def test_heatmap_pixels_tell_hot_from_cold_and_match_the_colour_bar():
    rgb, scores = _coloured_scene()
    fig = viz.heatmaps(rgb, scores[None], ["blue square"])
    pixels = _rendered_rgb(fig)
    panel = fig.axes[1]
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    hot = _pixel_at(fig, pixels, panel, 50, 60)  # inside the blue square
    cold = _pixel_at(fig, pixels, panel, 150, 60)  # inside the red circle
    assert np.linalg.norm(hot - cold) > 150  # not "the same purple"
    for value, drawn in ((0.96, hot), (0.01, cold)):
        on_bar = _pixel_at(fig, pixels, bar, 0.5, value)  # the colour bar, rendered, at that value
        assert np.linalg.norm(drawn - on_bar) < 30, (value, drawn, on_bar)
    # nothing of the objects' own colours survives where the map is cold: the base is grey
    assert np.ptp(cold) < 12 and np.ptp(_pixel_at(fig, pixels, panel, 110, 10)) < 12
    with pytest.raises(ValueError, match="image size"):
        viz.heat_overlay(rgb, scores[:, :10])
    with pytest.raises(ValueError, match="vmax"):
        viz.heat_overlay(rgb, scores, vmin=1.0, vmax=1.0)


@pytest.mark.parametrize("hw", [(100, 100), (40, 1000), (1000, 40)])
def test_four_query_rows_stay_bounded(hw):
    rgb = random_rgb(*hw)
    fig = viz.heatmaps(rgb, np.random.default_rng(0).random((4, *hw)), ["a", "b", "c", "d"])
    w, h = fig.get_size_inches()
    assert w <= viz.MAX_WIDTH_IN + 0.5 and h <= 4 * (viz.MAX_PANEL_H_IN + 1)


def test_panels_follow_the_image_aspect():
    # a tall image: panels narrow, not 4 in squares with blank sides
    rows, cols, w, h = viz.panel_layout(2, (300, 100))
    assert (rows, cols) == (1, 2) and h / w == pytest.approx(3.0, rel=0.05)
    # a 60x512 strip: stacked full-width panels, not a thin band on a square-ish canvas
    rows, cols, w, h = viz.panel_layout(2, (60, 512), extra_w=2.4)
    assert (rows, cols) == (2, 1) and w > 10 and w / h == pytest.approx(512 / 60, rel=0.05)
    fig = viz.label_map(random_rgb(60, 512), np.zeros((60, 512), int), ["a"])
    fw, fh = fig.get_size_inches()
    assert fw <= viz.MAX_WIDTH_IN + 0.5 and fw / fh > 2  # the figure is as wide as its strip, not 800x400 mostly blank
    pca_like = viz.panel_grid(2, (400, 100))[0].get_size_inches()
    assert pca_like[0] < pca_like[1]  # tall image, tall figure


def test_class_colours_follow_colour_words():
    names = ["green triangle", "blue triangle", "red star", "green circle", "a dog", "a cat"]
    c = dict(zip(names, viz.class_colours(names), strict=True))
    assert c["green triangle"][1] > max(c["green triangle"][0], c["green triangle"][2]) + 0.2
    assert c["blue triangle"][2] > max(c["blue triangle"][0], c["blue triangle"][1]) + 0.2
    assert c["red star"][0] > max(c["red star"][1], c["red star"][2]) + 0.3
    assert c["green circle"][1] > max(c["green circle"][0], c["green circle"][2])  # green, another shade
    assert np.abs(c["green circle"] - c["green triangle"]).sum() > 0.2
    assert np.abs(c["a dog"] - c["a cat"]).sum() > 0.2  # no colour word: distinct palette colours


def test_label_map_legend_lists_present_classes_with_named_colours():
    rgb = random_rgb(20, 20)
    labels = np.zeros((20, 20), np.int32)
    labels[:10, :10] = 2
    fig = viz.label_map(rgb, labels, ["red circle", "blue star", "green square"])
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["blue star", "background (unpainted)"]
    swatches = [np.array(h.get_facecolor()[:3]) for h in legend.legend_handles]
    assert swatches[0][2] > swatches[0][0] + 0.3  # "blue star" is blue
    assert all(s.sum() > 0.6 for s in swatches)  # no black "background" swatch
    assert all(t.get_fontsize() >= 10 for t in legend.get_texts())
    full = viz.label_map(rgb, np.full((20, 20), 3), ["red circle", "blue star", "green square"])
    assert [t.get_text() for t in full.legends[0].get_texts()] == ["green square"]  # no background shown, none listed
    with pytest.raises(ValueError, match="outside"):
        viz.label_map(rgb, labels + 5, ["a"])


def test_label_map_shows_ground_truth_beside_the_prediction():
    rgb = random_rgb(20, 30)
    pred = np.zeros((20, 30), np.int32)
    pred[:5] = 1
    gt = np.zeros((20, 30), np.int32)
    gt[10:] = 3
    gt[0, 0] = -1  # dense.labels.IGNORE: striped, with its own swatch
    fig = viz.label_map(rgb, pred, ["red circle", "blue star", "green square"], gt=gt)
    assert [ax.get_title() for ax in fig.axes] == ["image", "ground truth", "prediction"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["red circle", "green square",
                                                                  "background (unpainted)",
                                                                  "ignore / crowd (not scored)"]
    painted = fig.axes[1].images[0].get_array()
    assert painted[15, 15, 1] > painted[15, 15, 0] + 0.2  # the ground truth's green square is painted green


def test_ignore_regions_are_striped_and_have_their_own_legend_swatch():
    from dense.labels import IGNORE

    rgb = np.full((40, 40, 3), 128, np.uint8)
    gt = np.zeros((40, 40), np.int32)
    gt[:, 20:] = IGNORE  # a crowd region: not scored
    gt[:10, :10] = 1
    fig = viz.label_map(rgb, gt, ["red circle"], gt=gt)
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["red circle", "background (unpainted)", "ignore / crowd (not scored)"]
    ignore_swatch = legend.legend_handles[2]
    assert ignore_swatch.get_hatch() and legend.legend_handles[1].get_hatch() is None  # not the background's swatch
    painted = fig.axes[1].images[0].get_array()  # [H, W, 3] floats
    ignored, background = painted[:, 20:].reshape(-1, 3), painted[10:, :20].reshape(-1, 3)
    assert np.allclose(background, background[0])  # plain grey
    dark = np.all(np.isclose(ignored, viz.IGNORE_RGB), axis=1)
    assert 0.3 < dark.mean() < 0.7  # stripes: half dark, half the grey image
    # the legend swatch of a class is the colour its pixels are painted in (over the middle grey)
    red_swatch = np.array(legend.legend_handles[0].get_facecolor()[:3])
    assert np.abs(painted[5, 5] - red_swatch).max() < 0.06


def test_classes_sharing_a_colour_word_get_clearly_distinct_colours():
    import itertools

    from dense.datasets import CATEGORIES

    names = [c["name"] for c in CATEGORIES]  # 4 colours x 4 shapes: "red circle", "red square", ...
    colours = dict(zip(names, viz.class_colours(names), strict=True))
    painted = dict(zip(names, viz.label_swatches(viz.class_colours(names), alpha=0.85)[0], strict=True))
    for a, b in itertools.combinations(names, 2):
        same_word = a.split()[0] == b.split()[0]
        assert np.linalg.norm(colours[a] - colours[b]) > (0.3 if same_word else 0.2), (a, b)
        assert np.linalg.norm(painted[a] - painted[b]) > (0.25 if same_word else 0.15), (a, b)
    for name in names:  # each keeps its colour word's hue: reds are red, blues blue
        r, g, b = colours[name]
        word = name.split()[0]
        assert {"red": r > max(g, b), "green": g > max(r, b), "blue": b > max(r, g),
                "yellow": min(r, g) > b}[word], name


def test_boxes_and_points():
    fig = viz.boxes(random_rgb(40, 60), [[1, 2, 30, 20], [10, 10, 50, 35]], ["a long label", "another label"],
                    points_xy=[[5, 5], [20, 20]])
    ax = fig.axes[0]
    assert len(ax.patches) == 2 and [t.get_text() for t in _labels(ax)] == ["a long label", "another label"]


def _labels(ax):
    return [t for t in ax.texts if t.get_gid() == "dense-label"]


def _drawn_label_extents(fig, ax):
    """What the reader sees: each label's text and its coloured box, after a real draw."""
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [Bbox.union([t.get_window_extent(renderer), t.get_bbox_patch().get_window_extent(renderer)])
            for t in _labels(ax)]


def _drawn_marker_extents(fig, ax):
    """Each star marker's extent, from the scatter's points and its marker size (not from dense.viz's helpers)."""
    from matplotlib.transforms import Bbox

    out = []
    for coll in ax.collections:
        half = np.sqrt(coll.get_sizes()[0]) / 2 * fig.dpi / 72
        for x, y in ax.transData.transform(coll.get_offsets()):
            out.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
    return out


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _assert_labels_readable(fig, ax):
    labels = _drawn_label_extents(fig, ax)
    markers = _drawn_marker_extents(fig, ax)
    inside = ax.get_window_extent(fig.canvas.get_renderer())
    texts = [t.get_text() for t in _labels(ax)]
    for i, a in enumerate(labels):
        assert inside.x0 - 0.5 <= a.x0 and a.x1 <= inside.x1 + 0.5, texts[i]  # inside the panel
        assert inside.y0 - 0.5 <= a.y0 and a.y1 <= inside.y1 + 0.5, texts[i]
        for j in range(i + 1, len(labels)):
            assert not _overlap(a, labels[j]), (texts[i], texts[j])
        for m in markers:
            assert not _overlap(a, m), texts[i]
    assert all(t.get_fontsize() >= 10 for t in _labels(ax))


def test_many_labels_on_one_box_at_the_right_edge_stay_inside_and_apart():
    rgb = np.full((300, 400, 3), 200, np.uint8)
    labels = ["the red circle", "the big red circle on the right", "a red one", "the circle at the top",
              "the red circle on the left", "one red circle", "the small red circle", "the red square"]
    n = len(labels)
    box = [300, 120, 395, 200]  # its labels would run off the right edge if left-aligned at the box
    fig = viz.boxes(rgb, [box] * n, labels, points_xy=[[350, 160]] * n, scores=np.linspace(0.2, 0.9, n))
    ax = fig.axes[0]
    assert len(_labels(ax)) == n and all(f"({v:.2f})" in t.get_text()
                                         for v, t in zip(np.linspace(0.2, 0.9, n), _labels(ax), strict=True))
    _assert_labels_readable(fig, ax)


def test_labels_on_a_tall_strip_become_numbered_tags_with_a_key():
    fig = viz.boxes(random_rgb(1500, 200), [[10, 100, 190, 400], [20, 900, 180, 1200]],
                    ["the red circle at the top", "the blue square"], points_xy=[[100, 250], [100, 1000]],
                    scores=[0.8, 0.6])
    ax = fig.axes[0]
    assert [t.get_text() for t in _labels(ax)] == ["1", "2"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["1  the red circle at the top (0.80)",
                                                                  "2  the blue square (0.60)"]
    _assert_labels_readable(fig, ax)


def test_boxes_mark_hits_against_ground_truth_and_labels_do_not_overprint():
    rgb = random_rgb(120, 200)
    pred = np.array([[20, 20, 90, 80], [21, 21, 91, 81], [22, 22, 92, 82], [120, 40, 190, 110]])
    gt = np.array([[20, 20, 90, 80], [100, 60, 150, 110], [22, 22, 92, 82], [120, 40, 190, 110]])
    labels = ["the green triangle on the left", "the big red circle", "a red circle", "one yellow star"]
    fig = viz.boxes(rgb, pred, labels, points_xy=pred[:, :2] + 10, gt_boxes_xyxy=gt)
    ax = fig.axes[0]
    assert len(ax.patches) == 8  # a predicted and a ground-truth box each
    texts = [t.get_text() for t in _labels(ax)]
    assert ": hit" in texts[0] and ": miss" in texts[1] and ": hit" in texts[3]
    assert ax.get_title().startswith("3/4 hits")
    _assert_labels_readable(fig, ax)
    red = np.array(ax.patches[3].get_edgecolor()[:3])  # "the big red circle"'s predicted box
    assert red[0] > red[1] + 0.3 and red[0] > red[2] + 0.3


def test_a_not_found_answer_draws_no_box_and_a_note():
    rgb = random_rgb(120, 200)
    pred = np.array([[20, 20, 90, 80], [100, 30, 190, 110]])
    gt = np.array([[20, 20, 90, 80], [100, 30, 190, 110]])
    fig = viz.boxes(rgb, pred, ["the red circle", "the yellow triangle"], points_xy=[[50, 50], [150, 70]],
                    scores=[0.93, 0.01], found=[True, False], found_threshold=0.09, gt_boxes_xyxy=gt)
    ax = fig.axes[0]
    drawn = [p for p in ax.patches if p.get_gid() == "dense-box"]
    assert len(drawn) == 1 and tuple(drawn[0].get_xy()) == (20.0, 20.0)  # the found one only
    assert [t.get_text() for t in _labels(ax)] == ["the red circle (0.93): hit (IoU 1.00)"]
    assert len(ax.collections[0].get_offsets()) == 1  # no point for the answer that is not there
    note = " ".join(fig._supxlabel.get_text().split())
    assert "not found" in note and "0.09" in note and "the yellow triangle (0.01)" in note
    assert ax.get_title().startswith("1/2 hits")  # not found, though it is there: a miss


def test_pca_panels_follow_the_image(tiny_encoder, one_thread):
    rgb = random_rgb(160, 40)
    fig = viz.pca(tiny_encoder.extract(rgb), rgb)
    w, h = fig.get_size_inches()
    assert h > 1.5 * w and [ax.get_title() for ax in fig.axes] == ["image", "PCA of tokens"]
