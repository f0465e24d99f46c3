"""dense.eval.zeroshot: zero-shot classification and the pointing game, against the rules written out here."""

from __future__ import annotations

import numpy as np
import pytest

from dense.datasets import CATEGORIES, make_shapes, render_scene, sample_objects
from dense.eval.data import open_data
from dense.eval.settings import Bootstrap, Extraction
from dense.eval.zeroshot import evaluate_pointing, evaluate_zero_shot, peak_point_xy


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(7)
    out = []
    for _ in range(5):
        objs = sample_objects(rng, (80, 120), 3)
        img, masks = render_scene(rng, (80, 120), objs)
        cats = [o.category for o in objs]
        out.append((img, [(cats[k], masks[k]) for k, c in enumerate(cats) if cats.count(c) == 1]))
    return out


def test_pointing_is_the_peak_patch_centre_on_the_mask(tiny_encoder, scenes, one_thread):
    from dense.heatmap import patch_scores

    res = evaluate_pointing(tiny_encoder, scenes, methods=["raw", "map-value"], templates=("{}",),
                            extraction=Extraction(max_patches=48, batch_size=2), bootstrap=Bootstrap(resamples=20))
    for m in ("raw", "map-value"):
        want = []
        for img, queries in scenes:
            fmap = tiny_encoder.extract(img, max_patches=48, layers=(-2, -1))
            scores = patch_scores(tiny_encoder, fmap, [q for q, _ in queries], method=m, templates=("{}",))
            gw = scores.shape[-1]
            for t, (_, mask) in enumerate(queries):
                i, j = divmod(int(scores[t].argmax()), gw)  # the peak patch, its centre in image pixels
                x, y = fmap.grid_to_pixel_xy((i, j))
                want.append(float(mask[int(y), int(x)]))
        assert res.figures[f"{m}/pointing"] == pytest.approx(np.mean(want))
        lo, hi = res.intervals[f"{m}/pointing"]
        assert lo <= res.figures[f"{m}/pointing"] <= hi
    assert res.meta["queries"] == sum(len(q) for _, q in scenes)
    # the rule itself: a grid whose peak is patch (1, 2) points at that patch's centre
    fmap = tiny_encoder.extract(scenes[0][0], max_patches=48)
    grid = np.zeros(fmap.grid_hw)
    grid[1, 2] = 1.0
    assert np.allclose(peak_point_xy(grid, fmap), fmap.grid_to_pixel_xy((1, 2)))


def test_zero_shot_is_the_argmax_of_classify(tiny_encoder, one_thread, tmp_path):
    import dense

    rng = np.random.default_rng(3)
    names = [c["name"] for c in CATEGORIES]
    samples = []
    for c in (0, 5, 9, 12):
        cat = CATEGORIES[c]
        objs = sample_objects(rng, (64, 64), 1, categories=[(cat["colour"], cat["shape"])])
        samples.append((render_scene(rng, (64, 64), objs)[0], c))
    res = evaluate_zero_shot(tiny_encoder, samples, names, templates=("{}",), bootstrap=Bootstrap(resamples=20))
    probs = dense.classify(tiny_encoder, [s for s, _ in samples], names, templates=("{}",))
    assert res.figures["acc"] == pytest.approx(np.mean(probs.argmax(-1).numpy() == [c for _, c in samples]))
    with pytest.raises(ValueError, match="labels must index class_names"):
        evaluate_zero_shot(tiny_encoder, [(samples[0][0], 16)], names)
    # a COCO-style source: its single-category images, among its category names
    make_shapes(tmp_path / "w", 12, seed=8, size_range=(64, 96))
    data = open_data(ann=tmp_path / "w/annotations.json", images=tmp_path / "w/images")
    ds = data.dataset(None)
    single = [i for i in ds.ids() if len({a["category_id"] for a in ds.anns(i, crowd=False)}) == 1]
    res = evaluate_zero_shot(tiny_encoder, data, bootstrap=Bootstrap(resamples=20))
    assert res.meta["images"] == len(single) and res.meta["class_names"] == ds.class_names[1:]
    pointed = evaluate_pointing(tiny_encoder, data, split="val", methods=["raw"], bootstrap=Bootstrap(resamples=20))
    assert pointed.meta["images"] <= len(ds.ids("val")) and 0 <= pointed.figures["raw/pointing"] <= 1
