"""Semantic-segmentation datasets on disk, read by name: ``load_dataset("ade20k", root)``.

Every reader returns a *semantic dataset*, the protocol :class:`dense.coco.CocoDataset` follows too:
``class_names`` (index = label value), ``splits()``, ``ids(split)``, ``image_path(id)``, ``label_map(id)`` and
``identity()`` (names the dataset for the feature cache, so two datasets under one ``--cache`` never share entries).

Label maps are signed integers (:func:`dense.metrics.label_dtype`: int8 for VOC, int16 for ADE-847) with
:data:`dense.labels.IGNORE` (-1) for pixels no metric counts. Stored values are mapped through a lookup table; a value
the table does not know raises :class:`~dense.coco.AnnotationError` naming the file.

Layouts (``root`` is the folder given as ``--root``)
----------------------------------------------------
===============  ====================================================================================================
``voc``          VOC2012: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs; 0..20, 255 = boundary
                 -> ignore), ``ImageSets/Segmentation/{train,val}.txt``. 21 classes (background counted), or
                 ``classes.txt``.
``ade20k``       ADEChallengeData2016: ``images/{training,validation}/<id>.jpg``, ``annotations/{...}/<id>.png``;
                 reduce-zero-label: 0 ("other") -> ignore, k -> k - 1. 150 classes (mmsegmentation's names).
``ade847``       ADE20K-full as Mask2Former's ``prepare_ade20k_full_sem_seg.py`` writes it (``ADE20K_2021_17_01``):
                 ``images_detectron2/{training,validation}/<id>.jpg``, ``annotations_detectron2/{...}/<id>.tif``
                 (or ``.png``), uint16 0..846, 65535 = ignore. Names from ``classes.txt`` (847 lines).
``coco-stuff``   COCO-Stuff 164k as its README unpacks it: ``images/{train2017,val2017}/<id>.jpg``,
                 ``annotations/{...}/<id>.png`` (``stuffthingmaps_trainval2017``): values 0..181 = COCO id - 1,
                 255 = unlabeled -> ignore; the 171 ids in use map to 0..170 (mmsegmentation's order and names).
``context59``    VOC2010 with mmsegmentation's converted labels: ``JPEGImages/``, ``SegmentationClassContext/<id>.png``
                 (0 = background -> ignore, 1..59 -> 0..58), ``ImageSets/SegmentationContext/{train,val}.txt``.
``context459``   VOC2010, the full 459 classes: ``JPEGImages/``, the same ``ImageSets/SegmentationContext`` lists, and
                 per image either ``SegmentationClassContext459/<id>.png`` (16-bit), ``.npy`` or ``.tif``, or the
                 official ``trainval/<id>.mat`` (``LabelMap``). Values are the official ones: 0 = unlabeled ->
                 ignore, k -> k - 1 for k in 1..459. Names from the official ``labels.txt`` (``k: name``) or
                 ``classes.txt``.
``coco``         COCO 2017 instances: ``annotations/instances_{train2017,val2017}.json``, ``{train2017,val2017}/``;
                 semantic labels as :meth:`dense.coco.CocoDataset.label_map` (background + the categories).
===============  ====================================================================================================

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dense.coco import AnnotationError, load_coco
from dense.labels import IGNORE, label_dtype
from dense.preprocess import IMAGE_EXTS

_BAD = -2  # a stored value the lookup table does not allow

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat",
    "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal",
    "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag")

COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "banner",
    "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood")
# stuffthingmaps values (COCO category id - 1) of the 11 thing ids COCO never used: they carry no class
COCO_STUFF_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

CONTEXT59_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table", "dog", "horse",
    "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor", "bag", "bed", "bench", "book",
    "building", "cabinet", "ceiling", "cloth", "computer", "cup", "door", "fence", "floor", "flower", "food", "grass",
    "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform", "sign", "plate", "road", "rock",
    "shelves", "sidewalk", "sky", "snow", "bedclothes", "track", "tree", "truck", "wall", "water", "window", "wood")



# ---------------------------------------------------------------------------------------------------------------------
# Reading stored label files


def read_label_file(path: str | os.PathLike) -> np.ndarray:
    """The stored values of a label file as int64 ``[H, W]``: a PNG/TIFF (palette, 8- or 16-bit grey; a palette PNG
    gives its indices, not colours), a ``.npy`` array, or an official PASCAL Context ``.mat`` (``LabelMap``)."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise AnnotationError(f"{path}: not a label array ({e})") from e
    elif path.suffix == ".mat":
        from scipy.io import loadmat

        arr = loadmat(str(path)).get("LabelMap")
        if arr is None:
            raise AnnotationError(f"{path}: no 'LabelMap' (expected an official PASCAL Context .mat file)")
    else:
        from PIL import Image

        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise AnnotationError(f"{path}: label map has mode {im.mode}; expected one channel of class indices")
            arr = np.asarray(im)
    arr = np.asarray(arr)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise AnnotationError(f"{path}: expected an integer label map [H, W], got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def make_lut(size: int, mapping: dict[int, int] | None = None, *, ignore: Iterable[int] = ()) -> np.ndarray:
    """A lookup table stored value -> label: ``mapping`` (default: none), ``ignore`` values -> IGNORE, the rest not
    allowed."""
    lut = np.full(size, _BAD, np.int64)
    for v, k in (mapping or {}).items():
        lut[v] = k
    lut[list(ignore)] = IGNORE
    return lut


def apply_lut(stored: np.ndarray, lut: np.ndarray | None, num_classes: int, path: Path) -> np.ndarray:
    """Stored values -> labels (``label_dtype(num_classes)``); an unknown value raises naming ``path``."""
    if lut is None:
        label = stored
        bad = ((label < 0) | (label >= num_classes)) & (label != IGNORE)
    else:
        out_of_table = (stored < 0) | (stored >= len(lut))
        label = lut[np.clip(stored, 0, len(lut) - 1)]
        bad = out_of_table | (label == _BAD)
    if bad.any():
        raise AnnotationError(f"{path}: stored label values {np.unique(stored[bad])[:8].tolist()} are not among "
                              f"this dataset's {num_classes} classes and ignore values")
    return label.astype(label_dtype(num_classes))


def _read_names(path: Path) -> list[str]:
    """One class name a line; ``k: name`` lines (PASCAL Context's ``labels.txt``) give ``name``."""
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        head, sep, tail = line.partition(":")
        names.append(tail.strip() if sep and head.strip().isdigit() else line)
    return names


def _identity(kind: str, *paths: Path) -> str:
    h = hashlib.sha256("\0".join(str(Path(p).resolve()) for p in paths).encode()).hexdigest()[:12]
    return f"{kind}-{h}"


# ---------------------------------------------------------------------------------------------------------------------
# The dataset type


@dataclass
class SegDataset:
    """Images + label files + class names, split by split.

    ``layout[split] = (image_dir, label_dir, ids or None)``: ``ids`` None lists the label files of ``label_dir``.
    ``label_exts``: label suffixes tried in order; ``lut``: stored value -> label (None: stored values are labels, with
    IGNORE for -1). ``label_dirs_extra``: other folders tried for a label (Context-459's ``trainval/*.mat``).
    """

    name: str
    root: Path
    class_names: list[str]
    layout: dict[str, tuple[Path, Path, list[str] | None]]
    lut: np.ndarray | None = None
    label_exts: tuple[str, ...] = (".png",)
    label_dirs_extra: tuple[tuple[Path, str], ...] = ()
    meta: dict = field(default_factory=dict)
    _ids: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _split_of: dict[str, str] = field(default_factory=dict, repr=False)

    def splits(self) -> set[str]:
        return set(self.layout)

    def identity(self) -> str:
        """The cache namespace of this dataset: its kind and resolved root."""
        return _identity(self.name, self.root)

    def ids(self, split: str | None = None) -> list[str]:
        """Image ids (file stems) of ``split`` (None: every split), sorted."""
        if split is None:
            return sorted({i for s in self.layout for i in self.ids(s)})
        if split not in self.layout:
            raise KeyError(f"{self.root}: {self.name} has no split {split!r} (has {sorted(self.layout)})")
        if split not in self._ids:
            image_dir, label_dir, ids = self.layout[split]
            if ids is None:
                if not label_dir.is_dir():
                    raise FileNotFoundError(2, f"{self.name} label folder of split {split!r} is missing",
                                            str(label_dir))
                ids = sorted({p.stem for ext in self.label_exts for p in label_dir.glob(f"*{ext}")})
            self._ids[split] = sorted(ids)
            for i in self._ids[split]:
                self._split_of.setdefault(i, split)
        return list(self._ids[split])

    def _where(self, image_id: str) -> tuple[Path, Path]:
        if not self._split_of:
            for s in self.layout:
                if s not in self._ids:
                    try:
                        self.ids(s)
                    except FileNotFoundError:  # a split that is not there (e.g. only val2017 downloaded)
                        continue
        split = self._split_of.get(str(image_id))
        if split is None:
            raise KeyError(f"{self.root}: no image id {image_id!r} in {self.name}")
        return self.layout[split][:2]

    def image_path(self, image_id: str) -> Path:
        image_dir, _ = self._where(image_id)
        for ext in IMAGE_EXTS:
            p = image_dir / f"{image_id}{ext}"
            if p.exists():
                return p
        raise FileNotFoundError(2, f"no image for id {image_id!r} (tried {', '.join(IMAGE_EXTS)})",
                                str(image_dir / f"{image_id}.jpg"))

    def label_path(self, image_id: str) -> Path:
        _, label_dir = self._where(image_id)
        tried = [(label_dir, ext) for ext in self.label_exts] + list(self.label_dirs_extra)
        for d, ext in tried:
            p = d / f"{image_id}{ext}"
            if p.exists():
                return p
        raise FileNotFoundError(2, f"no label file for image id {image_id!r}", str(tried[0][0] / image_id))

    def label_map(self, image_id: str) -> np.ndarray:
        """Signed int ``[H, W]`` (:func:`~dense.metrics.label_dtype`), IGNORE for pixels no metric counts."""
        path = self.label_path(image_id)
        return apply_lut(read_label_file(path), self.lut, len(self.class_names), path)

    def class_masks(self, image_id: str) -> dict[int, np.ndarray]:
        """label -> bool ``[H, W]`` for every class present in the image."""
        lab = self.label_map(image_id)
        return {int(k): lab == k for k in np.unique(lab) if k != IGNORE}


def _names(root: Path, default: Iterable[str] | None, count: int, *files: str) -> list[str]:
    for f in files:
        if (root / f).is_file():
            names = _read_names(root / f)
            if len(names) != count:
                raise AnnotationError(f"{root / f}: {len(names)} class names, expected {count}")
            return names
    if default is None:
        raise FileNotFoundError(2, f"{count} class names needed (one a line)", str(root / files[0]))
    return list(default)


def _image_sets(folder: Path) -> dict[str, list[str]]:
    if not folder.is_dir():
        raise FileNotFoundError(2, "no split lists (train.txt, val.txt)", str(folder))
    lists = sorted(folder.glob("*.txt"))
    return {p.stem: [s.split()[0] for s in p.read_text().splitlines() if s.strip()] for p in lists}


# ---------------------------------------------------------------------------------------------------------------------
# Readers


def voc(root: str | os.PathLike, class_names: Iterable[str] | None = None) -> SegDataset:
    """PASCAL VOC 2012 (see the module docstring)."""
    root = Path(root)
    if class_names is None:
        class_names = _read_names(root / "classes.txt") if (root / "classes.txt").is_file() else VOC_CLASSES
    names = list(class_names)
    sets = _image_sets(root / "ImageSets" / "Segmentation")
    layout = {s: (root / "JPEGImages", root / "SegmentationClass", ids) for s, ids in sets.items()}
    lut = make_lut(256, {k: k for k in range(len(names))}, ignore=[255])
    return SegDataset("voc", root, names, layout, lut)


def ade20k(root: str | os.PathLike) -> SegDataset:
    """ADE20K, 150 classes (ADEChallengeData2016)."""
    root = Path(root)
    names = _names(root, ADE20K_CLASSES, 150, "classes.txt")
    layout = {s: (root / "images" / s, root / "annotations" / s, None) for s in ("training", "validation")}
    lut = make_lut(256, {k: k - 1 for k in range(1, 151)}, ignore=[0, 255])
    return SegDataset("ade20k", root, names, layout, lut)


def ade847(root: str | os.PathLike) -> SegDataset:
    """ADE20K-full, 847 classes (Mask2Former's detectron2 layout)."""
    root = Path(root)
    names = _names(root, None, 847, "classes.txt")
    layout = {s: (root / "images_detectron2" / s, root / "annotations_detectron2" / s, None)
              for s in ("training", "validation")}
    lut = make_lut(65536, {k: k for k in range(847)}, ignore=[65535])
    return SegDataset("ade847", root, names, layout, lut, label_exts=(".tif", ".png"))


def coco_stuff(root: str | os.PathLike) -> SegDataset:
    """COCO-Stuff 164k, 171 classes."""
    root = Path(root)
    used = [v for v in range(182) if v not in COCO_STUFF_UNUSED]
    assert len(used) == len(COCO_STUFF_CLASSES) == 171
    layout = {s: (root / "images" / s, root / "annotations" / s, None) for s in ("train2017", "val2017")}
    lut = make_lut(256, {v: k for k, v in enumerate(used)}, ignore=[255, *COCO_STUFF_UNUSED])
    return SegDataset("coco-stuff", root, list(COCO_STUFF_CLASSES), layout, lut)


def context59(root: str | os.PathLike) -> SegDataset:
    """PASCAL Context, 59 classes (mmsegmentation's ``SegmentationClassContext`` PNGs)."""
    root = Path(root)
    sets = _image_sets(root / "ImageSets" / "SegmentationContext")
    layout = {s: (root / "JPEGImages", root / "SegmentationClassContext", ids) for s, ids in sets.items()}
    lut = make_lut(256, {k: k - 1 for k in range(1, 60)}, ignore=[0, 255])
    return SegDataset("context59", root, list(CONTEXT59_CLASSES), layout, lut)


def context459(root: str | os.PathLike) -> SegDataset:
    """PASCAL Context, 459 classes (official values: 0 unlabeled, 1..459)."""
    root = Path(root)
    names = _names(root, None, 459, "labels.txt", "classes.txt")
    sets = _image_sets(root / "ImageSets" / "SegmentationContext")
    layout = {s: (root / "JPEGImages", root / "SegmentationClassContext459", ids) for s, ids in sets.items()}
    lut = make_lut(65536, {k: k - 1 for k in range(1, 460)}, ignore=[0])
    return SegDataset("context459", root, names, layout, lut, label_exts=(".png", ".npy", ".tif"),
                      label_dirs_extra=((root / "trainval", ".mat"),))


class CocoSplits:
    """COCO 2017 instances, one file per split, as one semantic dataset. Ids are ``"<split>/<image id>"``."""

    name = "coco"

    def __init__(self, root: str | os.PathLike, splits: Iterable[str] = ("train2017", "val2017")):
        self.root = Path(root)
        self._parts = {}
        for s in splits:
            ann = self.root / "annotations" / f"instances_{s}.json"
            if ann.exists():
                self._parts[s] = ann
        if not self._parts:
            raise FileNotFoundError(2, "no COCO instances files", str(self.root / "annotations" / "instances_*.json"))
        self._loaded: dict = {}
        first = self._part(next(iter(self._parts)))
        self.class_names = list(first.class_names)

    def _part(self, split: str):
        if split not in self._parts:
            raise KeyError(f"{self.root}: coco has no split {split!r} (has {sorted(self._parts)})")
        if split not in self._loaded:
            ds = load_coco(self._parts[split], self.root / split)
            if self._loaded and list(ds.class_names) != self.class_names:
                raise AnnotationError(f"{self._parts[split]}: categories differ from the other split's")
            self._loaded[split] = ds
        return self._loaded[split]

    def splits(self) -> set[str]:
        return set(self._parts)

    def identity(self) -> str:
        return _identity("coco", self.root)

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


READERS = {"voc": voc, "ade20k": ade20k, "ade847": ade847, "coco-stuff": coco_stuff, "context59": context59,
           "context459": context459, "coco": CocoSplits}

# dataset -> (split heads are trained on, split results are reported on); neither has a separate val split
PROTOCOLS = {"voc": ("train", "val"), "ade20k": ("training", "validation"), "ade847": ("training", "validation"),
             "coco-stuff": ("train2017", "val2017"), "context59": ("train", "val"), "context459": ("train", "val"),
             "coco": ("train2017", "val2017")}


def load_dataset(name: str, root: str | os.PathLike):
    """The dataset ``name`` (a key of :data:`READERS`) under ``root``."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; one of {', '.join(READERS)}")
    if not Path(root).is_dir():
        raise FileNotFoundError(2, f"{name} root is not a folder", str(root))
    return READERS[name](root)


# ---------------------------------------------------------------------------------------------------------------------
# A seeded holdout to choose on


def holdout_ids(ids: Iterable, fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """``(fit, holdout)``: a seeded ``fraction`` of ``ids`` (at least 1, at most all but 1), both sorted.

    Depends only on the sorted ids, ``fraction`` and ``seed``, not on the order they are given in."""
    ids = sorted(ids)
    if len(ids) < 2:
        raise ValueError(f"{len(ids)} images: too few to carve a holdout split")
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
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
