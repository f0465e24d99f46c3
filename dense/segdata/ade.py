"""ADE20K: the 150-class SceneParsing release and the 847-class ADE20K-full, as their scripts leave them."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from dense.errors import LayoutError
from dense.segdata._core import Encoding, LabelSource, SegDataset, Split
from dense.segdata.names import ADE20K_CLASSES, ADE847_CLASSES

SPLITS = ("training", "validation")

_ADE150 = Encoding.of("ADEChallengeData2016 annotations: grey PNG, 0 = other, 1..150", 8,
                      {k: k - 1 for k in range(1, 151)}, ignore=[0])
_ADE150_D2 = Encoding.of("MaskFormer/CAT-Seg annotations_detectron2: grey PNG, 0..149, 255 = other", 8,
                         {k: k for k in range(150)}, ignore=[255])
_ADE847 = Encoding.of("MaskFormer prepare_ade20k_full_sem_seg.py: uint16 .tif, 0..846, 65535 = unlabeled", 16,
                      {k: k for k in range(847)}, ignore=[65535])


def _found(root: Path, images: str, sources: list[tuple[str, str, Encoding]]) -> dict[str, Split]:
    found = {}
    for split in SPLITS:
        srcs = [LabelSource(root / folder / split, suffix, enc) for folder, suffix, enc in sources]
        listed = next((s for s in srcs if s.folder.is_dir()), None)  # ids from one folder: the first present
        if listed is not None:
            others = [replace(s, listed=False) for s in srcs if s is not listed]
            found[split] = Split(root / images / split, [listed, *others])
    return found


def ade20k(root: str | os.PathLike) -> SegDataset:
    """ADE20K, 150 classes (``ADEChallengeData2016``): ``annotations/`` as released (reduce-zero-label) or the
    ``annotations_detectron2/`` that MaskFormer's ``prepare_ade20k_sem_seg.py`` and CAT-Seg write (0-based)."""
    root = Path(root)
    found = _found(root, "images", [("annotations", ".png", _ADE150), ("annotations_detectron2", ".png", _ADE150_D2)])
    if not found:
        raise LayoutError(root / "annotations", "no ADE20K label folders (annotations/{training,validation}, or "
                          "annotations_detectron2/)")
    layout = " + ".join(n for n in ("annotations", "annotations_detectron2") if (root / n).is_dir())
    return SegDataset("ade20k", root, list(ADE20K_CLASSES), found, layout, {"*": str(root / "annotations/{split}")})


def ade847(root: str | os.PathLike) -> SegDataset:
    """ADE20K-full, 847 classes, as MaskFormer's ``prepare_ade20k_full_sem_seg.py`` writes it (``ADE20K_2021_17_01``):
    ``images_detectron2/{training,validation}/<id>.jpg``, ``annotations_detectron2/{...}/<id>.tif`` (uint16)."""
    root = Path(root)
    found = _found(root, "images_detectron2", [("annotations_detectron2", ".tif", _ADE847)])
    if not found:
        raise LayoutError(root / "annotations_detectron2", "no ADE20K-full labels (MaskFormer's "
                          "prepare_ade20k_full_sem_seg.py writes annotations_detectron2/{training,validation}/*.tif)")
    return SegDataset("ade847", root, list(ADE847_CLASSES), found, "annotations_detectron2",
                      {"*": str(root / "annotations_detectron2/{split}")})
