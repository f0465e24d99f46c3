"""Semantic-segmentation datasets on disk, read by name, exactly as the official downloads and the usual preparation
scripts leave them: ``load_dataset("ade20k", root)``.

Every reader returns a *semantic dataset*, the protocol :class:`dense.coco.CocoDataset` follows too:
``class_names`` (index = label value), ``splits()``, ``ids(split)``, ``image_path(id)``, ``label_map(id)`` and
``identity()`` (names the dataset for the feature cache, so two datasets under one ``--cache`` never share entries).

Label maps are signed integers (:func:`dense.labels.label_dtype`: int8 for VOC, int16 for ADE-847) with
:data:`dense.labels.IGNORE` (-1) for pixels no metric counts. Each label file is decoded by the encoding of the script
that wrote it, told apart by folder and file names (never by guessing from values); a stored value that encoding cannot
hold, a colour (RGB) label, or a bit depth the script does not write raises :class:`~dense.coco.AnnotationError`
naming the file. Class names ship with dense (:mod:`dense.segdata.names`, each list with its source); no names file
is needed.

Layouts
-------
``--root`` is the folder named first on each line. ``k`` is a class index, ``ignore`` pixels count for no metric.

dataset     root: files                                                      <- written by: encoding
voc         VOC2012: JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/{train,val}.txt
              <- official VOCtrainval_11-May-2012.tar: palette PNG, 0..20, 255 (borders) = ignore
voc         VOC2012 + SegmentationClassAug/<id>.png, ImageSets/Segmentation/{trainaug,aug}.txt
              <- mmsegmentation voc_aug.py (SBD), or DeepLab's SegmentationClassAug.zip: grey PNG, 0..20, 255 = ignore;
                 an id VOC annotated is read from SegmentationClass (mmsegmentation trains trainaug as train + aug)
ade20k      ADEChallengeData2016: images/{training,validation}/<id>.jpg, annotations/{training,validation}/<id>.png
              <- official SceneParsing release: grey PNG, 0 = other -> ignore, k -> k - 1
ade20k      ADEChallengeData2016: annotations_detectron2/{training,validation}/<id>.png (when annotations/ is not there)
              <- MaskFormer prepare_ade20k_sem_seg.py, CAT-Seg prepare_ade20k_150.py: grey PNG, 0..149, 255 = ignore
ade847      ADE20K_2021_17_01: images_detectron2/{training,validation}/<id>.jpg, annotations_detectron2/{...}/<id>.tif
              <- MaskFormer prepare_ade20k_full_sem_seg.py (CAT-Seg prepare_ade20k_full.py): uint16 TIFF, 0..846,
                 65535 = ignore
coco-stuff  coco_stuff164k: images/{train2017,val2017}/<id>.jpg, annotations/{train2017,val2017}/<id>.png
              <- official stuffthingmaps_trainval2017.zip: grey PNG, COCO id - 1 (0..181), 255 = ignore; the 11 ids
                 COCO never used are an error
coco-stuff  coco_stuff164k: the same + annotations/{...}/<id>_labelTrainIds.png (read instead of <id>.png)
              <- mmsegmentation coco_stuff164k.py: grey PNG, trainIds 0..170, 255 = ignore
coco-stuff  coco-stuff: the same + annotations_detectron2/{train2017,val2017}/<id>.png
              <- CAT-Seg prepare_coco_stuff.py: trainIds 0..170, 255 = ignore
coco-stuff  coco: {train2017,val2017}/<id>.jpg, stuffthingmaps_detectron2/{train2017,val2017}/<id>.png
              <- zsseg/SAN prepare_coco_stuff_164k_sem_seg.py: trainIds 0..170, 255 = ignore (stuffthingmaps/: raw)
context59   VOC2010: JPEGImages/, SegmentationClassContext/<id>.png, ImageSets/SegmentationContext/{train,val}.txt
              <- mmsegmentation pascal_context.py: grey PNG, 0 = background -> ignore, k -> k - 1
context59   VOC2010: JPEGImages/, annotations_detectron2/pc59_val/<id>.png (split val)
              <- CAT-Seg prepare_pascal_context_59.py: grey PNG, 0..58, 255 = ignore
context59   pcontext: {train,val}/image/<id>.jpg, {train,val}/label/<id>.png
              <- SAN prepare_pcontext_sem_seg_59cls.py: 0..58, 255 = ignore
context59   pascal_ctx_d2: images/{training,validation}/<id>.jpg, annotations_ctx59/{training,validation}/<id>.png
              <- ODISE prepare_pascal_ctx_sem_seg.py: 0..58, 255 = ignore
context459  VOC2010: JPEGImages/, trainval/<id>.mat, labels.txt, and a split list: pascalcontext_{train,val}.txt
            (CAT-Seg's pascalcontext_val.txt) or ImageSets/SegmentationContext/{train,val}.txt (mmsegmentation), or
            without those VOC2010's own ImageSets/Main/{train,val}.txt: the dataset's split, 4,998 / 5,105 images;
            the converters' lists come from the Detail API and hold 4,996 / 5,104
              <- official trainval.tar.gz: .mat LabelMap (uint16), 0 = unlabeled -> ignore, k -> k - 1
context459  VOC2010: JPEGImages/, annotations_detectron2/pc459_val/<id>.tif (split val)
              <- CAT-Seg prepare_pascal_context_459.py: uint16 TIFF, LabelMap - 1 (0..458), 65535 = ignore
context459  pcontext_full: {train,val}/image/<id>.jpg, {train,val}/label/<id>.tif
              <- SAN prepare_pcontext_sem_seg_459cls.py: uint16 TIFF, 0..458, 65535 = ignore
context459  pascal_ctx_d2: images/{training,validation}/<id>.jpg, annotations_ctx459/{training,validation}/<id>.tif
              <- ODISE prepare_pascal_ctx_full_sem_seg.py: uint16 TIFF, 0..458, 65535 = ignore
coco        COCO: annotations/instances_{train2017,val2017}.json, {train2017,val2017}/<id>.jpg
              <- official COCO 2017: polygons / RLE through pycocotools, 0 = background

Splits are the lists' stems (voc: train, val, trainaug, aug; context: train, val) or the folders' names (ade:
training, validation; coco-stuff, coco: train2017, val2017); SAN's and ODISE's Context folders are read as train and
val. A split that is not there is an error naming the list or folder it would come from.

Splits and choosing
-------------------
None of these has a labelled split beside the one results are reported on. :data:`PROTOCOLS` names, per dataset,
the split heads are trained on and the one reported; :func:`with_holdout` carves a seeded holdout (10 %, seed 0)
from the training split, so heads are chosen on ``holdout``, trained on ``fit`` (the rest), and the reported split is
never used to choose.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dense.errors import InputError, LayoutError
from dense.segdata._core import (
    Encoding,
    LabelSource,
    SegDataset,
    Split,
    apply_lut,
    make_lut,
    read_label_file,
)
from dense.segdata.ade import ade20k, ade847
from dense.segdata.coco_sets import CocoSplits, coco_stuff
from dense.segdata.names import (
    ADE20K_CLASSES,
    ADE847_CLASSES,
    COCO_STUFF_CLASSES,
    COCO_STUFF_UNUSED,
    CONTEXT59_CLASSES,
    CONTEXT459_CLASSES,
    VOC_CLASSES,
)
from dense.segdata.pascal import context59, context459, voc

__all__ = ["load_dataset", "READERS", "PROTOCOLS", "LAYOUTS_HELP", "SegDataset", "CocoSplits", "with_holdout",
           "holdout_ids", "WithHoldout", "split_list", "read_label_file", "VOC_CLASSES", "ADE20K_CLASSES",
           "ADE847_CLASSES", "COCO_STUFF_CLASSES", "COCO_STUFF_UNUSED", "CONTEXT59_CLASSES", "CONTEXT459_CLASSES",
           "Encoding", "LabelSource", "Split", "apply_lut", "make_lut"]

# the "Layouts" section above, for `dense eval probe --help`
LAYOUTS_HELP = "dataset layouts (--dataset NAME --root DIR)\n" + __doc__[
    __doc__.index("``--root`` is"):__doc__.index("Splits and choosing")].rstrip().replace("``", "")

READERS = {"voc": voc, "ade20k": ade20k, "ade847": ade847, "coco-stuff": coco_stuff, "context59": context59,
           "context459": context459, "coco": CocoSplits}

# dataset -> (split heads are trained on, split results are reported on); neither has a separate val split
PROTOCOLS = {"voc": ("train", "val"), "ade20k": ("training", "validation"), "ade847": ("training", "validation"),
             "coco-stuff": ("train2017", "val2017"), "context59": ("train", "val"), "context459": ("train", "val"),
             "coco": ("train2017", "val2017")}


def load_dataset(name: str, root: str | os.PathLike, *, splits: Iterable[str] = (), check_files: bool = False,
                 progress: bool = False):
    """The dataset ``name`` (a key of :data:`READERS`) under ``root``.

    Each of ``splits`` is checked to be there (an error names the list or folder it would come from); with
    ``check_files``, its label files too (channels, bit depth and size against the image, from headers): errors come
    before anything expensive starts."""
    if name not in READERS:
        raise InputError(f"unknown dataset {name!r}; one of {', '.join(READERS)}")
    if not Path(root).is_dir():
        raise LayoutError(root, f"{name} root is not a folder")
    ds = READERS[name](root)
    for s in splits:
        ds.ids(s)
    if check_files:
        for s in splits:
            ds.check_files(s, progress=progress)
    return ds


# ---------------------------------------------------------------------------------------------------------------------
# A seeded holdout to choose on


def holdout_ids(ids: Iterable, fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """``(fit, holdout)``: a seeded ``fraction`` of ``ids`` (at least 1, at most all but 1), both sorted.

    Depends only on the sorted ids, ``fraction`` and ``seed``, not on the order they are given in."""
    ids = sorted(ids)
    if len(ids) < 2:
        raise InputError(f"{len(ids)} images: too few to carve a holdout split")
    if not 0 < fraction < 1:
        raise InputError(f"holdout fraction must be in (0, 1), got {fraction}")
    n = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    pick = set(np.random.default_rng(seed).permutation(len(ids))[:n].tolist())
    return [i for k, i in enumerate(ids) if k not in pick], [i for k, i in enumerate(ids) if k in pick]


class WithHoldout:
    """``base`` plus two splits carved from ``source``: ``fit`` (the rest) and ``holdout`` (``fraction``, seeded).

    Everything else (images, labels, class names, cache identity) is ``base``'s."""

    FIT, HOLDOUT = "fit", "holdout"

    def __init__(self, base, source: str, fraction: float = 0.1, seed: int = 0):
        self.base, self.source = base, source
        self.fit_ids, self.holdout_ids = holdout_ids(base.ids(source), fraction, seed)
        digest = hashlib.sha256("\n".join(map(str, self.holdout_ids)).encode()).hexdigest()[:16]
        self.holdout = {"from": source, "fraction": fraction, "seed": seed, "images": len(self.holdout_ids),
                        "fit_images": len(self.fit_ids), "ids_sha256": digest}

    def __getattr__(self, name):
        return getattr(self.base, name)

    def splits(self) -> set[str]:
        return set(self.base.splits()) | {self.FIT, self.HOLDOUT}

    def ids(self, split: str | None = None) -> list:
        if split == self.FIT:
            return list(self.fit_ids)
        if split == self.HOLDOUT:
            return list(self.holdout_ids)
        return self.base.ids(split)


def with_holdout(base, source: str, fraction: float = 0.1, seed: int = 0) -> WithHoldout:
    return WithHoldout(base, source, fraction, seed)


def split_list(dataset, split: str | None) -> str | None:
    """Where the ids of ``split`` of ``dataset`` come from (:meth:`SegDataset.split_list`; a holdout's: its source
    split's list, carved), or None for a dataset that does not say (COCO files: the images' ``split`` field)."""
    if isinstance(dataset, WithHoldout) and split in (WithHoldout.FIT, WithHoldout.HOLDOUT):
        inner = split_list(dataset.base, dataset.source)
        return None if inner is None else f"{split} carved from {dataset.source}: {inner}"
    say = getattr(dataset, "split_list", None)
    return None if say is None or split is None else say(split)
