"""COCO-style datasets: instances, semantic label maps, referring expressions.

Everything a probe or an evaluator reads goes through two small types:

- :class:`CocoDataset` (``load_coco(ann_path, image_dir)``): a COCO instances file through pycocotools. Masks come
  from polygons, compressed RLE (``counts`` a string) and uncompressed RLE (``counts`` a list); ``iscrowd=1`` regions
  are kept.
  Per annotation: :meth:`CocoDataset.mask` (bool ``[H, W]``) and :meth:`CocoDataset.box_xyxy`. Per image:
  :meth:`CocoDataset.label_map`.

It is a *semantic dataset*: ``class_names`` (index = label value), ``ids(split)``, ``image_path(id)``,
``label_map(id)`` -> signed int ``[H, W]`` (:func:`dense.labels.label_dtype`: int8 up to 127 categories, int16 up to
32766) with :data:`IGNORE` (-1) for pixels no metric should count, ``identity()`` for the feature cache. The readers
of :mod:`dense.segdata` (VOC, ADE20K, COCO-Stuff, PASCAL Context) give the same interface; the probe trainer and the
evaluators accept any of them.

Semantic label maps from COCO instances
---------------------------------------
- Class ids are contiguous: 0 = background (COCO instances have no background category), categories 1..K in order of
  their COCO ``id``. ``class_names[0] == "background"``.
- Pixels of an ``iscrowd=1`` region that no non-crowd object covers are :data:`IGNORE`; an image without annotations
  is all background.
- Overlap rule (``overlap="smaller"``, default): where non-crowd masks overlap, the SMALLER annotation (by mask pixel
  count; ties: the larger annotation id) wins, since a small object overlapping a big one is usually in front of it.
  ``overlap="ignore"``: pixels claimed by two different categories become :data:`IGNORE`.

Boxes: COCO's ``bbox`` is ``[x, y, w, h]`` (``box_xywh``); it is converted to ``box_xyxy`` here and nowhere else.

Bad input
---------
``load_coco`` checks every image and annotation before anything is decoded: an unknown category, a missing image id,
a polygon with fewer than 3 points, a bbox outside its image, a malformed RLE (wrong size, counts that do not add up to
``H * W``, characters outside the COCO alphabet) raise :class:`AnnotationError` naming the file, the annotation id and
its image id. With ``on_error="skip"`` they are dropped instead and listed in ``dataset.problems``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dense.errors import AnnotationError, InputError, MissingEntryError
from dense.labels import IGNORE, label_dtype

BOX_TOLERANCE_PX = 1.0  # a bbox may stick out of its image by this much (COCO boxes are floats, rounded on export)


# ---------------------------------------------------------------------------------------------------------------------
# Boxes and RLE at the COCO boundary


def box_xywh_to_xyxy(box_xywh) -> np.ndarray:
    """COCO ``[x, y, w, h]`` (``(..., 4)``) -> ``[x0, y0, x1, y1]``, float64."""
    b = np.asarray(box_xywh, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)


def _rle_string_counts(s: str) -> list[int]:
    """Decode COCO's compressed RLE string into run lengths (a port of pycocotools' ``rleFrString``).

    pycocotools' C decoder does not bound-check, so a malformed string must be caught here, before it is decoded.
    """
    counts: list[int] = []
    p = 0
    n = len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise InputError("truncated counts string")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise InputError(f"character {s[p]!r} outside the RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _check_segmentation(seg, hw: tuple[int, int]) -> str | None:
    """Why ``seg`` cannot be rasterized on an image of ``hw``, or None when it is fine."""
    H, W = hw
    if isinstance(seg, list):
        if not seg:
            return "empty polygon list"
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly):
                return f"polygon {k} is not a flat list of numbers"
            if len(poly) % 2 or len(poly) < 6:
                return f"polygon {k} has {len(poly) / 2:g} points (needs >= 3 x,y pairs)"
        return None
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        return "segmentation is neither a polygon list nor an RLE {size, counts}"
    size = seg["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and [int(v) for v in size] == [H, W]):
        return f"RLE size {size} differs from the image's [H, W] = [{H}, {W}]"
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            return "uncompressed RLE counts must be non-negative integers"
    elif isinstance(counts, (str, bytes)):
        try:
            counts = _rle_string_counts(counts.decode("ascii") if isinstance(counts, bytes) else counts)
        except (ValueError, UnicodeDecodeError) as e:
            return f"malformed compressed RLE ({e})"
        if any(c < 0 for c in counts):
            return "malformed compressed RLE (negative run length)"
    else:
        return f"RLE counts of type {type(counts).__name__}"
    if sum(counts) != H * W:
        return f"RLE counts add up to {sum(counts)} pixels, the image has {H} x {W} = {H * W}"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Instances


@dataclass(frozen=True)
class Ref:
    """One referring expression target (RefCOCO layout): several sentences naming one annotation."""

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    split: str
    sentences: list[str]


@dataclass
class CocoDataset:
    """A COCO instances file, validated, through pycocotools. Build it with :func:`load_coco`.

    Attributes:
        coco: the ``pycocotools.coco.COCO`` index (``coco.imgs``, ``coco.anns``, ``coco.cats``).
        image_dir: folder the images' ``file_name`` s are relative to (None: masks and labels only).
        source: the annotation file.
        class_names: ``["background", <category names in id order>]``; index = label value.
        cat_to_label: COCO category id -> contiguous label (1..K).
        problems: what ``on_error="skip"`` dropped, one line each.
        overlap: the overlap rule for :meth:`label_map` (``'smaller'``, ``'ignore'``).
    """

    coco: object
    image_dir: Path | None
    source: Path
    class_names: list[str]
    cat_to_label: dict[int, int]
    problems: list[str] = field(default_factory=list)
    overlap: str = "smaller"  # ('smaller', 'ignore')
    _tags: dict = field(default_factory=dict, repr=False)  # image id -> EXIF orientation, as headers were read

    # --- ids --------------------------------------------------------------------------------------------------------
    def ids(self, split: str | None = None) -> list[int]:
        """Image ids in ascending order; ``split`` keeps those whose image entry has that ``split`` field."""
        ids = sorted(self.coco.imgs)
        if split is None:
            return ids
        return [i for i in ids if self.coco.imgs[i].get("split") == split]

    def splits(self) -> set[str]:
        """The ``split`` values the images carry (empty when they carry none)."""
        return {str(im["split"]) for im in self.coco.imgs.values() if "split" in im}

    def image_info(self, image_id: int) -> dict:
        try:
            return self.coco.imgs[image_id]
        except KeyError:
            raise MissingEntryError(f"{self.source}: no image with id {image_id}") from None

    def image_hw(self, image_id: int) -> tuple[int, int]:
        info = self.image_info(image_id)
        return int(info["height"]), int(info["width"])

    def image_path(self, image_id: int) -> Path:
        """The image file: an :class:`~dense.preprocess.AnnotatedPath`, read in the geometry of the file's ``height``
        and ``width`` (as stored, or upright when only that matches: :func:`dense.preprocess.read_hw`)."""
        from dense.preprocess import annotated_path

        if self.image_dir is None:
            raise InputError(f"{self.source}: no image folder was given for its images (--images DIR, or "
                             f"load_coco(..., image_dir))")
        return annotated_path(self.image_dir / self.image_info(image_id)["file_name"], self.image_hw(image_id))

    def check_files(self, split: str | None = None, *, progress: bool = False) -> None:
        """Before any expensive work: each image of ``split`` (None: every image) is read at the height and width
        the file gives it, in the geometry it is read in (headers only; an image that cannot be opened is left to
        the extraction). Nothing to check without an image folder."""
        from dense._progress import tqdm
        from dense.preprocess import check_image_size

        if self.image_dir is None:
            return
        for iid in tqdm(self.ids(split), desc=f"check {split or 'all'}", unit="img", disable=not progress):
            h, w = self.image_hw(iid)
            path = self.image_path(iid)
            check_image_size(path, (h, w), self._tags, iid,
                             lambda image_hw: f"{self.source}: image id {iid} is {h} x {w} (H x W) there, its "  # noqa: B023
                                              f"image {path} is {image_hw}")  # noqa: B023

    def exif_tagged(self, ids) -> int:
        """How many images of ``ids`` carry an EXIF orientation tag (read in the file's geometry all the same); from
        their headers, or what :meth:`check_files` read."""
        from dense.preprocess import count_exif_tagged

        return count_exif_tagged(ids, self.image_path, self._tags)

    def anns(self, image_id: int, *, crowd: bool = True) -> list[dict]:
        """The annotations of an image, in annotation-id order (``crowd=False`` drops ``iscrowd=1`` regions)."""
        self.image_info(image_id)
        anns = sorted(self.coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])
        return anns if crowd else [a for a in anns if not a.get("iscrowd", 0)]

    def ann(self, ann_id: int) -> dict:
        try:
            return self.coco.anns[ann_id]
        except KeyError:
            raise MissingEntryError(f"{self.source}: no annotation with id {ann_id}") from None

    # --- per annotation ---------------------------------------------------------------------------------------------
    def mask(self, ann_id: int) -> np.ndarray:
        """bool ``[H, W]``: the annotation's pixels (polygon or RLE, rasterized by pycocotools)."""
        return self.coco.annToMask(self.ann(ann_id)).astype(bool)

    def box_xyxy(self, ann_id: int) -> np.ndarray:
        """The annotation's ``bbox`` as float64 ``[x0, y0, x1, y1]`` in original-image pixels."""
        return box_xywh_to_xyxy(self.ann(ann_id)["bbox"])

    def category_name(self, category_id: int) -> str:
        return self.coco.cats[category_id]["name"]

    # --- per image --------------------------------------------------------------------------------------------------
    def identity(self) -> str:
        """The cache namespace of this dataset: the resolved annotation file and image folder."""
        import hashlib

        where = f"{self.source.resolve()}\0{self.image_dir.resolve() if self.image_dir else ''}"
        return f"coco-{hashlib.sha256(where.encode()).hexdigest()[:12]}"

    def class_masks(self, image_id: int) -> dict[int, np.ndarray]:
        """label -> bool ``[H, W]``: the union of each present category's non-crowd masks."""
        out: dict[int, np.ndarray] = {}
        for a in self.anns(image_id, crowd=False):
            k = self.cat_to_label[a["category_id"]]
            out[k] = out[k] | self.mask(a["id"]) if k in out else self.mask(a["id"])
        return out

    def label_map(self, image_id: int) -> np.ndarray:
        """Signed int ``[H, W]`` semantic labels: 0 background, 1..K categories, IGNORE (-1) crowd (see the module
        docstring). The dtype holds every category (int16 from 127 categories on): no id can wrap into IGNORE."""
        H, W = self.image_hw(image_id)
        label = np.zeros((H, W), label_dtype(len(self.class_names)))
        anns = self.anns(image_id)
        things = [a for a in anns if not a.get("iscrowd", 0)]
        masks = {a["id"]: self.mask(a["id"]) for a in anns}
        covered = np.zeros((H, W), bool)
        if self.overlap == "smaller":
            # paint the largest first so smaller objects end on top; equal areas: the larger id is painted last
            for a in sorted(things, key=lambda a: (-int(masks[a["id"]].sum()), a["id"])):
                label[masks[a["id"]]] = self.cat_to_label[a["category_id"]]
                covered |= masks[a["id"]]
        elif self.overlap == "ignore":
            conflict = np.zeros((H, W), bool)
            for a in things:
                m = masks[a["id"]]
                lab = self.cat_to_label[a["category_id"]]
                conflict |= m & covered & (label != lab)
                label[m] = lab
                covered |= m
            label[conflict] = IGNORE
        else:
            raise InputError(f"overlap must be 'smaller' or 'ignore', got {self.overlap!r}")
        for a in anns:
            if a.get("iscrowd", 0):
                label[masks[a["id"]] & ~covered] = IGNORE
        return label


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from e


def _validate(data: dict, source: Path, on_error: str) -> tuple[list[dict], list[str]]:
    """Check images and annotations; return the annotations to keep and the problems found (``on_error='skip'``)."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{source}: missing or malformed '{key}' list (is this a COCO instances file?)")
    images = {}
    for img in data["images"]:
        if not isinstance(img, dict) or not {"id", "height", "width", "file_name"} <= img.keys():
            raise AnnotationError(f"{source}: image entry {str(img)[:80]} needs id, file_name, height and width")
        if img["id"] in images:
            raise AnnotationError(f"{source}: image id {img['id']} appears twice")
        images[img["id"]] = img
    cats = {c["id"] for c in data["categories"]}
    keep, problems, seen = [], [], set()
    for a in data["annotations"]:
        ann_id, image_id = a.get("id"), a.get("image_id")
        where = f"{source}: annotation id {ann_id} (image id {image_id})"
        why = None
        if ann_id is None or ann_id in seen:
            why = "missing id" if ann_id is None else "duplicate annotation id"
        elif image_id not in images:
            why = "image id not in 'images'"
        elif a.get("category_id") not in cats:
            why = f"category id {a.get('category_id')} not in 'categories'"
        elif "segmentation" not in a:
            why = "no segmentation"
        else:
            H, W = int(images[image_id]["height"]), int(images[image_id]["width"])
            why = _check_segmentation(a["segmentation"], (H, W))
            bbox = a.get("bbox")
            if why is None and bbox is not None:
                if len(bbox) != 4 or bbox[2] < 0 or bbox[3] < 0:
                    why = f"bbox {bbox} is not [x, y, w, h] with w, h >= 0"
                else:
                    x0, y0, x1, y1 = box_xywh_to_xyxy(bbox)
                    t = BOX_TOLERANCE_PX
                    if x0 < -t or y0 < -t or x1 > W + t or y1 > H + t:
                        why = f"bbox xywh {bbox} lies outside the {W} x {H} image"
        if why is not None:
            if on_error == "raise":
                raise AnnotationError(f"{where}: {why}")
            problems.append(f"{where}: {why}")
            continue
        seen.add(ann_id)
        keep.append(a)
    return keep, problems


def load_coco(ann_path: str | os.PathLike, image_dir: str | os.PathLike | None = None, *, on_error: str = "raise",
              overlap: str = "smaller") -> CocoDataset:
    """Read and validate a COCO instances file.

    Args:
        ann_path: the ``annotations.json`` / ``instances_*.json`` file.
        image_dir: folder holding the images (``file_name`` is relative to it); None when only masks are needed.
        on_error: ``'raise'`` (default): the first bad annotation raises :class:`AnnotationError`; ``'skip'``: bad
            annotations are dropped and listed in ``dataset.problems``.
        overlap: how :meth:`CocoDataset.label_map` resolves overlapping masks (``'smaller'``, ``'ignore'``).
    """
    from pycocotools.coco import COCO

    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if overlap not in ("smaller", "ignore"):
        raise InputError(f"overlap must be 'smaller' or 'ignore', got {overlap!r}")
    source = Path(ann_path)
    data = _read_json(source)
    if not isinstance(data, dict):
        raise AnnotationError(f"{source}: expected a JSON object with images, annotations and categories")
    keep, problems = _validate(data, source, on_error)
    coco = COCO()
    coco.dataset = {**data, "annotations": keep}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    cat_ids = sorted(coco.cats)
    return CocoDataset(coco=coco, image_dir=None if image_dir is None else Path(image_dir), source=source,
                       class_names=["background"] + [coco.cats[c]["name"] for c in cat_ids],
                       cat_to_label={c: k + 1 for k, c in enumerate(cat_ids)}, problems=problems, overlap=overlap)


# ---------------------------------------------------------------------------------------------------------------------
# Referring expressions (RefCOCO layout)


class _DataOnlyUnpickler(pickle.Unpickler):
    """RefCOCO ships its refs as a pickle of plain lists / dicts; refuse anything that would construct an object."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a refs pickle holds only plain data")


