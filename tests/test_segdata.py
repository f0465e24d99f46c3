"""dense.segdata: every standard layout, written as its producing script leaves it (tests/segdata_layouts.py), read
pixel for pixel and name for name; the broken folders a researcher meets, each one clear line naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import segdata_layouts as L
from PIL import Image
from scipy.io import loadmat

from dense.errors import AnnotationError
from dense.labels import IGNORE
from dense.metrics import SegmentationMeter
from dense.segdata import (
    ADE20K_CLASSES,
    ADE847_CLASSES,
    COCO_STUFF_CLASSES,
    CONTEXT59_CLASSES,
    CONTEXT459_CLASSES,
    LAYOUTS_HELP,
    PROTOCOLS,
    READERS,
    VOC_CLASSES,
    holdout_ids,
    load_dataset,
    with_holdout,
)

REPO = Path(__file__).resolve().parents[1]

# (dense dataset, builder, the class names dense must report)
LAYOUTS = {
    "voc-official": ("voc", L.voc_official, VOC_CLASSES),
    "voc-sbd-aug": ("voc", L.voc_aug, VOC_CLASSES),
    "ade20k-official": ("ade20k", L.ade150_official, ADE20K_CLASSES),
    "ade20k-detectron2": ("ade20k", L.ade150_detectron2, ADE20K_CLASSES),
    "ade847-maskformer": ("ade847", L.ade847, ADE847_CLASSES),
    "coco-stuff-raw": ("coco-stuff", L.coco_stuff_raw, COCO_STUFF_CLASSES),
    "coco-stuff-mmseg": ("coco-stuff", L.coco_stuff_mmseg, COCO_STUFF_CLASSES),
    "coco-stuff-catseg": ("coco-stuff", L.coco_stuff_catseg, COCO_STUFF_CLASSES),
    "coco-stuff-detectron2": ("coco-stuff", L.coco_stuff_detectron2, COCO_STUFF_CLASSES),
    "coco-stuff-detectron2-only": ("coco-stuff", L.coco_stuff_detectron2_only, COCO_STUFF_CLASSES),
    "context59-mmseg": ("context59", L.context59_mmseg, CONTEXT59_CLASSES),
    "context59-catseg": ("context59", L.context59_catseg, CONTEXT59_CLASSES),
    "context59-san": ("context59", L.context59_san, CONTEXT59_CLASSES),
    "context59-odise": ("context59", L.context59_odise, CONTEXT59_CLASSES),
    "context459-official": ("context459", L.context459_official, CONTEXT459_CLASSES),
    "context459-official-mmseg-lists": ("context459", lambda b: L.context459_official(b, mmseg_lists=True),
                                        CONTEXT459_CLASSES),
    "context459-official-split": ("context459", L.context459_official_split, [f"class {k}" for k in range(1, 460)]),
    "context459-catseg": ("context459", L.context459_catseg, CONTEXT459_CLASSES),
    "context459-catseg-only": ("context459", L.context459_catseg_only, CONTEXT459_CLASSES),
    "context459-san": ("context459", L.context459_san, CONTEXT459_CLASSES),
    "context459-odise": ("context459", L.context459_odise, CONTEXT459_CLASSES),
    "coco-instances": ("coco", L.coco_instances, ["background", "person", "car", "dog"]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_read_pixel_for_pixel_and_name_for_name(tmp_path, layout):
    dataset, build, names = LAYOUTS[layout]
    built = build(tmp_path)
    ds = load_dataset(dataset, built.root)
    assert list(ds.class_names) == list(names)
    assert ds.splits() >= set(built.truth)
    for split, maps in built.truth.items():
        assert ds.ids(split) == sorted(maps), split  # no converter side file (e.g. _labelTrainIds) is an image id
        for i, truth in maps.items():
            lab = ds.label_map(i)
            np.testing.assert_array_equal(lab, truth, err_msg=f"{layout} {i}")
            assert np.issubdtype(lab.dtype, np.signedinteger) and IGNORE == -1
            assert ds.image_path(i).is_file()
        ds.check_files(split)
    if hasattr(ds, "label_path"):  # the file read is the one the layout says (e.g. trainIds before raw)
        for maps in built.truth.values():
            for i in maps:
                assert ds.label_path(i) == built.label_files[i]


def test_voc_trainaug_reads_voc_annotations_before_sbd(tmp_path):
    """mmsegmentation trains trainaug as train (SegmentationClass) + aug (SegmentationClassAug): a VOC train id that
    SBD also annotated keeps VOC's labels (palette, 255 borders); an SBD-only id reads the grey aug PNG."""
    b = L.voc_aug(tmp_path)
    ds = load_dataset("voc", b.root, splits=("trainaug", "aug"))
    both = sorted(set(b.truth["train"]) & {p.stem for p in (b.root / "SegmentationClassAug").glob("*.png")})
    assert both  # the fixture has VOC ids with different SBD labels
    for i in both:
        sbd = np.asarray(Image.open(b.root / "SegmentationClassAug" / f"{i}.png"))
        assert not np.array_equal(np.where(b.truth["train"][i] < 0, 255, b.truth["train"][i]), sbd)
        np.testing.assert_array_equal(ds.label_map(i), b.truth["train"][i])
    assert ds.layout == "VOC2012 + SBD augmentation"


