"""The synthetic shapes world: COCO files that pycocotools reads, masks equal to the drawn pixels, unambiguous refs."""

from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from dense.datasets import (
    CATEGORIES,
    COLOURS,
    POSITION_WORDS,
    REF_WORDS,
    SHAPES,
    SIZE_WORDS,
    Shape,
    make_shapes,
    render_scene,
    resolve_expression,
    sample_objects,
)

N = 40


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    summary = make_shapes(out, N, seed=3, write_labels=True)
    coco = COCO(str(out / "annotations.json"))
    refs = json.loads((out / "refs.json").read_text())
    return out, summary, coco, refs


def test_summary_and_categories(world):
    out, summary, coco, refs = world
    assert summary["images"] == N == len(coco.imgs)
    assert summary["refs"] == len(refs) > N
    assert len(coco.cats) == len(COLOURS) * len(SHAPES) >= 16
    names = {c["name"] for c in coco.cats.values()}
    assert {"red circle", "green square", "blue triangle", "yellow star"} <= names
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(i["file_name"] for i in coco.imgs.values())


def test_masks_equal_drawn_label_image(world):
    out, _, coco, _ = world
    for img_id, info in coco.imgs.items():
        label = cv2.imread(str(out / "labels" / info["file_name"]), cv2.IMREAD_UNCHANGED)  # [H, W] uint8
        image = cv2.imread(str(out / "images" / info["file_name"]))
        assert label.shape == image.shape[:2] == (info["height"], info["width"])
        anns = [a for a in coco.dataset["annotations"] if a["image_id"] == img_id]
        assert 1 <= len([a for a in anns if not a["iscrowd"]]) <= 4
        assert label.max() == len(anns)
        for k, a in enumerate(anns):
            m = coco.annToMask(a).astype(bool)
            np.testing.assert_array_equal(m, label == k + 1, err_msg=f"annotation {a['id']}")
            assert a["area"] == m.sum()
            np.testing.assert_allclose(a["bbox"], mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m, np.uint8))))


def test_object_pixels_have_their_colour(world):
    """Independent of the label files: the pixels under a mask are drawn in the category's colour."""
    out, _, coco, _ = world
    palette = np.asarray(list(COLOURS.values()), float)  # [4, 3] RGB
    for a in coco.dataset["annotations"]:
        info = coco.imgs[a["image_id"]]
        rgb = cv2.imread(str(out / "images" / info["file_name"]))[:, :, ::-1].astype(float)
        m = coco.annToMask(a).astype(bool)
        mean = rgb[m].mean(0)
        colour = CATEGORIES[a["category_id"] - 1]["colour"]
        assert list(COLOURS)[np.argmin(((palette - mean) ** 2).sum(1))] == colour
        # every single pixel, not just the mean: noise and jitter stay well inside the colour's neighbourhood
        assert (np.abs(rgb[m] - np.asarray(COLOURS[colour])).max(1) < 75).all(), a["id"]


def test_segmentation_kinds_and_crowds_present(world):
    _, _, coco, _ = world
    kinds = Counter()
    for a in coco.dataset["annotations"]:
        seg = a["segmentation"]
        if isinstance(seg, list):
            kinds["polygon"] += 1
            assert not a["iscrowd"]
        elif isinstance(seg["counts"], str):
            kinds["rle_compressed"] += 1
        else:
            kinds["rle_uncompressed"] += 1
            assert sum(seg["counts"]) == seg["size"][0] * seg["size"][1]
        kinds["crowd"] += a["iscrowd"]
    assert kinds["polygon"] > kinds["rle_compressed"] > 0
    assert kinds["rle_uncompressed"] > 0 and kinds["crowd"] > 0


def test_sizes_aspects_and_splits(world):
    _, _, coco, refs = world
    hw = np.asarray([(i["height"], i["width"]) for i in coco.imgs.values()])
    assert hw.min() >= 96 and hw.max() <= 320
    aspect = hw.max(1) / hw.min(1)
    assert (aspect > 1.5).any() and (aspect == 1).any() and aspect.max() <= 3.01
    assert (hw[:, 0] > hw[:, 1]).any() and (hw[:, 0] < hw[:, 1]).any()
    splits = Counter(i["split"] for i in coco.imgs.values())
    assert set(splits) == {"train", "val", "test"} and splits["train"] > splits["val"]
    for r in refs:
        assert r["split"] == coco.imgs[r["image_id"]]["split"]