def _read_refs(path: Path) -> list[dict]:
    if path.suffix in (".p", ".pkl", ".pickle"):
        with open(path, "rb") as f:
            try:
                refs = _DataOnlyUnpickler(f, encoding="latin1").load()
            except (pickle.UnpicklingError, EOFError, ValueError) as e:
                raise AnnotationError(f"{path}: not a refs pickle ({e})") from e
    else:
        refs = _read_json(path)
    if isinstance(refs, dict) and "refs" in refs:
        refs = refs["refs"]
    if not isinstance(refs, list):
        raise AnnotationError(f"{path}: expected a list of refs (RefCOCO layout)")
    return refs


def load_refs(refs_path: str | os.PathLike, dataset: CocoDataset, *, split: str | None = None,
              on_error: str = "raise") -> list[Ref]:
    """Read RefCOCO-style refs (JSON, or the official ``refs(unc).p`` pickle) and join them with ``dataset``.

    Each ref needs ``ref_id, ann_id, image_id, split, sentences`` (each sentence a ``{"sent": ...}`` dict or a string);
    ``category_id`` defaults to the annotation's. A ref whose annotation or image is missing from ``dataset``, or whose
    ``image_id`` / ``category_id`` disagree with its annotation, raises :class:`AnnotationError` naming the ref_id
    (``on_error='skip'``: dropped and appended to ``dataset.problems``). ``split`` keeps one split. Sorted by ref_id.
    """
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(refs_path)
    out = []
    for r in _read_refs(path):
        ref_id = r.get("ref_id") if isinstance(r, dict) else None
        why = None
        try:
            if ref_id is None:
                raise AnnotationError("ref without ref_id")
            ann = dataset.coco.anns.get(r["ann_id"])
            if r["image_id"] not in dataset.coco.imgs:
                why = f"image id {r['image_id']} is not in {dataset.source}"
            elif ann is None:
                why = f"annotation id {r['ann_id']} is not in {dataset.source}"
            elif ann["image_id"] != r["image_id"]:
                why = f"annotation {r['ann_id']} belongs to image {ann['image_id']}, the ref says {r['image_id']}"
            elif r.get("category_id", ann["category_id"]) != ann["category_id"]:
                why = f"category {r['category_id']} differs from annotation {r['ann_id']}'s {ann['category_id']}"
            else:
                sents = [s["sent"] if isinstance(s, dict) else str(s) for s in r["sentences"]]
                if not sents:
                    why = "no sentences"
        except (KeyError, TypeError, AnnotationError) as e:
            why = f"malformed ref ({type(e).__name__}: {e})"
        if why is not None:
            msg = f"{path}: ref_id {ref_id}: {why}"
            if on_error == "raise":
                raise AnnotationError(msg)
            dataset.problems.append(msg)
            continue
        if split is not None and r["split"] != split:
            continue
        out.append(Ref(ref_id=int(ref_id), ann_id=int(r["ann_id"]), image_id=int(r["image_id"]),
                       category_id=int(ann["category_id"]), split=str(r["split"]), sentences=sents))
    return sorted(out, key=lambda ref: ref.ref_id)