def test_context459_tif_is_zero_based_without_unlabeled_pixels(tmp_path):
    """CAT-Seg/SAN/ODISE write LabelMap - 1: on an image with no unlabeled pixel nothing says so but the folder;
    every class keeps its index (v0.2 read these as 1-based: every pixel one class off)."""
    b = L.context459_san(tmp_path)
    i = L.CONTEXT_TRAIN[0]  # built without an unlabeled pixel
    stored = np.asarray(Image.open(b.label_files[i]))
    assert stored.dtype == np.uint16 and stored.max() < 459 and stored.min() == 0
    lab = load_dataset("context459", b.root).label_map(i)
    np.testing.assert_array_equal(lab, stored)
    assert (lab == b.truth["train"][i]).all()


def test_context459_names_come_from_labels_txt_when_present(tmp_path):
    b = L.context459_official(tmp_path, names=[f"thing {k}" for k in range(1, 460)])
    ds = load_dataset("context459", b.root)
    assert ds.class_names[0] == "thing 1" and ds.class_names[458] == "thing 459"
    (b.root / "labels.txt").write_text("1: accordion\n2: aeroplane\n")
    with pytest.raises(AnnotationError, match=r"labels\.txt: 2 class names, expected 459"):
        load_dataset("context459", b.root)


def test_ade847_perfect_prediction_scores_one(tmp_path):
    """847 classes: every value survives (v0.1's uint8 maps wrapped 300 to 44), a perfect prediction scores 1.0."""
    root = tmp_path / "ADE20K_2021_17_01"
    truth = np.arange(847 * 2, dtype=np.int64).reshape(22, 77) % 847  # every class, twice
    stored = truth.astype(np.uint16)
    stored[0, :3] = 65535
    for k in range(2):
        L.tif16(root / "annotations_detectron2" / "validation" / f"ADE_val_{k:08d}.tif", stored)
    ds = load_dataset("ade847", root)
    meter = SegmentationMeter(ds.class_names)
    for i in ds.ids("validation"):
        lab = ds.label_map(i)
        assert lab.dtype == np.int16 and lab.max() == 846 and (lab == IGNORE).sum() == 3
        np.testing.assert_array_equal(lab[1:], truth[1:])
        meter.update(truth, lab)
    assert meter.figures()["mIoU"] == 1.0
    assert meter.figures()[f"IoU/{ADE847_CLASSES[300]}"] == 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Values and files no script writes: errors naming the file


