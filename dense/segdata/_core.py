"""What every reader shares: label encodings, reading one label file, the dataset type, split lists."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dense.errors import AnnotationError, LayoutError, MissingEntryError
from dense.labels import IGNORE, label_dtype
from dense.preprocess import IMAGE_EXTS, annotated_path, check_image_size, count_exif_tagged

_BAD = -2  # a stored value the encoding cannot hold

_MODES_8BIT = ("P", "L")
_MODES_16BIT = ("I;16", "I;16B", "I;16L", "I")  # Pillow reads a uint16 PNG/TIFF as one of these


def label_file_hw(candidates: Sequence[Path]) -> tuple[int, int] | None:
    """``(H, W)`` of the first existing label file of ``candidates``, from its header (None: none exists)."""
    for path in candidates:
        if path.exists():
            if path.suffix == ".mat":
                return _mat_label_hw(path)
            if path.suffix == ".npy":
                return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape[:2])
            from PIL import Image

            with Image.open(path) as lab:
                return lab.height, lab.width
    return None


@dataclass(frozen=True)
class Encoding:
    """How one script stores labels: stored value -> label (``lut``; IGNORE, or ``_BAD`` for values that cannot
    occur) and the bit depth it writes (8, 16, or 0 for a ``.mat`` array). ``what`` names it in errors."""

    what: str
    lut: np.ndarray
    bits: int

    @classmethod
    def of(cls, what: str, bits: int, mapping: dict[int, int], ignore: Iterable[int] = ()) -> Encoding:
        lut = np.full(65536 if bits != 8 else 256, _BAD, np.int64)
        for v, k in mapping.items():
            lut[v] = k
        lut[list(ignore)] = IGNORE
        return cls(what, lut, bits)


def make_lut(size: int, mapping: dict[int, int] | None = None, *, ignore: Iterable[int] = ()) -> np.ndarray:
    """A lookup table stored value -> label: ``mapping``, ``ignore`` values -> IGNORE, the rest not allowed."""
    lut = np.full(size, _BAD, np.int64)
    for v, k in (mapping or {}).items():
        lut[v] = k
    lut[list(ignore)] = IGNORE
    return lut


def read_label_file(path: str | os.PathLike, bits: int | None = None, what: str = "label map") -> np.ndarray:
    """The stored values of a label file as int64 ``[H, W]``: a PNG/TIFF (palette, 8- or 16-bit grey; a palette PNG
    gives its indices, not colours), a ``.npy`` array, or an official PASCAL Context ``.mat`` (``LabelMap``).

    ``bits`` (8 or 16): the bit depth the producing script writes; a file of another depth or with colour channels is
    not that script's output and raises :class:`~dense.coco.AnnotationError` naming ``path`` and ``what``."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise AnnotationError(f"{path}: not a label array ({e})") from e
    elif path.suffix == ".mat":
        from scipy.io import loadmat

        try:
            arr = loadmat(str(path)).get("LabelMap")
        except (ValueError, OSError, TypeError) as e:
            raise AnnotationError(f"{path}: not a MATLAB file ({e})") from e
        if arr is None:
            raise AnnotationError(f"{path}: no 'LabelMap' (expected an official PASCAL Context .mat file)")
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            im = Image.open(path)
        except (UnidentifiedImageError, OSError) as e:
            raise AnnotationError(f"{path}: not an image ({e})") from e
        with im:
            _check_mode(im, path, bits, what)
            arr = np.asarray(im)
    arr = np.asarray(arr)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise AnnotationError(f"{path}: expected an integer label map [H, W], got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def _check_mode(im, path: Path, bits: int | None, what: str) -> None:
    """One channel of class indices, at the bit depth (8, 16) the producing script writes."""
    if im.mode not in _MODES_8BIT + _MODES_16BIT:
        raise AnnotationError(f"{path}: a {len(im.getbands())}-channel {im.mode} image, not one channel of class "
                              f"indices ({what}); a colour rendering of labels cannot be read")
    if bits == 8 and im.mode not in _MODES_8BIT:
        raise AnnotationError(f"{path}: a 16-bit label map ({im.mode}); {what} is 8-bit")
    if bits == 16 and im.mode in _MODES_8BIT:
        raise AnnotationError(f"{path}: an 8-bit label map ({im.mode}); {what} is 16-bit")


def size_mismatch(label_path, label_hw, image_path, image_hw, image_id) -> str:
    """The one-line message for a label map whose size is not its image's (``image_hw``: ``(H, W)`` or words)."""
    image_hw = image_hw if isinstance(image_hw, str) else f"{image_hw[0]} x {image_hw[1]}"
    return (f"{label_path}: label map is {label_hw[0]} x {label_hw[1]} (H x W), its image {image_path} is "
            f"{image_hw} (image id {image_id})")


def apply_lut(stored: np.ndarray, lut: np.ndarray | None, num_classes: int, path: Path, what: str = "") -> np.ndarray:
    """Stored values -> labels (``label_dtype(num_classes)``); a value the encoding cannot hold raises naming
    ``path``."""
    if lut is None:
        label = stored
        bad = ((label < 0) | (label >= num_classes)) & (label != IGNORE)
    else:
        out_of_table = (stored < 0) | (stored >= len(lut))
        label = lut[np.clip(stored, 0, len(lut) - 1)]
        bad = out_of_table | (label == _BAD)
    if bad.any():
        where = f" ({what})" if what else ""
        raise AnnotationError(f"{path}: stored label values {np.unique(stored[bad])[:8].tolist()} cannot occur in "
                              f"this encoding{where}; is the folder the output of another script?")
    return label.astype(label_dtype(num_classes))


def read_names(path: Path) -> list[str]:
    """One class name a line; ``k: name`` lines (PASCAL Context's ``labels.txt``) give ``name``."""
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        head, sep, tail = line.partition(":")
        names.append(tail.strip() if sep and head.strip().isdigit() else line)
    return names


def names_file(path: Path, default: Sequence[str]) -> list[str]:
    """The names of ``path`` when it exists (must be ``len(default)`` of them), else ``default``."""
    if not path.is_file():
        return list(default)
    names = read_names(path)
    if len(names) != len(default):
        raise AnnotationError(f"{path}: {len(names)} class names, expected {len(default)}")
    return names


def read_split_list(path: Path) -> list[str]:
    """Image ids of a split list: one a line; a line of paths (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``)
    gives the stem of its first path."""
    ids = []
    for line in path.read_text().splitlines():
        if line.strip():
            first = line.split()[0]
            ids.append(Path(first).stem if "/" in first or "." in first else first)
    return ids


def identity(kind: str, *paths: Path) -> str:
    h = hashlib.sha256("\0".join(str(Path(p).resolve()) for p in paths).encode()).hexdigest()[:12]
    return f"{kind}-{h}"


# ---------------------------------------------------------------------------------------------------------------------
# The dataset type


@dataclass(frozen=True)
class LabelSource:
    """Label files ``folder/<id><suffix>`` in ``encoding``; ``listed``: the folder's files give a split's ids."""

    folder: Path
    suffix: str
    encoding: Encoding
    listed: bool = True


@dataclass
class Split:
    """One split: images in ``image_dir``; labels from the first of ``sources`` holding the id; ids from the
    ``ids_file`` list, or (None) from the listed sources' files."""

    image_dir: Path
    sources: list[LabelSource]
    ids_file: Path | None = None
    what: str = ""  # where the ids come from, in words (Result.meta["split_lists"])


@dataclass
class SegDataset:
    """Images + label files + class names, split by split (see :mod:`dense.segdata`).

    ``splits_found[name]``: a :class:`Split`; ``missing(name)`` says which files a split that is not there would
    have come from (for the error). ``layout``: the layouts recognised under ``root``, in words.
    """

    name: str
    root: Path
    class_names: list[str]
    splits_found: dict[str, Split]
    layout: str = ""
    missing_hint: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    _ids: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _split_of: dict[str, str] = field(default_factory=dict, repr=False)
    _tags: dict[str, int] = field(default_factory=dict, repr=False)  # id -> EXIF orientation, as headers were read

    def splits(self) -> set[str]:
        return set(self.splits_found)

    def identity(self) -> str:
        """The cache namespace of this dataset: its kind and resolved root."""
        return identity(self.name, self.root)

    def _split(self, split: str) -> Split:
        if split not in self.splits_found:
            hint = self.missing_hint.get(split) or self.missing_hint.get("*", "").format(split=split)
            have = ", ".join(sorted(self.splits_found)) or "none"
            raise MissingEntryError(f"{hint or self.root}: {self.name} has no split {split!r} (found: {have})")
        return self.splits_found[split]

    def split_list(self, split: str) -> str:
        """Where the ids of ``split`` come from: its list file (and whose list it is) or the folder of its label
        files; what the evaluators record in ``Result.meta["split_lists"]``."""
        sp = self._split(split)
        where = str(sp.ids_file) if sp.ids_file is not None else \
            ", ".join(sorted({f"the files of {s.folder}" for s in sp.sources if s.listed}))
        return f"{where} ({sp.what})" if sp.what else where

    def ids(self, split: str | None = None) -> list[str]:
        """Image ids (file stems) of ``split`` (None: every split), sorted."""
        if split is None:
            return sorted({i for s in self.splits_found for i in self.ids(s)})
        sp = self._split(split)
        if split not in self._ids:
            if sp.ids_file is not None:
                ids = read_split_list(sp.ids_file)
            else:
                ids = _list_ids([s for s in sp.sources if s.listed])
                if not ids:
                    folders = ", ".join(sorted({f"{s.folder}/*{s.suffix}" for s in sp.sources if s.listed}))
                    raise LayoutError(folders, f"no label files for split {split!r} of {self.name}")
            self._ids[split] = sorted(set(ids))
            for i in self._ids[split]:
                self._split_of.setdefault(i, split)
        return list(self._ids[split])

    def _where(self, image_id: str) -> Split:
        image_id = str(image_id)
        if image_id not in self._split_of:
            for s in self.splits_found:
                if s not in self._ids:
                    self.ids(s)
        split = self._split_of.get(image_id)
        if split is None:
            raise MissingEntryError(f"{self.root}: no image id {image_id!r} in {self.name}")
        return self.splits_found[split]

    def image_path(self, image_id: str) -> Path:
        """The image of ``image_id``: an :class:`~dense.preprocess.AnnotatedPath`, read in the geometry of its label
        map (:func:`dense.preprocess.read_hw`)."""
        where = self._where(image_id)
        for ext in IMAGE_EXTS:
            p = where.image_dir / f"{image_id}{ext}"
            if p.exists():
                labels = tuple(s.folder / f"{image_id}{s.suffix}" for s in where.sources)
                return annotated_path(p, functools.partial(label_file_hw, labels))
        image_dir = where.image_dir
        raise LayoutError(image_dir / f"{image_id}.jpg",
                          f"no image for id {image_id!r} (tried {', '.join(IMAGE_EXTS)})")

    def _label_source(self, image_id: str) -> tuple[Path, LabelSource]:
        sources = self._where(image_id).sources
        for s in sources:
            p = s.folder / f"{image_id}{s.suffix}"
            if p.exists():
                return p, s
        tried = " or ".join(str(s.folder / f"{image_id}{s.suffix}") for s in sources)
        raise LayoutError(sources[0].folder / f"{image_id}{sources[0].suffix}",
                          f"no label file for image id {image_id!r} (looked for {tried})")

    def label_path(self, image_id: str) -> Path:
        return self._label_source(image_id)[0]

    def label_map(self, image_id: str) -> np.ndarray:
        """Signed int ``[H, W]`` (:func:`~dense.labels.label_dtype`), IGNORE for pixels no metric counts."""
        path, src = self._label_source(image_id)
        enc = src.encoding
        stored = read_label_file(path, enc.bits or None, enc.what)
        return apply_lut(stored, enc.lut, len(self.class_names), path, enc.what)

    def class_masks(self, image_id: str) -> dict[int, np.ndarray]:
        """label -> bool ``[H, W]`` for every class present in the image."""
        lab = self.label_map(image_id)
        return {int(k): lab == k for k in np.unique(lab) if k != IGNORE}

    def check_files(self, split: str, *, progress: bool = False) -> None:
        """Before any expensive work: every id of ``split`` has a label file of the channels and bit depth its
        script writes, the size of its image as it is read (:func:`~dense.preprocess.check_image_size`). Reads
        headers only (``.mat`` files are checked when read); an image that cannot be opened is left to the
        extraction (which may skip it)."""
        from PIL import Image, UnidentifiedImageError

        from dense._progress import tqdm

        for i in tqdm(self.ids(split), desc=f"check {split}", unit="img", disable=not progress):
            path, src = self._label_source(i)
            if path.suffix == ".mat":
                label_hw = _mat_label_hw(path)
            else:
                try:
                    with Image.open(path) as lab:
                        _check_mode(lab, path, src.encoding.bits or None, src.encoding.what)
                        label_hw = (lab.height, lab.width)
                except (UnidentifiedImageError, OSError) as e:
                    raise AnnotationError(f"{path}: not an image ({e})") from e
            image = self.image_path(i)
            check_image_size(image, label_hw, self._tags, i,
                             lambda image_hw: size_mismatch(path, label_hw, image, image_hw, i))  # noqa: B023

    def exif_tagged(self, ids) -> int:
        """How many images of ``ids`` carry an EXIF orientation tag (read in their label map's geometry all the
        same); from their headers, or what :meth:`check_files` read."""
        return count_exif_tagged(ids, self.image_path, self._tags)


def _mat_label_hw(path: Path) -> tuple[int, int]:
    """``(H, W)`` of a PASCAL Context ``.mat``'s ``LabelMap``, from the file's headers (``scipy.io.whosmat``)."""
    from scipy.io import whosmat

    try:
        found = {name: (shape, cls) for name, shape, cls in whosmat(str(path))}
    except (ValueError, OSError, TypeError) as e:
        raise AnnotationError(f"{path}: not a MATLAB file ({e})") from e
    if "LabelMap" not in found:
        raise AnnotationError(f"{path}: no 'LabelMap' (expected an official PASCAL Context .mat file)")
    shape, cls = found["LabelMap"]
    if len(shape) != 2 or not cls.startswith(("uint", "int")):
        raise AnnotationError(f"{path}: LabelMap is {cls} {shape}; expected one channel of class indices [H, W]")
    return int(shape[0]), int(shape[1])


def _list_ids(sources: Sequence[LabelSource]) -> list[str]:
    """Stems of the sources' files; a file that ends with a longer suffix of another source in the same folder
    (``x_labelTrainIds.png`` beside ``x.png``) belongs to that one."""
    ids: set[str] = set()
    for s in sources:
        if not s.folder.is_dir():
            continue
        longer = [o.suffix for o in sources if o.folder == s.folder and o.suffix != s.suffix
                  and o.suffix.endswith(s.suffix)]
        for p in s.folder.iterdir():
            if p.name.endswith(s.suffix) and not any(p.name.endswith(x) for x in longer):
                ids.add(p.name[: -len(s.suffix)])
    return sorted(ids)


def first_dir(*folders: Path) -> Path | None:
    """The first of ``folders`` that is a folder (None: none is)."""
    return next((f for f in folders if f.is_dir()), None)
