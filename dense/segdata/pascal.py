"""PASCAL VOC 2012 (+ the SBD augmentation) and PASCAL Context (59 and 459 classes), as their scripts leave them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from dense.errors import LayoutError
from dense.segdata._core import (
    Encoding,
    LabelSource,
    SegDataset,
    Split,
    first_dir,
    names_file,
    read_names,
)
from dense.segdata.names import CONTEXT59_CLASSES, CONTEXT459_CLASSES, VOC_CLASSES


def _lists(folder: Path) -> dict[str, Path]:
    """``{split: folder/split.txt}`` for the split lists in ``folder`` (none when it is missing)."""
    return {p.stem: p for p in sorted(folder.glob("*.txt"))} if folder.is_dir() else {}


def _deeper(root: Path, name: str) -> str:
    """A hint when ``root`` is the VOCdevkit above the folder meant."""
    return f"; --root is the {name} folder: {root / name}?" if (root / name).is_dir() else ""


# ---------------------------------------------------------------------------------------------------------------------
# VOC


def voc(root: str | os.PathLike, class_names: Iterable[str] | None = None) -> SegDataset:
    """PASCAL VOC 2012 (``VOCdevkit/VOC2012``): the official ``SegmentationClass`` palette PNGs and, where present,
    mmsegmentation's ``voc_aug.py`` output (``SegmentationClassAug`` grey PNGs, ``trainaug.txt``/``aug.txt``).

    An id's label is ``SegmentationClass/<id>.png`` when VOC annotated it, else ``SegmentationClassAug/<id>.png``:
    mmsegmentation trains ``trainaug`` as VOC ``train`` (its own labels) + ``aug`` (SBD's), and DeepLab's
    ``SegmentationClassAug.zip`` holds VOC's images too. ``classes.txt`` (one name a line) replaces the 21 names, for
    a dataset of other classes in VOC's layout."""
    root = Path(root)
    if class_names is None:  # a VOC-layout dataset of other classes names them in classes.txt
        class_names = read_names(root / "classes.txt") if (root / "classes.txt").is_file() else VOC_CLASSES
    names = list(class_names)
    n = len(names)
    official = Encoding.of("VOC SegmentationClass: palette PNG, 0..20, 255 = boundary", 8,
                           {k: k for k in range(n)}, ignore=[255])
    aug = Encoding.of("SegmentationClassAug (mmsegmentation voc_aug.py / DeepLab): grey PNG, 0..20, 255 = ignore", 8,
                      {k: k for k in range(n)}, ignore=[255])
    sources = [LabelSource(root / "SegmentationClass", ".png", official),
               LabelSource(root / "SegmentationClassAug", ".png", aug)]
    if not any(s.folder.is_dir() for s in sources):
        raise LayoutError(root / "SegmentationClass", "no VOC label folder (SegmentationClass or "
                          f"SegmentationClassAug){_deeper(root, 'VOC2012')}")
    seg_lists = root / "ImageSets" / "Segmentation"
    # DeepLab's lists (train_aug.txt: "/JPEGImages/x.jpg /SegmentationClassAug/x.png" lines) where present
    lists = {**_lists(root / "ImageSets" / "SegmentationAug"), **_lists(seg_lists)}
    if not lists:
        raise LayoutError(seg_lists, "no VOC split lists (train.txt, val.txt; trainaug.txt from voc_aug.py)")
    found = {s: Split(root / "JPEGImages", sources, p) for s, p in lists.items()}
    layout = "VOC2012" + (" + SBD augmentation" if (root / "SegmentationClassAug").is_dir() else "")
    return SegDataset("voc", root, names, found, layout, {"*": str(seg_lists / "{split}.txt")})


# ---------------------------------------------------------------------------------------------------------------------
# PASCAL Context

# converted 0-based files (CAT-Seg, SAN, ODISE): class k - 1, 255 (59) / 65535 (459) = unlabeled
_C59_MMSEG = Encoding.of("mmsegmentation pascal_context.py: grey PNG, 0 = background, 1..59", 8,
                         {k: k - 1 for k in range(1, 60)}, ignore=[0])
_C59_ZERO = Encoding.of("CAT-Seg/SAN/ODISE 59-class PNG: 0..58, 255 = unlabeled", 8, {k: k for k in range(59)},
                        ignore=[255])
_C459_MAT = Encoding.of("official PASCAL Context .mat: LabelMap 0 = unlabeled, 1..459", 0,
                        {k: k - 1 for k in range(1, 460)}, ignore=[0])
_C459_TIF = Encoding.of("CAT-Seg/SAN/ODISE 459-class uint16 .tif: LabelMap - 1, 0..458, 65535 = unlabeled", 16,
                        {k: k for k in range(459)}, ignore=[65535])

_SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "validation")}  # SAN's and ODISE's folder names


# PASCAL Context's own split is VOC2010's (the dataset labels every VOC2010 train/val image): ImageSets/Main/train.txt
# and val.txt, 4,998 and 5,105 images. The converters' lists (mmsegmentation's ImageSets/SegmentationContext, CAT-Seg's
# pascalcontext_val.txt; 4,996 and 5,104 images) come from the Detail API and leave 2 + 1 of them out.
OFFICIAL_SPLIT = "VOC2010 ImageSets/Main: PASCAL Context's own split (4,998 train / 5,105 val in the release)"
CONVERTER_LISTS = {"pascalcontext_": "CAT-Seg's list (Detail API)",
                   "SegmentationContext": "mmsegmentation's list (Detail API: 4,996 train / 5,104 val in the release)"}