@pytest.mark.parametrize("layout,value", [
    ("voc-official", 40),  # not a VOC class
    ("ade20k-official", 255),  # the release stores 0..150 only
    ("ade20k-detectron2", 150),
    ("coco-stuff-raw", 11),  # COCO id 12, never used
    ("coco-stuff-raw", 90),  # COCO id 91, never used
    ("coco-stuff-mmseg", 171),  # trainIds stop at 170
    ("context59-mmseg", 60),
    ("context59-catseg", 59),
    ("ade847-maskformer", 847),
    ("context459-san", 459),
    ("context459-official", 460),
])
def test_a_value_the_encoding_cannot_hold_names_the_file(tmp_path, layout, value):
    dataset, build, _ = LAYOUTS[layout]
    b = build(tmp_path)
    split, maps = next(iter(b.truth.items()))
    i = next(iter(maps))
    path = b.label_files[i]
    stored = (loadmat(path)["LabelMap"] if path.suffix == ".mat" else np.asarray(Image.open(path))).copy()
    stored[3, 3] = value
    if path.suffix == ".mat":
        L.mat(path, stored)
    elif stored.dtype == np.uint16:
        L.tif16(path, stored)
    else:
        L.png8(path, stored, palette=layout == "voc-official")
    ds = load_dataset(dataset, b.root)
    with pytest.raises(AnnotationError, match=rf"{path.name}: stored label values \[{value}\] cannot occur"):
        ds.label_map(i)


def test_bit_depth_and_channels_tell_encodings_apart(tmp_path):
    b = L.ade847(tmp_path / "a")
    path = b.label_files["ADE_val_00000001"]
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(path, format="TIFF")  # 8-bit where MaskFormer writes uint16
    with pytest.raises(AnnotationError, match=r"ADE_val_00000001\.tif: an 8-bit label map .* is 16-bit"):
        load_dataset("ade847", b.root).label_map("ADE_val_00000001")
    v = L.voc_official(tmp_path / "v")
    path = v.label_files["2007_000033"]
    Image.fromarray(np.zeros((12, 16), np.uint16)).save(path)  # 16-bit PNG where VOC is 8-bit
    with pytest.raises(AnnotationError, match=r"2007_000033\.png: a 16-bit label map"):
        load_dataset("voc", v.root).label_map("2007_000033")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(path)  # an RGB rendering
    with pytest.raises(AnnotationError, match=r"2007_000033\.png: a 3-channel RGB image"):
        load_dataset("voc", v.root).label_map("2007_000033")


