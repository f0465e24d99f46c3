"""COCO-Stuff 164k (the raw stuffthingmaps and the converters' trainIds) and COCO 2017 instances."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dense.coco import load_coco
from dense.errors import AnnotationError, LayoutError
from dense.segdata._core import (
    Encoding,
    LabelSource,
    SegDataset,
    Split,
    first_dir,
    identity,
)
from dense.segdata.names import COCO_STUFF_CLASSES, COCO_STUFF_UNUSED

SPLITS = ("train2017", "val2017")

_USED = [v for v in range(182) if v not in COCO_STUFF_UNUSED]  # stored value (COCO id - 1) of each of the 171
_RAW = Encoding.of("COCO-Stuff stuffthingmaps: grey PNG, COCO id - 1 (0..181, 11 ids unused), 255 = unlabeled", 8,
                   {v: k for k, v in enumerate(_USED)}, ignore=[255])
_TRAIN_IDS = Encoding.of("COCO-Stuff trainIds (mmsegmentation coco_stuff164k.py, Detectron2-style "
                         "stuffthingmaps_detectron2/annotations_detectron2): grey PNG, 0..170, 255 = unlabeled", 8,
                         {k: k for k in range(171)}, ignore=[255])


def coco_stuff(root: str | os.PathLike) -> SegDataset:
    """COCO-Stuff 164k, 171 classes (see :mod:`dense.segdata` for the layouts).

    Per split, label folders are tried in this order; ids come from the first one present, and each id's label from
    the first file that exists: ``annotations/<split>/<id>_labelTrainIds.png`` (mmsegmentation), ``annotations/<split>/
    <id>.png`` (raw), ``stuffthingmaps/<split>/`` (raw), ``annotations_detectron2/<split>/`` (CAT-Seg),
    ``stuffthingmaps_detectron2/<split>/`` (zsseg/SAN). Images: ``images/<split>/`` or ``<split>/``."""
    root = Path(root)
    groups = [[("annotations", "_labelTrainIds.png", _TRAIN_IDS), ("annotations", ".png", _RAW)],
              [("stuffthingmaps", ".png", _RAW)],
              [("annotations_detectron2", ".png", _TRAIN_IDS)],
              [("stuffthingmaps_detectron2", ".png", _TRAIN_IDS)]]
    found, layouts = {}, set()
    for split in SPLITS:
        sources, listed = [], False
        for group in groups:
            present = (root / group[0][0] / split).is_dir()
            for folder, suffix, enc in group:
                sources.append(LabelSource(root / folder / split, suffix, enc, listed=present and not listed))
            if present:
                layouts.add(group[0][0])
            listed = listed or present
        if listed:
            image_dir = first_dir(root / "images" / split, root / split) or root / "images" / split
            found[split] = Split(image_dir, sources)
    if not found:
        raise LayoutError(root / "annotations", "no COCO-Stuff label folders (annotations/{train2017,val2017} with "
                          "stuffthingmaps PNGs, or stuffthingmaps_detectron2/, annotations_detectron2/)")
    return SegDataset("coco-stuff", root, list(COCO_STUFF_CLASSES), found, " + ".join(sorted(layouts)),
                      {"*": str(root / "annotations/{split}")})


class CocoSplits:
    """COCO 2017 instances, one file per split, as one semantic dataset. Ids are ``"<split>/<image id>"``.

    A split is there when ``annotations/instances_<split>.json`` is; asking for one that is not raises naming that
    file."""

    name = "coco"

    def __init__(self, root: str | os.PathLike, splits: Iterable[str] = SPLITS):
        self.root = Path(root)
        self._parts = {s: self.root / "annotations" / f"instances_{s}.json" for s in splits}
        self._parts = {s: p for s, p in self._parts.items() if p.is_file()}
        if not self._parts:
            raise LayoutError(self.root / "annotations" / f"instances_{next(iter(splits))}.json",
                              "no COCO instances file (annotations/instances_{train2017,val2017}.json)")
        self._loaded: dict = {}
        self.class_names = list(self._part(next(iter(self._parts))).class_names)

    def _part(self, split: str):
        if split not in self._parts:
            path = self.root / "annotations" / f"instances_{split}.json"
            raise LayoutError(path, f"no COCO instances file for split {split!r} (found: "
                              f"{', '.join(sorted(self._parts))})")
        if split not in self._loaded:
            images = self.root / split
            if not images.is_dir():
                raise LayoutError(images, f"no image folder for split {split!r}")
            ds = load_coco(self._parts[split], images)
            if self._loaded and list(ds.class_names) != self.class_names:
                raise AnnotationError(f"{self._parts[split]}: categories differ from the other split's")
            self._loaded[split] = ds
        return self._loaded[split]

    def splits(self) -> set[str]:
        return set(self._parts)

    def check_files(self, split: str, *, progress: bool = False) -> None:
        """Before any expensive work: each image of ``split`` is the size its instances file says, in the geometry
        it is read in (:meth:`dense.coco.CocoDataset.check_files`)."""
        self._part(split).check_files(progress=progress)

    def exif_tagged(self, ids) -> int:
        """How many images of ``ids`` carry an EXIF orientation tag (:meth:`dense.coco.CocoDataset.exif_tagged`)."""
        return sum(ds.exif_tagged([iid]) for ds, iid in map(self._split, ids))

    def identity(self) -> str:
        return identity("coco", self.root)

    def ids(self, split: str | None = None) -> list[str]:
        if split is None:
            return sorted(i for s in self._parts for i in self.ids(s))
        return [f"{split}/{i}" for i in self._part(split).ids()]

    def _split(self, image_id: str):
        split, _, iid = str(image_id).partition("/")
        return self._part(split), int(iid)

    def image_path(self, image_id: str) -> Path:
        ds, iid = self._split(image_id)
        return ds.image_path(iid)

    def label_map(self, image_id: str) -> np.ndarray:
        ds, iid = self._split(image_id)
        return ds.label_map(iid)

    def class_masks(self, image_id: str) -> dict[int, np.ndarray]:
        ds, iid = self._split(image_id)
        return ds.class_masks(iid)
