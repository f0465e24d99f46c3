"""dense demo, as a user sees it: fresh data when the parameters change, one figure per photo, left-out photos said,
and a page and terminal table that explain their figures."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dense import demo


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _read_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def test_output_names_are_unique():
    paths = [Path("cat.png"), Path("cat.jpg"), Path("dog.png"), Path("my photo.png"), Path("my-photo.png")]
    names = demo._output_names(paths)
    assert len(set(names)) == len(names)
    assert names[:3] == ["cat_png", "cat_jpg", "dog"]
    assert all(" " not in n for n in names)


def test_synthetic_data_is_redrawn_when_its_parameters_change(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    demo._synthetic_data(data, cache, n_images=8, seed=0)
    first = json.loads((data / "annotations.json").read_text())
    assert len(first["images"]) == 8
    marker = data / "annotations.json"
    stamp = marker.stat().st_mtime_ns
    demo._synthetic_data(data, cache, n_images=8, seed=0)  # same parameters: reused
    assert marker.stat().st_mtime_ns == stamp
    cache.mkdir()
    (cache / "stale.safetensors").write_text("features of the old images")
    demo._synthetic_data(data, cache, n_images=5, seed=3)  # different: drawn again, old features dropped
    again = json.loads((data / "annotations.json").read_text())
    assert len(again["images"]) == 5 and not (cache / "stale.safetensors").exists()
    assert json.loads((data / "demo_params.json").read_text()) == {"n_images": 5, "seed": 3}
    (data / "demo_params.json").unlink()  # an earlier version's data (no stamp): drawn again
    demo._synthetic_data(data, cache, n_images=5, seed=3)
    assert (data / "demo_params.json").exists()


def test_format_summary_has_a_header_percentages_and_counts():
    text = demo.format_summary({"images": 40, "seed": 3, "model": "shapes-tiny", "probe_test_mIoU": 0.426,
                                "probe_test_pixel_acc": 0.963, "probe_test_images": 6, "refer_acc@0.5": 0.205,
                                "refer_pointing": 0.41, "refer_expressions": 39})
    lines = text.splitlines()
    assert "40 synthetic images" in lines[0] and "seed 3" in lines[0]
    assert "figure" in lines[1] and "value" in lines[1]
    assert "42.6 %" in text and "20.5 %" in text and "39 test expressions" in text and "6 test images" in text
    photos = demo.format_summary({"images": 2, "photos_found": 5, "left_out": ["c.png", "d.png", "e.png"],
                                  "queries": ["a dog"], "model": "shapes-tiny"})
    assert "2 of 5 photos" in photos and "left out (3" in photos and "16 colour+shape" in photos


@pytest.mark.parametrize("hw", [(1500, 200), (200, 1500), (683, 1024), (64, 64)])
def test_referring_figures_are_not_scaled_down_on_the_page(hw, tmp_path):
    """The page shows figures at most IMAGE_MAX_H_PX tall and 1200 px wide: a referring figure saved as the demo
    saves it fits both, so its 11 pt labels reach the reader at their full 14 px, even for a tall strip."""
    from conftest import random_rgb

    from dense import viz

    H, W = hw
    rgb = random_rgb(H, W)
    boxes = np.array([[0.1 * W, 0.1 * H, 0.5 * W, 0.4 * H], [0.5 * W, 0.6 * H, 0.9 * W, 0.9 * H]])
    fig = viz.boxes(rgb, boxes, ["the red circle at the top", "the blue square on the right"],
                    points_xy=boxes[:, :2] + 2, gt_boxes_xyxy=boxes, scores=[0.9, 0.05], found=[True, False],
                    found_threshold=0.09)
    demo._save(fig, tmp_path / "refer.png")
    w_px, h_px = Image.open(tmp_path / "refer.png").size
    assert h_px <= demo.IMAGE_MAX_H_PX and w_px <= 1200, (w_px, h_px)
    label_px = min(t.get_fontsize() for t in fig.axes[0].texts) * demo.FIGURE_DPI / 72
    assert label_px >= 13


@pytest.mark.slow
def test_photo_demo_names_every_photo_and_says_what_it_left_out(tmp_path, one_thread):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("cat.png", (64, 48)), ("cat.jpg", (40, 80)), ("zebra.png", (32, 32))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(photos / name)
    out = tmp_path / "out"
    summary = demo.run_demo(out, images=photos, queries=["red circle", "blue star"], max_images=2, progress=False)
    assert summary["images"] == 2 and summary["left_out"] == ["zebra.png"]
    page = _read_page(out / "index.html")
    assert len(page.srcs) == len(set(page.srcs)) == 2 * 4  # pca, heatmap, segment, refer for each of 2 photos
    assert {"pca_cat_jpg.png", "pca_cat_png.png"} <= set(page.srcs)
    text = " ".join(page.text)
    assert "zebra.png" in text and "left out" in text and "--max-images" in text
    assert "16 phrases" in text  # the bundled model's vocabulary, said on the page
    with pytest.raises(ValueError, match="max_images"):
        demo.run_demo(out, images=photos, queries=["a"], max_images=0)


@pytest.mark.slow
def test_synthetic_page_explains_its_figures(tmp_path, one_thread):
    out = tmp_path / "demo"
    summary = demo.run_demo(out, n_images=24, seed=1, max_images=1, progress=False)
    assert summary["images"] == 24 and summary["seed"] == 1
    page = _read_page(out / "index.html")
    text = " ".join(page.text)
    for term in ("mIoU", "Acc@0.5", "pointing game"):
        assert term in text
    assert "intersection-over-union" in text and "IoU >= 0.5" in text and "inside the referred object" in text
    assert "16 phrases" in text and "%" in text
    assert {Path(s).name.split("_")[0] for s in page.srcs} == {"pca", "heatmap", "probe", "refer"}
    assert "not found" in text and "found threshold" in text and "colour bar shows exactly" in text
    assert f"max-height:{demo.IMAGE_MAX_H_PX}px" in (out / "index.html").read_text()
    # a second run with other parameters in the same folder draws a new world
    demo.run_demo(out, n_images=20, seed=2, max_images=1, progress=False)
    assert len(json.loads((out / "data" / "annotations.json").read_text())["images"]) == 20


def test_photo_demo_reports_an_unreadable_photo_and_goes_on(tmp_path, one_thread):
    """A broken file among the photos gets an error card naming it; the other photos get every figure, and the page
    is written (the explorer does the same with files it cannot read)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a_broken.jpg").write_bytes(b"not a jpeg at all")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photos / "b.png")
    out = tmp_path / "out"
    summary = demo.run_demo(out, images=photos, queries=["red circle"], max_images=2, progress=False)
    assert summary["images"] == 1 and list(summary["unreadable"]) == ["a_broken.jpg"]
    assert str(photos / "a_broken.jpg") in summary["unreadable"]["a_broken.jpg"]
    page = _read_page(out / "index.html")
    assert sorted(page.srcs) == ["heatmap_b.png", "pca_b.png", "refer_b.png", "segment_b.png"]
    assert "a_broken.jpg" in " ".join(page.text) and "could not be read" in " ".join(page.text)
    assert f"unreadable, left out: {photos / 'a_broken.jpg'}" in demo.format_summary(summary)