def test_missing_splits_and_files_name_what_was_looked_for(tmp_path):
    v = L.voc_official(tmp_path / "v")
    ds = load_dataset("voc", v.root)
    with pytest.raises(KeyError, match=r"ImageSets/Segmentation/trainaug\.txt: voc has no split 'trainaug'"):
        ds.ids("trainaug")
    (v.root / "SegmentationClass" / "2007_000033.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"SegmentationClass/2007_000033\.png"):
        ds.label_map("2007_000033")
    c = L.context459_official(tmp_path / "c")
    with pytest.raises(KeyError, match=r"SegmentationContext/train\.txt or .*pascalcontext_train\.txt"):
        load_dataset("context459", c.root).ids("train")
    with pytest.raises(FileNotFoundError, match="not a PASCAL Context folder"):
        load_dataset("context59", tmp_path / "v")
    coco = L.coco_instances(tmp_path / "i")
    (coco.root / "annotations" / "instances_train2017.json").unlink()
    ds = load_dataset("coco", coco.root)
    with pytest.raises(FileNotFoundError, match=r"instances_train2017\.json"):
        ds.ids("train2017")
    assert ds.ids("val2017") == sorted(coco.truth["val2017"])


def test_context459_from_the_official_downloads_reads_voc2010s_own_split(tmp_path):
    """No converter's list: train and val are VOC2010's ImageSets/Main lists (not Main's per-class lists), and the
    dataset says which list each split came from; a converter's list, where present, is read instead."""
    b = L.context459_official_split(tmp_path)
    ds = load_dataset("context459", b.root, splits=["train", "val"], check_files=True)
    assert ds.splits() == {"train", "val"}
    for split, maps in b.truth.items():
        assert ds.ids(split) == sorted(maps)
        assert ds.split_list(split).startswith(f"{b.root / 'ImageSets' / 'Main' / split}.txt (VOC2010 ImageSets/Main")
        for i, truth in maps.items():
            np.testing.assert_array_equal(ds.label_map(i), truth)
    L.lines(b.root / "ImageSets" / "SegmentationContext" / "val.txt", sorted(b.truth["val"])[:1])  # mmseg's list
    ds = load_dataset("context459", b.root)
    assert ds.ids("val") == sorted(b.truth["val"])[:1] and "mmsegmentation's list" in ds.split_list("val")
    assert ds.ids("train") == sorted(b.truth["train"]) and "ImageSets/Main" in ds.split_list("train")
    from dense.segdata import split_list, with_holdout

    assert split_list(with_holdout(ds, "train"), "holdout").startswith("holdout carved from train: ")


def test_split_list_lines_may_be_paths(tmp_path):
    """DeepLab's lists (ImageSets/SegmentationAug/train_aug.txt): '/JPEGImages/x.jpg /SegmentationClassAug/x.png'."""
    b = L.voc_aug(tmp_path)
    ids = sorted(b.truth["trainaug"])
    (b.root / "ImageSets" / "SegmentationAug").mkdir(parents=True)
    (b.root / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids))
    assert load_dataset("voc", b.root).ids("train_aug") == ids


def test_layouts_help_lists_every_dataset_and_script():
    for name in READERS:
        assert f"\n{name}" in LAYOUTS_HELP
    for script in ("voc_aug.py", "prepare_ade20k_full_sem_seg.py", "coco_stuff164k.py", "pascal_context.py",
                   "prepare_pascal_context_459.py", "_labelTrainIds.png", "65535", "pascalcontext_val.txt"):
        assert script in LAYOUTS_HELP


# ---------------------------------------------------------------------------------------------------------------------
# Through the command line: one fixture per dataset, its broken variants, and end-to-end runs

E2E = {  # dataset -> builder of a fixture with a training and a reported split
    "voc": L.voc_aug,
    "ade20k": L.ade150_official,
    "ade847": L.ade847,
    "coco-stuff": L.coco_stuff_mmseg,
    "context59": L.context59_mmseg,
    "context459": lambda b, hw=(12, 16): L.context459_official(b, hw, mmseg_lists=True),
    "coco": L.coco_instances,
}


def _break(kind: str, dataset: str, b) -> Path:
    """Break the fixture ``b`` one way; returns the file or folder the error must name."""
    train, test = PROTOCOLS[dataset]
    test_id = sorted(b.truth[test])[0]
    if kind == "missing-split-list":
        target = b.split_list[test]
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        else:
            target.unlink()
        return target
    if dataset == "coco":
        ann = b.label_files[test]
        data = json.loads(ann.read_text())
        if kind == "wrong-size":
            data["images"][0]["height"] += 1
            ann.write_text(json.dumps(data))
        else:  # a file that is not the instances JSON
            ann.write_text("not json")
        return ann
    path = b.label_files[test_id]
    if kind == "wrong-size":
        stored = np.asarray(Image.open(path)) if path.suffix != ".mat" else None
        if path.suffix == ".mat":
            L.mat(path, np.pad(loadmat(path)["LabelMap"], ((0, 1), (0, 0))))
        elif stored.dtype == np.uint16:
            L.tif16(path, np.pad(stored, ((0, 1), (0, 0))))
        else:
            L.png8(path, np.pad(stored, ((0, 1), (0, 0))), palette=Image.open(path).mode == "P")
        return path
    rgb = np.zeros((*b.truth[test][test_id].shape, 3), np.uint8)  # a colour rendering where indices belong
    if path.suffix == ".mat":
        from scipy.io import savemat

        savemat(path, {"LabelMap": rgb})
    else:
        Image.fromarray(rgb).save(path, format="TIFF" if path.suffix == ".tif" else "PNG")
    return path


