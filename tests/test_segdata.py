"""dense.segdata: the standard layouts on small fixtures built here; label values known by construction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dense.coco import AnnotationError
from dense.labels import IGNORE
from dense.metrics import SegmentationMeter
from dense.segdata import (
    COCO_STUFF_UNUSED,
    PROTOCOLS,
    READERS,
    holdout_ids,
    load_dataset,
    with_holdout,
)

REPO = Path(__file__).resolve().parents[1]


def _img(path: Path, hw=(6, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*hw, 3), np.uint8)).save(path)


def _png(path: Path, arr: np.ndarray, palette: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype == np.uint16:
        Image.fromarray(arr).save(path)  # 16-bit grey
    else:
        im = Image.fromarray(arr.astype(np.uint8), mode="P" if palette else "L")
        if palette:
            im.putpalette([v for k in range(256) for v in (k, 255 - k, (7 * k) % 256)])  # colours != indices
        im.save(path)


def _lists(folder: Path, splits: dict[str, list[str]]):
    folder.mkdir(parents=True, exist_ok=True)
    for s, ids in splits.items():
        (folder / f"{s}.txt").write_text("".join(f"{i}\n" for i in ids))


def test_voc_palette_boundary_is_ignore(tmp_path):
    stored = np.zeros((6, 8), np.uint8)
    stored[1:3, 1:4] = 15  # person
    stored[0, :] = 255  # boundary
    _png(tmp_path / "SegmentationClass" / "2007_000001.png", stored, palette=True)
    _img(tmp_path / "JPEGImages" / "2007_000001.jpg")
    _lists(tmp_path / "ImageSets" / "Segmentation", {"train": ["2007_000001"], "val": []})
    ds = load_dataset("voc", tmp_path)
    assert ds.ids("train") == ["2007_000001"] and ds.class_names[15] == "person" and len(ds.class_names) == 21
    lab = ds.label_map("2007_000001")
    want = stored.astype(np.int64)
    want[0, :] = IGNORE
    np.testing.assert_array_equal(lab, want)
    assert lab.dtype == np.int8 and IGNORE == -1
    assert ds.image_path("2007_000001").suffix == ".jpg"
    stored[2, 2] = 40  # not a VOC class: the error names the file
    _png(tmp_path / "SegmentationClass" / "2007_000001.png", stored, palette=True)
    with pytest.raises(AnnotationError, match=r"2007_000001\.png.*\[40\]"):
        ds.label_map("2007_000001")


def test_ade20k_reduce_zero_label(tmp_path):
    stored = np.array([[0, 1, 2], [150, 0, 1]], np.uint8)
    _png(tmp_path / "annotations" / "training" / "ADE_train_1.png", stored)
    _png(tmp_path / "annotations" / "validation" / "ADE_val_1.png", stored)
    ds = load_dataset("ade20k", tmp_path)
    assert len(ds.class_names) == 150 and ds.class_names[0] == "wall" and ds.class_names[149] == "flag"
    assert ds.ids("training") == ["ADE_train_1"] and ds.ids("validation") == ["ADE_val_1"]
    np.testing.assert_array_equal(ds.label_map("ADE_train_1"), [[-1, 0, 1], [149, -1, 0]])
    with pytest.raises(KeyError, match="no split 'val'"):
        ds.ids("val")


def test_ade847_round_trip_perfect_prediction_scores_one(tmp_path):
    """847 classes: every value survives (v0.1's uint8 maps wrapped 300 to 44), a perfect prediction scores 1.0."""
    names = [f"thing {k}" for k in range(847)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    truth = np.arange(847 * 2, dtype=np.int64).reshape(22, 77) % 847  # every class, twice
    stored = truth.astype(np.uint16)
    stored[0, :3] = 65535  # ignore
    for k in range(2):
        _png(tmp_path / "annotations_detectron2" / "validation" / f"ADE_val_{k}.png", stored)
    ds = load_dataset("ade847", tmp_path)
    meter = SegmentationMeter(ds.class_names)
    for i in ds.ids("validation"):
        lab = ds.label_map(i)
        assert lab.dtype == np.int16 and lab.max() == 846 and (lab == IGNORE).sum() == 3
        np.testing.assert_array_equal(lab[1:], truth[1:])
        meter.update(truth, lab)
    assert meter.figures()["mIoU"] == 1.0
    assert meter.figures()["IoU/thing 300"] == 1.0


def test_coco_stuff_maps_182_ids_to_171_classes(tmp_path):
    stored = np.array([[0, 11, 12, 181], [255, 91, 90, 5]], np.uint8)
    _png(tmp_path / "annotations" / "val2017" / "000000000139.png", stored)
    _img(tmp_path / "images" / "val2017" / "000000000139.jpg", (2, 4))
    ds = load_dataset("coco-stuff", tmp_path)
    assert len(ds.class_names) == 171 and ds.class_names[11] == "stop sign" and ds.class_names[170] == "wood"
    # 0 person; 11 (COCO id 12, unused) ignore; 12 (stop sign, id 13) -> 11; 181 -> 170; 91 (banner, id 92) -> 80
    np.testing.assert_array_equal(ds.label_map("000000000139"), [[0, -1, 11, 170], [-1, 80, -1, 5]])
    assert len(COCO_STUFF_UNUSED) == 11
    _png(tmp_path / "annotations" / "val2017" / "000000000139.png", np.array([[200]], np.uint8))
    with pytest.raises(AnnotationError, match="000000000139.png"):
        ds.label_map("000000000139")


def test_context59_and_459(tmp_path):
    _lists(tmp_path / "ImageSets" / "SegmentationContext", {"train": ["2008_000002", "2008_000003"], "val": ["a"]})
    s59 = np.array([[0, 1], [59, 255]], np.uint8)
    _png(tmp_path / "SegmentationClassContext" / "2008_000002.png", s59)
    ds = load_dataset("context59", tmp_path)
    assert len(ds.class_names) == 59 and ds.class_names[0] == "aeroplane" and ds.class_names[58] == "wood"
    np.testing.assert_array_equal(ds.label_map("2008_000002"), [[-1, 0], [58, -1]])

    with pytest.raises(FileNotFoundError, match="labels.txt"):
        load_dataset("context459", tmp_path)
    (tmp_path / "labels.txt").write_text("".join(f"{k}: name{k}\n" for k in range(1, 460)))
    ds = load_dataset("context459", tmp_path)
    assert ds.class_names[0] == "name1" and ds.class_names[458] == "name459"
    s459 = np.array([[0, 1], [300, 459]], np.uint16)  # official LabelMap values
    _png(tmp_path / "SegmentationClassContext459" / "2008_000002.png", s459)  # 16-bit PNG
    np.save(tmp_path / "SegmentationClassContext459" / "2008_000003.npy", s459.astype(np.int32))
    for i in ("2008_000002", "2008_000003"):
        lab = ds.label_map(i)
        assert lab.dtype == np.int16
        np.testing.assert_array_equal(lab, [[-1, 0], [299, 458]])
    from scipy.io import savemat

    (tmp_path / "trainval").mkdir()
    savemat(tmp_path / "trainval" / "a.mat", {"LabelMap": s459.astype(np.uint16)})  # the official .mat
    np.testing.assert_array_equal(ds.label_map("a"), [[-1, 0], [299, 458]])


def test_holdout_is_seeded_disjoint_and_recorded(tmp_path):
    ids = [f"im{k:03d}" for k in range(50)]
    fit, hold = holdout_ids(ids, 0.1, seed=0)
    assert len(hold) == 5 and len(fit) == 45 and not set(fit) & set(hold) and sorted(fit + hold) == ids
    assert holdout_ids(list(reversed(ids)), 0.1, seed=0) == (fit, hold)  # order of input does not matter
    assert holdout_ids(ids, 0.1, seed=1)[1] != hold
    _lists(tmp_path / "ImageSets" / "Segmentation", {"train": ids, "val": ["v1"]})
    ds = with_holdout(load_dataset("voc", tmp_path), "train", 0.1, 0)
    assert ds.ids("fit") == fit and ds.ids("holdout") == hold and ds.ids("val") == ["v1"]
    assert ds.holdout["seed"] == 0 and ds.holdout["images"] == 5 and ds.holdout["from"] == "train"
    assert ds.identity() == ds.base.identity()  # same images, same cache entries
    assert set(PROTOCOLS) == set(READERS)


def test_label_size_mismatch_names_file_and_id(tmp_path, tiny_encoder):
    from dense.cache import FeatureCache
    from dense.extract import dataset_items, extract_to_cache
    from probes.train import load_samples

    _lists(tmp_path / "ImageSets" / "Segmentation", {"train": ["x1"]})
    _img(tmp_path / "JPEGImages" / "x1.jpg", (20, 30))
    _png(tmp_path / "SegmentationClass" / "x1.png", np.zeros((20, 31), np.uint8))
    ds = load_dataset("voc", tmp_path)
    cache = FeatureCache.for_encoder(tmp_path / "c", tiny_encoder, dataset=ds)
    extract_to_cache(tiny_encoder, dataset_items(ds, "train"), cache, progress=False)
    with pytest.raises(ValueError, match=r"x1\.png.*20 x 31.*x1\.jpg is 20 x 30 \(image id x1\)"):
        load_samples(ds, cache, "train", stream=False)


def _voc_from_shapes(tmp_path: Path, n: int) -> Path:
    """A VOC-layout fixture from the synthetic shapes world: its semantic labels as palette PNGs, 255 = ignore."""
    from dense.coco import load_coco
    from dense.datasets import make_shapes

    world = make_shapes(tmp_path / "w", n, seed=3)
    coco = load_coco(world["annotation_file"], tmp_path / "w" / "images")
    root = tmp_path / "voc"
    ids = [f"s{i:04d}" for i in coco.ids()]
    for i, stem in zip(coco.ids(), ids, strict=True):
        lab = coco.label_map(i).astype(np.int64)
        _png(root / "SegmentationClass" / f"{stem}.png", np.where(lab == IGNORE, 255, lab), palette=True)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.open(coco.image_path(i)).convert("RGB").save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
    (root / "classes.txt").write_text("\n".join(coco.class_names) + "\n")
    _lists(root / "ImageSets" / "Segmentation", {"train": ids[: n * 3 // 4], "val": ids[n * 3 // 4:]})
    return root


@pytest.mark.slow
def test_cli_eval_probe_on_a_voc_fixture(tmp_path):
    root = _voc_from_shapes(tmp_path, 24)
    out = tmp_path / "probe.json"
    cmd = [sys.executable, "-m", "dense.cli", "eval", "probe", "--dataset", "voc", "--root", str(root), "--model",
           "shapes-tiny", "--cache", str(tmp_path / "cache"), "--epochs", "3", "--lrs", "1e-2,3e-2", "--quiet",
           "--json", str(out)]
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["protocol"]["choose"] == "holdout" and rec["protocol"]["report"] == "val"
    assert rec["protocol"]["holdout"]["from"] == "train" and rec["protocol"]["holdout"]["seed"] == 0
    assert rec["splits"] == {"fit": 16, "holdout": 2, "val": 6}
    assert 0 < rec["test"]["mIoU"] <= 1 and set(rec["per_class_iou"]) == set(rec["class_names"])
    assert "test (val, 6 images, reported once)" in res.stdout
    # a second run reads every feature from the cache, and nothing is shared with another dataset's namespace
    entries = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(entries) == 24 and all("/data/voc-" in str(p) for p in entries)
