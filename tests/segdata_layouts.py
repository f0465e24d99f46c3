"""Fixture builders: each standard dataset layout written exactly as its producing script leaves it.

Every builder takes *truth* label maps (class index k, -1 = pixels no metric counts) and encodes them by the
encoding's own definition, written here from the scripts (not from dense.segdata): VOC's palette PNG with 255 borders,
ADE's reduce-zero-label PNG, MaskFormer's uint16 .tif with 65535, COCO-Stuff's COCO-id-minus-one PNG and the
converters' trainIds, PASCAL Context's official .mat (LabelMap 1..459, 0 unlabeled) and the 0-based .tif that
CAT-Seg/SAN/ODISE write (LabelMap - 1 as uint16: 0 wraps to 65535). A test reads the folder with dense and compares
pixel for pixel with the truth.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# COCO category ids 1..182, of which these 11 were never used (COCO's own list); stuffthingmaps store id - 1
COCO_NEVER_USED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}
COCO_USED_IDS = [i for i in range(1, 183) if i not in COCO_NEVER_USED]  # label k <-> COCO id COCO_USED_IDS[k]


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (VOCdevkit's labelcolormap.m: bits of the index spread over R, G, B)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def truth_maps(ids: list[str], num_classes: int, hw=(12, 16), seed: int = 0, no_ignore: tuple[str, ...] = ()
               ) -> dict[str, np.ndarray]:
    """Per id a label map of 2 x 2-pixel blocks: random classes, the first and last class always present, a row of
    ignore (-1) at the top (none for ids in ``no_ignore``)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in ids:
        blocks = rng.integers(0, num_classes, size=(hw[0] // 2, hw[1] // 2))
        lab = np.kron(blocks, np.ones((2, 2), np.int64))  # [H/2, W/2] -> [H, W]
        lab[-1, 0], lab[-1, -1] = 0, num_classes - 1
        if i not in no_ignore:
            lab[0, :] = -1
        out[i] = lab
    return out


def image(path: Path, hw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(path)


def png8(path: Path, stored: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(stored.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        im.putpalette(voc_palette())
    im.save(path)


def tif16(path: Path, stored: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored.astype(np.uint16)).save(path)  # uint16 -> mode I;16, as the scripts' Image.fromarray


def mat(path: Path, label_map: np.ndarray) -> None:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"LabelMap": label_map.astype(np.uint16)})


def lines(path: Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


# encodings, from each script's definition: truth (k, -1) -> stored
def enc_k_255(t):  # VOC, SBD aug, trainIds, 0-based 59-class PNGs, ADE detectron2
    return np.where(t < 0, 255, t)


def enc_k1_0(t):  # ADE official, mmseg Context-59, official Context .mat: 0 = unlabeled, k + 1
    return np.where(t < 0, 0, t + 1)


def enc_k_65535(t):  # MaskFormer ADE-847, CAT-Seg/SAN/ODISE 459 tif
    return np.where(t < 0, 65535, t)


def enc_459_tif_from_mat(t):  # CAT-Seg: mask = LabelMap - 1 on uint16 (0 wraps to 65535)
    return (enc_k1_0(t).astype(np.uint16) - np.uint16(1)).astype(np.uint16)


def enc_coco_raw(t):  # stuffthingmaps: COCO id - 1, 255 unlabeled
    return np.where(t < 0, 255, np.asarray(COCO_USED_IDS)[np.clip(t, 0, None)] - 1)


@dataclass
class Built:
    root: Path  # what --root is
    truth: dict[str, dict[str, np.ndarray]]  # split -> id -> truth
    label_files: dict[str, Path]  # id -> the label file dense should read (for broken variants)
    split_list: dict[str, Path]  # split -> the list or folder the split comes from


# ---------------------------------------------------------------------------------------------------------------------
# VOC


def voc_official(base: Path, hw=(12, 16), train=("2007_000032", "2007_000039", "2007_000063", "2007_000068"),
                 val=("2007_000033", "2007_000042")) -> Built:
    root = base / "VOCdevkit" / "VOC2012"
    truth = {"train": truth_maps(list(train), 21, hw, 1), "val": truth_maps(list(val), 21, hw, 2)}
    files = {}
    for split, maps in truth.items():
        for i, t in maps.items():
            image(root / "JPEGImages" / f"{i}.jpg", hw)
            files[i] = root / "SegmentationClass" / f"{i}.png"
            png8(files[i], enc_k_255(t), palette=True)
        lines(root / "ImageSets" / "Segmentation" / f"{split}.txt", maps)
    lines(root / "ImageSets" / "Segmentation" / "trainval.txt", [*train, *val])
    return Built(root, truth, files, {s: root / "ImageSets" / "Segmentation" / f"{s}.txt" for s in truth})


def voc_aug(base: Path, hw=(12, 16)) -> Built:
    """VOC2012 + mmsegmentation's voc_aug.py: SegmentationClassAug for every SBD image (some VOC train ids too, with
    SBD's own labels), trainaug = train + SBD - val, aug = SBD - train - val."""
    b = voc_official(base, hw)
    root = b.root
    sbd_only = ["2008_000002", "2008_000003", "2008_000007"]
    sbd_also_voc = list(b.truth["train"])[:2]
    sbd = truth_maps(sbd_only + sbd_also_voc, 21, hw, 3)
    for i, t in sbd.items():
        png8(root / "SegmentationClassAug" / f"{i}.png", enc_k_255(t))  # grey, as voc_aug.py's Image.fromarray
        if i in sbd_only:
            image(root / "JPEGImages" / f"{i}.jpg", hw)
            b.label_files[i] = root / "SegmentationClassAug" / f"{i}.png"
    trainaug = sorted(set(b.truth["train"]) | set(sbd) - set(b.truth["val"]))
    lines(root / "ImageSets" / "Segmentation" / "trainaug.txt", trainaug)
    lines(root / "ImageSets" / "Segmentation" / "aug.txt", sbd_only)
    # mmsegmentation trains on train (SegmentationClass) + aug (SegmentationClassAug)
    b.truth["trainaug"] = {**b.truth["train"], **{i: sbd[i] for i in sbd_only}}
    b.truth["aug"] = {i: sbd[i] for i in sbd_only}
    b.split_list.update(trainaug=root / "ImageSets/Segmentation/trainaug.txt")
    return b


# ---------------------------------------------------------------------------------------------------------------------
# ADE20K


def _ade(base: Path, hw, folder: str, n: int, images: str, labels: str, suffix: str, write, seed: int,
         splits=("training", "validation"), per_split=(4, 2)) -> Built:
    root = base / folder
    truth, files = {}, {}
    for split, count in zip(splits, per_split, strict=True):
        tag = "train" if split == "training" else "val"
        ids = [f"ADE_{tag}_{k:08d}" for k in range(1, count + 1)]
        truth[split] = truth_maps(ids, n, hw, seed + len(truth))
        for i, t in truth[split].items():
            image(root / images / split / f"{i}.jpg", hw)
            files[i] = root / labels / split / f"{i}{suffix}"
            write(files[i], t)
    return Built(root, truth, files, {s: root / labels / s for s in splits})


def ade150_official(base: Path, hw=(12, 16)) -> Built:
    return _ade(base, hw, "ADEChallengeData2016", 150, "images", "annotations", ".png",
                lambda p, t: png8(p, enc_k1_0(t)), 10)


def ade150_detectron2(base: Path, hw=(12, 16)) -> Built:
    """MaskFormer's prepare_ade20k_sem_seg.py output alone (annotations/ removed)."""
    return _ade(base, hw, "ADEChallengeData2016", 150, "images", "annotations_detectron2", ".png",
                lambda p, t: png8(p, enc_k_255(t)), 20)


def ade847(base: Path, hw=(12, 16)) -> Built:
    return _ade(base, hw, "ADE20K_2021_17_01", 847, "images_detectron2", "annotations_detectron2", ".tif",
                lambda p, t: tif16(p, enc_k_65535(t)), 30)


# ---------------------------------------------------------------------------------------------------------------------
# COCO-Stuff


def _coco_stuff(base: Path, hw, folder: str, image_dir: Callable[[Path, str], Path], labels: list[tuple[str, str]],
                seed: int, per_split=(4, 2)) -> Built:
    """``labels``: (folder, kind) written per split, kind 'raw' (stuffthingmaps), 'trainids' (<id>.png) or
    'mmseg' (<id>_labelTrainIds.png beside the raw <id>.png); the first is the one dense should read."""
    root = base / folder
    truth, files = {}, {}
    for split, count in zip(("train2017", "val2017"), per_split, strict=True):
        first = seed * 100 + 10 * len(truth) + 1
        ids = [f"{k:012d}" for k in range(first, first + count)]
        truth[split] = truth_maps(ids, 171, hw, seed + len(truth))
        for i, t in truth[split].items():
            image(image_dir(root, split) / f"{i}.jpg", hw)
            for folder_name, kind in reversed(labels):
                d = root / folder_name / split
                if kind == "mmseg":
                    files[i] = d / f"{i}_labelTrainIds.png"
                    png8(files[i], enc_k_255(t))
                else:
                    files[i] = d / f"{i}.png"
                    png8(files[i], enc_coco_raw(t) if kind == "raw" else enc_k_255(t))
    first = labels[0][0]
    return Built(root, truth, files, {s: root / first / s for s in truth})


def coco_stuff_raw(base: Path, hw=(12, 16)) -> Built:
    return _coco_stuff(base, hw, "coco_stuff164k", lambda r, s: r / "images" / s, [("annotations", "raw")], 1)


def coco_stuff_mmseg(base: Path, hw=(12, 16)) -> Built:
    """mmsegmentation's coco_stuff164k.py: <id>_labelTrainIds.png beside each raw <id>.png."""
    return _coco_stuff(base, hw, "coco_stuff164k", lambda r, s: r / "images" / s,
                       [("annotations", "mmseg"), ("annotations", "raw")], 2)


def coco_stuff_catseg(base: Path, hw=(12, 16)) -> Built:
    return _coco_stuff(base, hw, "coco-stuff", lambda r, s: r / "images" / s,
                       [("annotations", "raw"), ("annotations_detectron2", "trainids")], 3)


def coco_stuff_detectron2(base: Path, hw=(12, 16)) -> Built:
    """zsseg/SAN: coco/{train2017,val2017} images, stuffthingmaps_detectron2/ trainIds (stuffthingmaps/ raw)."""
    return _coco_stuff(base, hw, "coco", lambda r, s: r / s,
                       [("stuffthingmaps", "raw"), ("stuffthingmaps_detectron2", "trainids")], 4)


def coco_stuff_detectron2_only(base: Path, hw=(12, 16)) -> Built:
    return _coco_stuff(base, hw, "coco", lambda r, s: r / s, [("stuffthingmaps_detectron2", "trainids")], 5)


# ---------------------------------------------------------------------------------------------------------------------
# PASCAL Context

CONTEXT_TRAIN = ("2008_000002", "2008_000003", "2008_000007", "2008_000009")
CONTEXT_VAL = ("2008_000008", "2008_000010")


def context_labels_txt(path: Path, names) -> None:
    path.write_text("".join(f"{k}: {n}\n" for k, n in enumerate(names, start=1)))


def _voc2010(base: Path, hw, n: int, seed: int, no_ignore=()):
    root = base / "VOCdevkit" / "VOC2010"
    truth = {"train": truth_maps(list(CONTEXT_TRAIN), n, hw, seed, no_ignore),
             "val": truth_maps(list(CONTEXT_VAL), n, hw, seed + 1, no_ignore)}
    for maps in truth.values():
        for i in maps:
            image(root / "JPEGImages" / f"{i}.jpg", hw)
    return root, truth


def context59_mmseg(base: Path, hw=(12, 16)) -> Built:
    root, truth = _voc2010(base, hw, 59, 40)
    files = {}
    for split, maps in truth.items():
        for i, t in maps.items():
            files[i] = root / "SegmentationClassContext" / f"{i}.png"
            png8(files[i], enc_k1_0(t))
        lines(root / "ImageSets" / "SegmentationContext" / f"{split}.txt", maps)
    return Built(root, truth, files, {s: root / "ImageSets/SegmentationContext" / f"{s}.txt" for s in truth})


def context59_catseg(base: Path, hw=(12, 16)) -> Built:
    root, truth = _voc2010(base, hw, 59, 50)
    del truth["train"]  # CAT-Seg writes the validation set only
    files = {}
    for i, t in truth["val"].items():
        files[i] = root / "annotations_detectron2" / "pc59_val" / f"{i}.png"
        png8(files[i], enc_k_255(t))
    return Built(root, truth, files, {"val": root / "annotations_detectron2" / "pc59_val"})


def _san(base: Path, hw, folder: str, n: int, suffix: str, write, seed: int) -> Built:
    root = base / folder
    truth = {"train": truth_maps(list(CONTEXT_TRAIN), n, hw, seed, no_ignore=CONTEXT_TRAIN[:1]),
             "val": truth_maps(list(CONTEXT_VAL), n, hw, seed + 1)}
    files = {}
    for split, maps in truth.items():
        for i, t in maps.items():
            image(root / split / "image" / f"{i}.jpg", hw)
            files[i] = root / split / "label" / f"{i}{suffix}"
            write(files[i], t)
    return Built(root, truth, files, {s: root / s / "label" for s in truth})


def _odise(base: Path, hw, ann: str, n: int, suffix: str, write, seed: int) -> Built:
    root = base / "pascal_ctx_d2"
    truth = {"train": truth_maps(list(CONTEXT_TRAIN), n, hw, seed, no_ignore=CONTEXT_TRAIN[:1]),
             "val": truth_maps(list(CONTEXT_VAL), n, hw, seed + 1)}
    files = {}
    for split, folder in (("train", "training"), ("val", "validation")):
        for i, t in truth[split].items():
            image(root / "images" / folder / f"{i}.jpg", hw)
            files[i] = root / ann / folder / f"{i}{suffix}"
            write(files[i], t)
    return Built(root, truth, files, {"train": root / ann / "training", "val": root / ann / "validation"})


def context59_san(base: Path, hw=(12, 16)) -> Built:
    return _san(base, hw, "pcontext", 59, ".png", lambda p, t: png8(p, enc_k_255(t)), 60)


def context59_odise(base: Path, hw=(12, 16)) -> Built:
    return _odise(base, hw, "annotations_ctx59", 59, ".png", lambda p, t: png8(p, enc_k_255(t)), 70)


def context459_official(base: Path, hw=(12, 16), names=None, mmseg_lists: bool = False) -> Built:
    """The official download: trainval/<id>.mat for train and val, labels.txt (``names``), and CAT-Seg's
    pascalcontext_val.txt or (``mmseg_lists``) the ImageSets/SegmentationContext lists of mmsegmentation's
    59-class converter."""
    root, truth = _voc2010(base, hw, 459, 80, no_ignore=(CONTEXT_TRAIN[0], CONTEXT_VAL[0]))
    files = {}
    for maps in truth.values():
        for i, t in maps.items():
            files[i] = root / "trainval" / f"{i}.mat"
            mat(files[i], enc_k1_0(t))
    if names is not None:
        context_labels_txt(root / "labels.txt", names)
    if mmseg_lists:  # (then without CAT-Seg's list, so that each split has one list)
        for split, maps in truth.items():
            lines(root / "ImageSets" / "SegmentationContext" / f"{split}.txt", maps)
        lists = {s: root / "ImageSets/SegmentationContext" / f"{s}.txt" for s in truth}
    else:
        lines(root / "pascalcontext_val.txt", truth["val"])
        lists = {"val": root / "pascalcontext_val.txt"}
        del truth["train"]
    return Built(root, truth, files, lists)


def context459_official_split(base: Path, hw=(12, 16)) -> Built:
    """The official downloads alone: VOC2010 (JPEGImages, ImageSets/Main/{train,val}.txt beside Main's per-class lists
    such as aeroplane_train.txt) + Context's trainval.tar.gz (trainval/<id>.mat, labels.txt); no converter's list."""
    root, truth = _voc2010(base, hw, 459, 85, no_ignore=(CONTEXT_TRAIN[0], CONTEXT_VAL[0]))
    files = {}
    for split, maps in truth.items():
        for i, t in maps.items():
            files[i] = root / "trainval" / f"{i}.mat"
            mat(files[i], enc_k1_0(t))
        lines(root / "ImageSets" / "Main" / f"{split}.txt", maps)
        (root / "ImageSets" / "Main" / f"aeroplane_{split}.txt").write_text("".join(f"{i} -1\n" for i in maps))
    context_labels_txt(root / "labels.txt", [f"class {k}" for k in range(1, 460)])
    return Built(root, truth, files, {s: root / "ImageSets/Main" / f"{s}.txt" for s in truth})


def context459_catseg(base: Path, hw=(12, 16), names=None) -> Built:
    """The official download + CAT-Seg's prepare_pascal_context_459.py: annotations_detectron2/pc459_val/<id>.tif."""
    b = context459_official(base, hw, names)
    for i, t in b.truth["val"].items():
        b.label_files[i] = b.root / "annotations_detectron2" / "pc459_val" / f"{i}.tif"
        tif16(b.label_files[i], enc_459_tif_from_mat(t))
    return b


def context459_catseg_only(base: Path, hw=(12, 16)) -> Built:
    """Only CAT-Seg's output (no .mat, no list): the split comes from the pc459_val folder."""
    root, truth = _voc2010(base, hw, 459, 90, no_ignore=(CONTEXT_VAL[0],))
    del truth["train"]
    files = {}
    for i, t in truth["val"].items():
        files[i] = root / "annotations_detectron2" / "pc459_val" / f"{i}.tif"
        tif16(files[i], enc_459_tif_from_mat(t))
    return Built(root, truth, files, {"val": root / "annotations_detectron2" / "pc459_val"})


def context459_san(base: Path, hw=(12, 16)) -> Built:
    return _san(base, hw, "pcontext_full", 459, ".tif", lambda p, t: tif16(p, enc_459_tif_from_mat(t)), 100)


def context459_odise(base: Path, hw=(12, 16)) -> Built:
    return _odise(base, hw, "annotations_ctx459", 459, ".tif", lambda p, t: tif16(p, enc_459_tif_from_mat(t)), 110)


# ---------------------------------------------------------------------------------------------------------------------
# COCO instances

COCO_CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 3, "name": "car", "supercategory": "vehicle"},
                   {"id": 18, "name": "dog", "supercategory": "animal"}]


def coco_instances(base: Path, hw=(12, 16), per_split=(4, 2)) -> Built:
    """COCO 2017: annotations/instances_{train2017,val2017}.json with RLE masks (exact pixels), images in
    {train2017,val2017}/. Truth: 0 background, k = 1 + index of the category in id order; masks do not overlap."""
    from pycocotools import mask as mask_utils

    root = base / "coco"
    truth, files = {}, {}
    ann_id = 1
    for s, (split, count) in enumerate(zip(("train2017", "val2017"), per_split, strict=True)):
        images, anns = [], []
        truth[f"{split}"] = {}
        for k in range(count):
            iid = 1000 * (s + 1) + k
            lab = np.zeros(hw, np.int64)
            for c, cat in enumerate(COCO_CATEGORIES):
                m = np.zeros(hw, np.uint8)
                m[2 + c * 3: 4 + c * 3, 1 + k: 6 + k + c] = 1  # one band per category, no overlap
                lab[m.astype(bool)] = c + 1
                rle = mask_utils.encode(np.asfortranarray(m))
                anns.append({"id": ann_id, "image_id": iid, "category_id": cat["id"], "iscrowd": 0,
                             "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
                             "area": float(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
                ann_id += 1
            name = f"{iid:012d}.jpg"
            image(root / split / name, hw)
            images.append({"id": iid, "file_name": name, "height": hw[0], "width": hw[1]})
            truth[split][f"{split}/{iid}"] = lab
        files[split] = root / "annotations" / f"instances_{split}.json"
        files[split].parent.mkdir(parents=True, exist_ok=True)
        files[split].write_text(json.dumps({"images": images, "annotations": anns, "categories": COCO_CATEGORIES}))
    return Built(root, truth, files, dict(files))