@pytest.mark.parametrize("kind", ["missing-split-list", "wrong-size", "rgb-label"])
@pytest.mark.parametrize("dataset", sorted(E2E))
def test_broken_folder_exits_1_with_one_line_naming_the_file(tmp_path, capsys, dataset, kind):
    from dense.cli import main

    b = E2E[dataset](tmp_path)
    target = _break(kind, dataset, b)
    code = main(["eval", "probe", "--model", "shapes-tiny", "--dataset", dataset, "--root", str(b.root),
                 "--cache", str(tmp_path / "cache"), "--epochs", "1", "--lrs", "1e-2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert str(target) in err[0], err[0]
    assert not (tmp_path / "cache").exists()  # nothing was extracted: the error came first


def test_broken_folder_through_the_real_command(tmp_path):
    b = L.ade847(tmp_path)
    target = _break("wrong-size", "ade847", b)
    cmd = [sys.executable, "-m", "dense.cli", "eval", "probe", "--model", "shapes-tiny", "--dataset", "ade847",
           "--root", str(b.root), "--cache", str(tmp_path / "cache"), "--quiet"]
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"dense: error: {target}: label map is 13 x 16 (H x W), its image "
        f"{b.root / 'images_detectron2' / 'validation' / (target.stem + '.jpg')} is 12 x 16 (image id {target.stem})"]


def test_probe_help_lists_the_layouts(capsys):
    from dense.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "probe", "--help"])
    out = capsys.readouterr().out
    assert "dataset layouts" in out and "prepare_ade20k_full_sem_seg.py" in out and "trainaug" in out


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(E2E))
def test_eval_probe_and_openvocab_run_end_to_end(tmp_path, capsys, dataset):
    from dense.cli import main

    b = E2E[dataset](tmp_path, hw=(24, 32))
    train, test = PROTOCOLS[dataset]
    out = tmp_path / "probe.json"
    assert main(["eval", "probe", "--model", "shapes-tiny", "--dataset", dataset, "--root", str(b.root),
                 "--cache", str(tmp_path / "cache"), "--epochs", "1", "--lrs", "1e-2", "--quiet",
                 "--json", str(out)]) == 0
    rec = json.loads(out.read_text())["meta"]
    assert rec["protocol"]["report"] == test and rec["splits"][test] == len(b.truth[test])
    assert rec["class_names"] == list(load_dataset(dataset, b.root).class_names)
    assert 0 <= json.loads(out.read_text())["figures"]["mIoU"] <= 1
    ov = tmp_path / "openvocab.json"
    assert main(["eval", "openvocab", "--model", "shapes-tiny", "--dataset", dataset, "--root", str(b.root),
                 "--split", test, "--templates", "none", "--resamples", "10", "--quiet", "--json", str(ov)]) == 0
    res = json.loads(ov.read_text())
    assert res["meta"]["images"] == len(b.truth[test])
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------------------------------
# Choosing on a seeded holdout; label sizes in the in-memory and streaming paths


def test_holdout_is_seeded_disjoint_and_recorded(tmp_path):
    ids = [f"im{k:03d}" for k in range(50)]
    fit, hold = holdout_ids(ids, 0.1, seed=0)
    assert len(hold) == 5 and len(fit) == 45 and not set(fit) & set(hold) and sorted(fit + hold) == ids
    assert holdout_ids(list(reversed(ids)), 0.1, seed=0) == (fit, hold)  # order of input does not matter
    assert holdout_ids(ids, 0.1, seed=1)[1] != hold
    root = tmp_path / "VOC2012"
    (root / "SegmentationClass").mkdir(parents=True)
    L.lines(root / "ImageSets" / "Segmentation" / "train.txt", ids)
    L.lines(root / "ImageSets" / "Segmentation" / "val.txt", ["v1"])
    ds = with_holdout(load_dataset("voc", root), "train", 0.1, 0)
    assert ds.ids("fit") == fit and ds.ids("holdout") == hold and ds.ids("val") == ["v1"]
    assert ds.holdout["seed"] == 0 and ds.holdout["images"] == 5 and ds.holdout["from"] == "train"
    assert ds.identity() == ds.base.identity()  # same images, same cache entries
    assert set(PROTOCOLS) == set(READERS)