def test_every_expression_refers_to_exactly_one_annotation(world):
    _, _, coco, refs = world
    seen_words = set()
    for r in refs:
        info = coco.imgs[r["image_id"]]
        anns = [a for a in coco.dataset["annotations"] if a["image_id"] == r["image_id"]]
        target = coco.anns[r["ann_id"]]
        assert not target["iscrowd"] and target["category_id"] == r["category_id"]
        assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
        for s in r["sentences"]:
            assert s["tokens"] == s["sent"].split() and s["raw"] == s["sent"]
            seen_words.update(s["tokens"])
            hit = resolve_expression(s["tokens"], anns, (info["height"], info["width"]))
            assert [a["id"] for a in hit] == [target["id"]], s["sent"]
            if not set(s["tokens"]) & {*SIZE_WORDS, *POSITION_WORDS}:  # plain nouns: count matches by hand
                colour = next((t for t in s["tokens"] if t in COLOURS), None)
                shape = next((t for t in s["tokens"] if t in SHAPES), None)
                same = [
                    a
                    for a in anns
                    if colour in (None, CATEGORIES[a["category_id"] - 1]["colour"])
                    and shape in (None, CATEGORIES[a["category_id"] - 1]["shape"])
                ]
                assert same == [target], s["sent"]
    assert seen_words <= set(REF_WORDS)
    assert {"left", "small", "on", "the"} <= seen_words


def test_resolve_expression_by_hand():
    def ann(i, cat, x, y, area, crowd=0):
        return {"id": i, "category_id": cat, "bbox": [x - 5, y - 5, 10, 10], "area": area, "iscrowd": crowd}

    red_circle, blue_circle, red_star = 1, 9, 4
    anns = [ann(1, red_circle, 20, 50, 100), ann(2, blue_circle, 80, 50, 300), ann(3, red_star, 22, 90, 100)]
    hw = (100, 100)
    assert [a["id"] for a in resolve_expression("the circle on the left".split(), anns, hw)] == [1]
    assert [a["id"] for a in resolve_expression("the big circle".split(), anns, hw)] == [2]
    assert [a["id"] for a in resolve_expression("the red one at the top".split(), anns, hw)] == [1]
    assert len(resolve_expression("the red one on the left".split(), anns, hw)) == 0  # x 20 vs 22: too close
    assert len(resolve_expression("the red one".split(), anns, hw)) == 2
    crowd = [*anns, ann(4, red_star, 60, 10, 50, crowd=1)]
    assert len(resolve_expression("the star".split(), crowd, hw)) == 2


def test_same_seed_same_files_different_seed_different(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_shapes(a, 6, seed=11)
    make_shapes(b, 6, seed=11)
    make_shapes(c, 6, seed=12)
    for name in ("annotations.json", "refs.json", "images/000000.png", "images/000005.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "annotations.json").read_bytes() != (c / "annotations.json").read_bytes()


def test_render_scene_primitives():
    rng = np.random.default_rng(0)
    objs = sample_objects(rng, (64, 96), 3, min_visible=0.6)
    assert 1 <= len(objs) <= 3 and all(isinstance(o, Shape) for o in objs)
    image, masks = render_scene(rng, (64, 96), objs)
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8
    assert masks.shape == (len(objs), 64, 96) and masks.dtype == bool
    assert (masks.sum(0) <= 1).all() and masks.any((1, 2)).all()  # visible masks are disjoint and non-empty
    fixed = sample_objects(rng, (64, 64), 1, categories=[("yellow", "star")])
    assert fixed[0].category == "yellow star"
    with pytest.raises(ValueError, match="hexagon"):
        render_scene(rng, (32, 32), [Shape("hexagon", "red", (16, 16), 5)])