def _context(root: Path, name: str, names: list[str], *, voc2010: list[tuple[str, Path, str, Encoding, bool]],
             san: tuple[str, Encoding], odise: tuple[str, str, Encoding], official: Path | None = None
             ) -> SegDataset:
    """A Context dataset under ``root``: VOC2010 (split lists + label folders), SAN's ``{train,val}/{image,label}``
    or ODISE's ``images/{training,validation}`` + ``<annotations>/{...}``. Splits are called train and val.

    ``official``: the folder of the official labels (``trainval/``); where it is, a split that no converter's list
    or folder gives comes from VOC2010's own ``ImageSets/Main/{train,val}.txt``."""
    found: dict[str, Split] = {}
    layouts = []
    if (root / "JPEGImages").is_dir():  # VOCdevkit/VOC2010
        lists = {**{p.stem.removeprefix("pascalcontext_"): (p, CONVERTER_LISTS["pascalcontext_"])
                    for p in sorted(root.glob("pascalcontext_*.txt"))},
                 **{s: (p, CONVERTER_LISTS["SegmentationContext"])
                    for s, p in _lists(root / "ImageSets" / "SegmentationContext").items()}}
        sources = [LabelSource(folder, suffix, enc, listed) for _, folder, suffix, enc, listed in voc2010]
        for split, (path, what) in lists.items():
            found[split] = Split(root / "JPEGImages", sources, path, what)
        # a converter that wrote one split's folder (CAT-Seg's pc59_val, pc459_val) gives its ids without a list
        for what, folder, _, _, listed in voc2010:
            split = "val" if folder.name.endswith("_val") else None
            if listed and split and split not in found and folder.is_dir():
                found[split] = Split(root / "JPEGImages", sources, what=f"{what}'s files")
            if folder.is_dir():
                layouts.append(what)
        main = root / "ImageSets" / "Main"
        if official is not None and official.is_dir():
            for split in ("train", "val"):  # only these two: Main/ also holds per-class lists (aeroplane_train.txt)
                if split not in found and (main / f"{split}.txt").is_file():
                    found[split] = Split(root / "JPEGImages", sources, main / f"{split}.txt", OFFICIAL_SPLIT)
        hint = {"*": f"{root / 'ImageSets' / 'SegmentationContext' / '{split}.txt'} or "
                     f"{root / 'pascalcontext_{split}.txt'}"
                     + (f" or {main / '{split}.txt'}" if official is not None else "")}
        if not layouts:
            raise LayoutError(voc2010[0][1], f"no {name} labels under {root} (looked for "
                              f"{', '.join(str(f.relative_to(root)) for _, f, _, _, _ in voc2010)})")
    elif first_dir(root / "val" / "label", root / "train" / "label"):  # SAN: pcontext / pcontext_full
        suffix, enc = san
        for split in ("train", "val"):
            if (root / split / "label").is_dir():
                found[split] = Split(root / split / "image", [LabelSource(root / split / "label", suffix, enc)])
        layouts.append(f"SAN ({root.name})")
        hint = {"*": str(root / "{split}" / "label")}
    elif (root / "images").is_dir():  # ODISE: pascal_ctx_d2
        ann, suffix, enc = odise
        for split, (_, folder) in _SPLIT_DIRS.items():
            if (root / ann / folder).is_dir():
                found[split] = Split(root / "images" / folder, [LabelSource(root / ann / folder, suffix, enc)])
        if not found:
            raise LayoutError(root / ann, f"no ODISE {name} labels (prepare_pascal_ctx_*.py writes {ann}/)")
        layouts.append(f"ODISE ({ann})")
        hint = {"*": str(root / ann / "{split}")}
    else:
        raise LayoutError(root / "JPEGImages", "not a PASCAL Context folder: no VOC2010 JPEGImages/, SAN "
                          f"val/label/ or ODISE images/{_deeper(root, 'VOC2010')}")
    return SegDataset(name, root, names, found, " + ".join(layouts), hint)


def context59(root: str | os.PathLike) -> SegDataset:
    """PASCAL Context, 59 classes (see :mod:`dense.segdata`): mmsegmentation's ``SegmentationClassContext`` under
    VOC2010, CAT-Seg's ``annotations_detectron2/pc59_val``, SAN's ``pcontext`` or ODISE's ``annotations_ctx59``."""
    root = Path(root)
    return _context(root, "context59", list(CONTEXT59_CLASSES), voc2010=[
        ("mmsegmentation SegmentationClassContext", root / "SegmentationClassContext", ".png", _C59_MMSEG, False),
        ("CAT-Seg pc59_val", root / "annotations_detectron2" / "pc59_val", ".png", _C59_ZERO, True)],
        san=(".png", _C59_ZERO), odise=("annotations_ctx59", ".png", _C59_ZERO))


def context459(root: str | os.PathLike) -> SegDataset:
    """PASCAL Context, 459 classes (see :mod:`dense.segdata`): the official ``trainval/<id>.mat`` under VOC2010 with a
    converter's split list or, without one, VOC2010's own ``ImageSets/Main/{train,val}.txt`` (the split in use is
    :meth:`~dense.segdata.SegDataset.split_list`); CAT-Seg's ``annotations_detectron2/pc459_val``, SAN's
    ``pcontext_full`` or ODISE's ``annotations_ctx459``. Names: the official ``labels.txt`` where it is, else the same
    list bundled."""
    root = Path(root)
    names = names_file(root / "labels.txt", CONTEXT459_CLASSES)
    return _context(root, "context459", names, voc2010=[
        ("CAT-Seg pc459_val", root / "annotations_detectron2" / "pc459_val", ".tif", _C459_TIF, True),
        ("official trainval/*.mat", root / "trainval", ".mat", _C459_MAT, False)],
        san=(".tif", _C459_TIF), odise=("annotations_ctx459", ".tif", _C459_TIF), official=root / "trainval")