@pytest.mark.parametrize("stream", [False, True])
def test_label_size_mismatch_names_the_label_file(tmp_path, tiny_encoder, stream):
    from dense.cache import FeatureCache
    from dense.extract import dataset_items, extract_to_cache
    from probes.train import load_samples

    root = tmp_path / "VOC2012"
    L.lines(root / "ImageSets" / "Segmentation" / "train.txt", ["x1"])
    L.image(root / "JPEGImages" / "x1.jpg", (20, 30))
    L.png8(root / "SegmentationClass" / "x1.png", np.zeros((20, 31), np.uint8), palette=True)
    ds = load_dataset("voc", root)
    cache = FeatureCache.for_encoder(tmp_path / "c", tiny_encoder, dataset=ds)
    extract_to_cache(tiny_encoder, dataset_items(ds, "train"), cache, progress=False)
    with pytest.raises(ValueError, match=r"x1\.png: label map is 20 x 31 \(H x W\), its image .*20 x 30.*x1"):
        samples = load_samples(ds, cache, "train", stream=stream)  # streaming: the label is read when used
        samples[0].read_label()
    with pytest.raises(AnnotationError, match=r"x1\.png: label map is 20 x 31 \(H x W\), its image .*x1\.jpg"):
        ds.check_files("train")


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
        L.png8(root / "SegmentationClass" / f"{stem}.png", np.where(lab == IGNORE, 255, lab), palette=True)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.open(coco.image_path(i)).convert("RGB").save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
    (root / "classes.txt").write_text("\n".join(coco.class_names) + "\n")
    L.lines(root / "ImageSets" / "Segmentation" / "train.txt", ids[: n * 3 // 4])
    L.lines(root / "ImageSets" / "Segmentation" / "val.txt", ids[n * 3 // 4:])
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
    meta = rec["meta"]
    assert meta["protocol"]["choose"] == "holdout" and meta["protocol"]["report"] == "val"
    assert meta["protocol"]["holdout"]["from"] == "train" and meta["protocol"]["holdout"]["seed"] == 0
    assert meta["splits"] == {"fit": 16, "holdout": 2, "val": 6}
    assert 0 < rec["figures"]["mIoU"] <= 1
    assert {k[4:] for k in rec["figures"] if k.startswith("IoU/")} <= set(meta["class_names"])
    assert "test (val, 6 images, reported once)" in res.stdout
    # a second run reads every feature from the cache, and nothing is shared with another dataset's namespace
    entries = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(entries) == 24 and all("/data/voc-" in str(p) for p in entries)


def test_the_evaluators_record_the_split_list_and_tagged_images(tmp_path, tiny_encoder):
    """Result.meta names the list a split came from (here VOC2010's own) and counts EXIF-tagged images (none)."""
    from dense.eval.openvocab import evaluate_openvocab
    from dense.eval.settings import Bootstrap, Extraction

    b = L.context459_official_split(tmp_path)
    ds = load_dataset("context459", b.root)
    res = evaluate_openvocab(tiny_encoder, ds, split="val", bootstrap=Bootstrap(resamples=10),
                             extraction=Extraction(max_patches=4))
    assert res.meta["split_list"] == ds.split_list("val") and "ImageSets/Main/val.txt" in res.meta["split_list"]
    assert res.meta["exif_tagged"] == 0 and res.meta["images"] == len(b.truth["val"])
