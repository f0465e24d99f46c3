"""dense.coco: masks, label maps, refs and segmentation folders against answers known by construction."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from dense.coco import IGNORE, box_xywh_to_xyxy, load_coco, load_refs
from dense.errors import AnnotationError

H, W = 20, 30


def _rect(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _uncompressed(m):
    flat = m.ravel(order="F")
    runs, v, n = [], 0, 0
    for px in flat:
        if px == v:
            n += 1
        else:
            runs.append(n)
            v, n = px, 1
    runs.append(n)
    return {"size": [H, W], "counts": [int(r) for r in runs]}


def _compressed(m):
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def coco_dict() -> dict:
    """Image 1: a polygon square (cat 7), an overlapping smaller RLE box (cat 3), a crowd region (cat 7).
    Image 2: nothing. Image 3 (split val): one uncompressed-RLE object."""
    big = dict(id=10, image_id=1, category_id=7, iscrowd=0, bbox=[2, 2, 10, 10],
               segmentation=[[2, 2, 12, 2, 12, 12, 2, 12]], area=100)
    small = dict(id=11, image_id=1, category_id=3, iscrowd=0, bbox=[8, 8, 6, 6],
                 segmentation=_compressed(_rect(8, 8, 14, 14)), area=36)
    crowd = dict(id=12, image_id=1, category_id=7, iscrowd=1, bbox=[20, 0, 10, 20],
                 segmentation=_uncompressed(_rect(20, 0, 30, 20)), area=200)
    other = dict(id=13, image_id=3, category_id=3, iscrowd=0, bbox=[0, 0, 5, 5],
                 segmentation=_uncompressed(_rect(0, 0, 5, 5)), area=25)
    return {
        "images": [dict(id=1, file_name="a.png", height=H, width=W, split="train"),
                   dict(id=2, file_name="b.png", height=H, width=W, split="train"),
                   dict(id=3, file_name="c.png", height=H, width=W, split="val")],
        "categories": [dict(id=7, name="square"), dict(id=3, name="dot")],
        "annotations": [big, small, crowd, other],
    }


def write(tmp_path, data, name="ann.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_masks_from_polygon_and_both_rles(tmp_path):
    ds = load_coco(write(tmp_path, coco_dict()), tmp_path)
    # pycocotools' polygon rasterization of the square [2, 12] covers pixels 2..11 inclusive
    np.testing.assert_array_equal(ds.mask(10), _rect(2, 2, 12, 12).astype(bool))
    np.testing.assert_array_equal(ds.mask(11), _rect(8, 8, 14, 14).astype(bool))
    np.testing.assert_array_equal(ds.mask(12), _rect(20, 0, 30, 20).astype(bool))
    np.testing.assert_array_equal(ds.box_xyxy(11), [8, 8, 14, 14])
    np.testing.assert_array_equal(box_xywh_to_xyxy([[1, 2, 3, 4]]), [[1, 2, 4, 6]])
    assert ds.image_path(1) == tmp_path / "a.png"
    assert ds.ids() == [1, 2, 3] and ds.ids("val") == [3]
    assert [a["id"] for a in ds.anns(1, crowd=False)] == [10, 11]


def test_label_map_contiguous_ids_crowd_and_overlap(tmp_path):
    ds = load_coco(write(tmp_path, coco_dict()))
    # categories sorted by COCO id: 3 -> 1 ("dot"), 7 -> 2 ("square")
    assert ds.class_names == ["background", "dot", "square"]
    assert ds.cat_to_label == {3: 1, 7: 2}
    want = np.zeros((H, W), np.int8)
    want[2:12, 2:12] = 2
    want[8:14, 8:14] = 1  # the smaller annotation wins where they overlap
    want[:, 20:] = IGNORE  # crowd
    np.testing.assert_array_equal(ds.label_map(1), want)
    np.testing.assert_array_equal(ds.label_map(2), np.zeros((H, W), np.int8))  # no annotations: background
    ds_ignore = load_coco(write(tmp_path, coco_dict()), overlap="ignore")
    want[8:12, 8:12] = IGNORE
    np.testing.assert_array_equal(ds_ignore.label_map(1), want)


def test_crowd_under_an_object_keeps_the_object(tmp_path):
    data = coco_dict()
    data["annotations"][2]["segmentation"] = _uncompressed(_rect(0, 0, 30, 20))  # crowd covers everything
    data["annotations"][2]["bbox"] = [0, 0, 30, 20]
    lab = load_coco(write(tmp_path, data)).label_map(1)
    assert lab[5, 5] == 2 and lab[10, 10] == 1 and lab[0, 0] == IGNORE and lab[15, 25] == IGNORE


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["annotations"][0].update(category_id=99), "category id 99"),
    (lambda d: d["annotations"][0].update(image_id=42), "image id not in"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]]), "needs >= 3"),
    (lambda d: d["annotations"][0].update(bbox=[25, 2, 10, 10]), "outside"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [H, W], "counts": [5, 5]}), "add up to 10"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [H, W + 1], "counts": [H * W]}), "RLE size"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [H, W], "counts": "zz~~"}), "malformed"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [H, W], "counts": "0"}), "add up to"),
])
def test_bad_annotations_name_their_ids(tmp_path, edit, words):
    data = coco_dict()
    edit(data)
    path = write(tmp_path, data)
    with pytest.raises(AnnotationError, match=words) as e:
        load_coco(path)
    assert "annotation id 10" in str(e.value) and str(path) in str(e.value)
    ds = load_coco(path, on_error="skip")
    assert len(ds.problems) == 1 and "annotation id 10" in ds.problems[0]
    assert 10 not in ds.coco.anns and 11 in ds.coco.anns


def test_not_a_coco_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_coco(p)
    with pytest.raises(AnnotationError, match="'images'"):
        load_coco(write(tmp_path, {"annotations": []}))


def _refs():
    return [
        dict(ref_id=5, ann_id=11, image_id=1, category_id=3, split="val",
             sentences=[{"sent_id": 0, "sent": "the dot"}, {"sent_id": 1, "sent": "the small one"}]),
        dict(ref_id=2, ann_id=10, image_id=1, split="train", sentences=["the big square"]),
    ]


def test_refs_json_and_pickle(tmp_path):
    ds = load_coco(write(tmp_path, coco_dict()))
    refs = load_refs(write(tmp_path, _refs(), "refs.json"), ds)
    assert [r.ref_id for r in refs] == [2, 5]
    assert refs[0].category_id == 7 and refs[0].sentences == ["the big square"]
    assert refs[1].sentences == ["the dot", "the small one"]
    np.testing.assert_array_equal(ds.box_xyxy(refs[1].ann_id), [8, 8, 14, 14])
    assert [r.ref_id for r in load_refs(tmp_path / "refs.json", ds, split="val")] == [5]
    pk = tmp_path / "refs(unc).p"
    pk.write_bytes(pickle.dumps(_refs(), protocol=2))
    assert load_refs(pk, ds) == refs


def test_refs_pickle_with_objects_is_refused(tmp_path):
    ds = load_coco(write(tmp_path, coco_dict()))
    pk = tmp_path / "evil.p"
    pk.write_bytes(pickle.dumps([{"ref_id": 1, "x": np.zeros(2)}]))
    with pytest.raises(AnnotationError, match="refusing"):
        load_refs(pk, ds)


@pytest.mark.parametrize("edit, words", [
    (dict(ann_id=999), "annotation id 999"),
    (dict(image_id=77), "image id 77"),
    (dict(image_id=3), "belongs to image 1"),
    (dict(category_id=7), "category 7"),
])
def test_bad_refs_name_the_ref_id(tmp_path, edit, words):
    ds = load_coco(write(tmp_path, coco_dict()))
    refs = _refs()
    refs[0].update(edit)
    path = write(tmp_path, refs, "refs.json")
    with pytest.raises(AnnotationError, match=words) as e:
        load_refs(path, ds)
    assert "ref_id 5" in str(e.value)
    assert [r.ref_id for r in load_refs(path, ds, on_error="skip")] == [2]
    assert "ref_id 5" in ds.problems[-1]


def test_input_not_mutated(tmp_path):
    data = coco_dict()
    before = copy.deepcopy(data)
    p = write(tmp_path, data)
    load_coco(p, on_error="skip")
    assert json.loads(p.read_text()) == before


def test_category_ids_to_2000_perfect_prediction_scores_one(tmp_path):
    """300 categories with ids up to 2000: label 255 is a class (v0.1 made it "ignore"), a perfect prediction is 1.0."""
    from dense.metrics import SegmentationMeter

    cat_ids = np.linspace(7, 2000, 300).astype(int).tolist()
    H, W = 30, 40
    data = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}], "annotations": [],
            "categories": [{"id": c, "name": f"cat{c}"} for c in cat_ids]}
    for k, c in enumerate(cat_ids):  # category k in row k // 40, column k % 40, one pixel each (the rest background)
        r, col = divmod(k, W)
        before = col * H + r  # column-major RLE: pixels before this one
        data["annotations"].append({"id": k + 1, "image_id": 1, "category_id": c, "iscrowd": 0,
                                    "segmentation": {"size": [H, W], "counts": [before, 1, H * W - before - 1]},
                                    "bbox": [col, r, 1, 1]})
    ds = load_coco(write(tmp_path, data))
    lab = ds.label_map(1)
    assert lab.dtype == np.int16 and lab.max() == 300 and (lab == IGNORE).sum() == 0
    assert ds.cat_to_label[cat_ids[254]] == 255 and (lab == 255).sum() == 1  # a class, not "ignore"
    meter = SegmentationMeter(ds.class_names)
    meter.update(lab.astype(np.int32), lab)
    assert meter.figures()["mIoU"] == 1.0
    assert IGNORE == -1
