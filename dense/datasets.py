"""A synthetic COCO-style world of coloured shapes, whose right answers are known by construction.

``make_shapes(out_dir, n_images, seed=0)`` writes::

    out_dir/
      images/000000.png ...   RGB PNG (lossless), each image its own size: sides in ``size_range`` (default 96..320 px),
                              aspect ratios up to ``max_aspect`` (default 3), some square; textured, noisy background;
                              1-4 objects, partial overlaps allowed
      annotations.json        COCO instances (pycocotools ``COCO(path)`` reads it)
      refs.json               referring expressions in the RefCOCO layout
      labels/000000.png       only with ``write_labels=True``: uint8 label image, pixel = 1 + index of the annotation in
                              ``annotations`` for that image (in file order), 0 = background

``annotations.json``

- ``images``: ``{id, file_name, height, width, split}``; ``split`` is ``"train"``, ``"val"`` or ``"test"``.
- ``categories``: one per colour x shape, ``{id, name: "red circle", supercategory: "circle", colour, shape}``; the
  names are usable as open-vocabulary text queries. Ids follow ``CATEGORIES`` (1-based).
- ``annotations``: ``{id, image_id, category_id, segmentation, area, bbox, iscrowd}``. ``bbox`` is xywh in pixels,
  ``area`` the mask's pixel count. Each mask is the object's VISIBLE part: ``COCO.annToMask`` equals the drawn object
  pixel for pixel. ``segmentation`` is
    - a polygon list ``[[x0, y0, x1, y1, ...]]`` for unoccluded objects (most of them; pycocotools rasterized the very
      same polygon when the image was drawn),
    - a compressed RLE ``{"size": [H, W], "counts": "<string>"}`` for occluded objects and a random few others,
    - an uncompressed RLE ``{"size": [H, W], "counts": [int, ...]}`` (column-major runs, starting with background) for
      ``iscrowd=1`` regions: a cluster of tiny same-category shapes, present in some images.

``refs.json``: a list of ``{ref_id, ann_id, image_id, category_id, split, file_name, sent_ids,
sentences: [{sent_id, sent, raw, tokens}]}``. Every sentence picks out exactly one non-crowd annotation of its image
(a crowd region counts as a distractor): ``"the red circle"``, ``"the star"``, ``"the blue one"``,
``"the small green square"``, ``"the triangle on the left"``, ``"the yellow one at the top"``. Position and size
words compare visible-box centres and visible areas with a margin. Vocabulary: ``REF_WORDS``.

Everything is pure numpy / OpenCV / pycocotools and deterministic for a seed. The drawing primitives
(``sample_objects``, ``render_scene``) are public so that training code can draw its own images with the same look.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from dense._atomic import write_json
from dense.errors import InputError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (230, 205, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
CATEGORIES: list[dict] = [
    {"id": 1 + i * len(SHAPES) + j, "name": f"{c} {s}", "supercategory": s, "colour": c, "shape": s}
    for i, c in enumerate(COLOURS)
    for j, s in enumerate(SHAPES)
]
CATEGORY_ID: dict[tuple[str, str], int] = {(c["colour"], c["shape"]): c["id"] for c in CATEGORIES}
SIZE_WORDS = ("small", "big", "large")
POSITION_WORDS = ("left", "right", "top", "bottom")
REF_WORDS: tuple[str, ...] = ("the", "a", "one", "on", "at", *SIZE_WORDS, *POSITION_WORDS, *COLOURS, *SHAPES)

# A relation ("on the left", "the small ...") is only stated when the target beats the runner-up by this margin.
POSITION_MARGIN_FRAC = 0.08  # of the image side along that axis
SIZE_RATIO = 2.0  # visible areas


@dataclass(frozen=True)
class Shape:
    """One object: a filled shape of one colour. ``radius`` is in pixels; ``angle_deg`` rotates it."""

    shape: str  # ('circle', 'square', 'triangle', 'star')
    colour: str  # ('red', 'green', 'blue', 'yellow')
    centre_xy: tuple[float, float]
    radius: float
    angle_deg: float = 0.0

    @property
    def category(self) -> str:
        return f"{self.colour} {self.shape}"


def shape_polygon(obj: Shape) -> np.ndarray:
    """Vertices [K, 2] (x, y) in pixels, rounded to 2 decimals (exactly what a COCO polygon stores)."""
    r, (cx, cy) = obj.radius, obj.centre_xy
    if obj.shape == "circle":
        k = max(24, int(2 * math.pi * r / 2))
        ang = np.linspace(0, 2 * np.pi, k, endpoint=False)
        rad = np.full(k, 0.95 * r)
    elif obj.shape == "square":
        ang = np.deg2rad(45 + np.arange(4) * 90)
        rad = np.full(4, 0.88 * r * math.sqrt(2))  # half-side 0.88 r
    elif obj.shape == "triangle":
        ang = np.deg2rad(-90 + np.arange(3) * 120)  # apex up
        rad = np.full(3, 1.2 * r)
    elif obj.shape == "star":
        ang = np.deg2rad(-90 + np.arange(10) * 36)
        rad = np.where(np.arange(10) % 2 == 0, 1.2 * r, 0.5 * r)
    else:
        raise InputError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")
    ang = ang + np.deg2rad(obj.angle_deg)
    xy = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)  # [K, 2]
    return np.round(xy, 2)


def rasterize_polygon(poly_xy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: the polygon as pycocotools rasterizes it (so drawn pixels and COCO masks agree exactly)."""
    H, W = hw
    rles = mask_utils.frPyObjects([poly_xy.reshape(-1).tolist()], H, W)
    return mask_utils.decode(rles)[:, :, 0].astype(bool)  # [H, W, 1] -> [H, W]


def visible_masks(full: np.ndarray) -> np.ndarray:
    """[N, H, W] full masks in drawing order -> [N, H, W] visible masks (later objects cover earlier ones)."""
    vis = full.copy()
    covered = np.zeros(full.shape[1:], bool)
    for i in range(len(full) - 1, -1, -1):
        vis[i] &= ~covered
        covered |= full[i]
    return vis


def sample_objects(
    rng: np.random.Generator,
    hw: tuple[int, int],
    n: int,
    *,
    radius_frac: tuple[float, float] = (0.08, 0.22),
    min_radius: float = 5.0,
    min_visible: float = 0.6,
    repeat_prob: float = 0.35,
    categories: list[tuple[str, str]] | None = None,
    max_angle: float = 15.0,
    tries: int = 30,
) -> list[Shape]:
    """Random layout of up to ``n`` objects inside an image of size ``hw`` = (H, W).

    Radii are ``radius_frac`` of the short side. Overlaps are allowed, but every object keeps at least ``min_visible``
    of its pixels. ``categories`` fixes the (colour, shape) of each object; otherwise they are random, and with
    ``repeat_prob`` an object repeats the shape or the category of an earlier one (so that "the small ..." and
    "... on the left" have something to tell apart). May return fewer than ``n`` objects if the image is crowded.
    """
    H, W = hw
    short = min(H, W)
    objs: list[Shape] = []
    fulls: list[np.ndarray] = []
    colours, shapes = list(COLOURS), list(SHAPES)
    for k in range(n):
        if categories is not None:
            colour, shape = categories[k]
        elif objs and rng.random() < repeat_prob:
            prev = objs[int(rng.integers(len(objs)))]
            colour = prev.colour if rng.random() < 0.5 else colours[int(rng.integers(4))]
            shape = prev.shape
        else:
            colour, shape = colours[int(rng.integers(4))], shapes[int(rng.integers(4))]
        for _ in range(tries):
            r = max(min_radius, float(rng.uniform(*radius_frac)) * short)
            pad = 1.2 * r + 1
            if 2 * pad >= min(H, W):
                r = (min(H, W) / 2 - 1) / 1.2
                pad = 1.2 * r + 1
            cx, cy = float(rng.uniform(pad, W - pad)), float(rng.uniform(pad, H - pad))
            obj = Shape(shape, colour, (cx, cy), r, float(rng.uniform(-max_angle, max_angle)))
            full = rasterize_polygon(shape_polygon(obj), hw)
            stack = np.stack([*fulls, full])
            vis = visible_masks(stack)
            if (vis.sum((1, 2)) >= min_visible * stack.sum((1, 2))).all():
                objs.append(obj)
                fulls.append(full)
                break
    return objs


def _background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """float32 [H, W, 3]: muted, low-saturation texture (never close to the object colours)."""
    H, W = hw
    base = rng.uniform(85, 175) + rng.uniform(-12, 12, size=3)
    gh, gw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    blobs = cv2.resize(rng.normal(0, 1, (gh, gw)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    img = base[None, None, :] + rng.uniform(10, 30) * blobs[:, :, None]
    kind = rng.integers(3)
    if kind == 1:  # stripes
        period, theta = rng.uniform(6, 20), rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:H, 0:W]
        img += rng.uniform(6, 14) * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)[:, :, None]
    elif kind == 2:  # speckle
        img += cv2.GaussianBlur(rng.normal(0, 14, (H, W)).astype(np.float32), (0, 0), 1.0)[:, :, None]
    return img.astype(np.float32)


def render_scene(rng: np.random.Generator, hw: tuple[int, int], objects: list[Shape]) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``objects`` (in order, later on top) on a textured background.

    Returns ``image`` uint8 [H, W, 3] RGB and ``masks`` bool [N, H, W]: each object's visible pixels, which are exactly
    the pixels drawn in its colour (pycocotools rasterization of ``shape_polygon``).
    """
    H, W = hw
    img = _background(rng, hw)
    full = np.zeros((len(objects), H, W), bool)  # [N, H, W]
    for k, o in enumerate(objects):
        full[k] = rasterize_polygon(shape_polygon(o), hw)
    vis = visible_masks(full)
    for o, m in zip(objects, vis, strict=True):
        rgb = np.asarray(COLOURS[o.colour], np.float32) + rng.uniform(-18, 18, size=3)
        shade = rng.uniform(-12, 12) * cv2.resize(rng.normal(0, 1, (3, 3)).astype(np.float32), (W, H))
        img[m] = rgb[None, :] + shade[m][:, None]
    img += rng.normal(0, rng.uniform(2, 8), (H, W, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), vis


# ----------------------------------------------------------------------------------------------- COCO writing


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: column-major run lengths, starting with a (possibly empty) background run."""
    flat = mask.reshape(-1, order="F").astype(np.uint8)  # [H*W], column-major
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box_xywh(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _image_hw(rng: np.random.Generator, size_range: tuple[int, int], max_aspect: float) -> tuple[int, int]:
    lo, hi = size_range
    if rng.random() < 0.2:
        s = int(rng.integers(lo, hi + 1))
        return s, s
    long = int(rng.integers(lo, hi + 1))
    aspect = math.exp(rng.uniform(0, math.log(max_aspect)))
    short = max(lo, round(long / aspect))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _sample_crowd(rng: np.random.Generator, hw: tuple[int, int]) -> list[Shape]:
    """A cluster of 4-7 tiny shapes of one category (an ``iscrowd=1`` region)."""
    H, W = hw
    short = min(H, W)
    colour, shape = list(COLOURS)[int(rng.integers(4))], SHAPES[int(rng.integers(4))]
    r = max(3.0, 0.035 * short)
    spread = max(2.5 * r, 0.12 * short)
    cx = rng.uniform(spread + 1.2 * r + 1, W - spread - 1.2 * r - 1)
    cy = rng.uniform(spread + 1.2 * r + 1, H - spread - 1.2 * r - 1)
    n = int(rng.integers(4, 8))
    return [
        Shape(shape, colour, (float(cx + rng.uniform(-spread, spread)), float(cy + rng.uniform(-spread, spread))), r)
        for _ in range(n)
    ]


def _split_of(n_images: int, splits: dict[str, float], rng: np.random.Generator) -> list[str]:
    names = list(splits)
    fracs = np.asarray([splits[s] for s in names], float)
    counts = np.floor(fracs / fracs.sum() * n_images).astype(int)
    for i in np.argsort(-fracs)[: n_images - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(np.arange(len(names)), counts)
    return [names[i] for i in rng.permutation(labels)]


# ----------------------------------------------------------------------------------------------- expressions


def _matches(ann: dict, colour: str | None, shape: str | None) -> bool:
    cat = CATEGORIES[ann["category_id"] - 1]
    return (colour is None or cat["colour"] == colour) and (shape is None or cat["shape"] == shape)


def _centre_xy(ann: dict) -> tuple[float, float]:
    x, y, w, h = ann["bbox"]
    return x + w / 2, y + h / 2


def resolve_expression(tokens: list[str], anns: list[dict], image_hw: tuple[int, int]) -> list[dict]:
    """The annotations of one image that ``tokens`` (e.g. ``["the", "small", "red", "one"]``) describes.

    The rule every generated sentence obeys: colour and shape words filter the annotations (crowd regions included);
    ``small``/``big``/``large`` pick the smallest/largest visible area if it beats the runner-up by ``SIZE_RATIO``;
    ``left``/``right``/``top``/``bottom`` pick the extreme visible-box centre if it leads by ``POSITION_MARGIN_FRAC``
    of the image side. Crowd regions are returned like any other match: an unambiguous sentence returns exactly one
    annotation, and it is not a crowd.
    """
    H, W = image_hw
    colour = next((t for t in tokens if t in COLOURS), None)
    shape = next((t for t in tokens if t in SHAPES), None)
    size = next((t for t in tokens if t in SIZE_WORDS), None)
    where = next((t for t in tokens if t in POSITION_WORDS), None)
    cands = [a for a in anns if _matches(a, colour, shape)]
    if size is not None or where is not None:
        if len(cands) < 2:
            return []
        if size is not None:
            key = [a["area"] for a in cands]
            order = np.argsort(key)
            if size == "small":
                best, runner, ok = order[0], order[1], key[order[1]] >= SIZE_RATIO * key[order[0]]
            else:
                best, runner, ok = order[-1], order[-2], key[order[-1]] >= SIZE_RATIO * key[order[-2]]
        else:
            axis, sign = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}[where]
            key = [sign * _centre_xy(a)[axis] for a in cands]
            order = np.argsort(key)
            best, runner = order[0], order[1]
            ok = key[runner] - key[best] >= POSITION_MARGIN_FRAC * (W if axis == 0 else H)
        cands = [cands[best]] if ok else []
    return cands


def _expressions_for(target: dict, anns: list[dict], image_hw: tuple[int, int]) -> list[str]:
    cat = CATEGORIES[target["category_id"] - 1]
    out = []
    for colour, shape in ((cat["colour"], cat["shape"]), (None, cat["shape"]), (cat["colour"], None)):
        noun = " ".join(w for w in (colour, shape) if w) if shape else f"{colour} one"
        cands = [a for a in anns if _matches(a, colour, shape)]
        if len(cands) == 1:
            out.append(f"the {noun}")
            continue
        if any(a["iscrowd"] for a in cands):
            continue
        phrases = [f"the {s} {noun}" for s in SIZE_WORDS]
        phrases += [f"the {noun} on the {w}" for w in ("left", "right")]
        phrases += [f"the {noun} at the {w}" for w in ("top", "bottom")]
        for p in phrases:
            hit = resolve_expression(p.split(), anns, image_hw)
            if len(hit) == 1 and hit[0]["id"] == target["id"]:  # never a crowd: crowds were ruled out above
                out.append(p)
    return out


# ----------------------------------------------------------------------------------------------- the dataset


def make_shapes(
    out_dir: str | os.PathLike,
    n_images: int,
    *,
    seed: int = 0,
    size_range: tuple[int, int] = (96, 320),
    max_aspect: float = 3.0,
    max_objects: int = 4,
    crowd_prob: float = 0.25,
    rle_prob: float = 0.15,
    splits: dict[str, float] | None = None,
    write_labels: bool = False,
    max_sentences: int = 3,
) -> dict:
    """Write ``n_images`` images, ``annotations.json`` and ``refs.json`` under ``out_dir`` (see the module docstring).

    Deterministic for ``seed``. ``splits`` maps split name -> fraction (default train 0.7 / val 0.15 / test 0.15).
    Returns ``{"images": n, "annotations": n, "refs": n, "sentences": n, "annotation_file": path, "refs_file": path}``.
    """
    if n_images < 1:
        raise InputError(f"n_images must be >= 1, got {n_images}")
    splits = splits or {"train": 0.7, "val": 0.15, "test": 0.15}
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if write_labels:
        (out / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    split_of = _split_of(n_images, splits, rng)
    images, annotations, refs = [], [], []
    n_sent = 0
    for idx in range(n_images):
        img_rng = np.random.default_rng([seed, idx])  # per image: one image's layout never shifts another's
        hw = _image_hw(img_rng, size_range, max_aspect)
        H, W = hw
        crowd = _sample_crowd(img_rng, hw) if img_rng.random() < crowd_prob else []
        objs = sample_objects(img_rng, hw, int(img_rng.integers(1, max_objects + 1)))
        image, vis = render_scene(img_rng, hw, crowd + objs)  # crowd first: it never covers an object
        full = np.stack([rasterize_polygon(shape_polygon(o), hw) for o in crowd + objs])
        file_name = f"{idx:06d}.png"
        cv2.imwrite(str(out / "images" / file_name), image[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
        images.append({"id": idx + 1, "file_name": file_name, "height": H, "width": W, "split": split_of[idx]})

        img_anns: list[tuple[dict, np.ndarray]] = []
        if crowd:
            m = vis[: len(crowd)].any(0)
            if m.any():
                seg = _uncompressed_rle(m)
                img_anns.append((_annotation(crowd[0], seg, m, iscrowd=1), m))
        for k, o in enumerate(objs):
            j = len(crowd) + k
            m = vis[j]
            occluded = bool((full[j] & ~m).any())
            if occluded or img_rng.random() < rle_prob:
                seg = _compressed_rle(m)
            else:
                seg = [shape_polygon(o).reshape(-1).tolist()]
            img_anns.append((_annotation(o, seg, m, iscrowd=0), m))
        label = np.zeros(hw, np.uint8)
        for k, (a, m) in enumerate(img_anns):
            a["id"] = len(annotations) + 1
            a["image_id"] = idx + 1
            annotations.append(a)
            label[m] = k + 1
        if write_labels:
            cv2.imwrite(str(out / "labels" / file_name), label)

        anns = [a for a, _ in img_anns]
        for a in anns:
            if a["iscrowd"]:
                continue
            sents = _expressions_for(a, anns, hw)
            if not sents:
                continue
            order = img_rng.permutation(len(sents))[:max_sentences]
            sentences = []
            for i in sorted(order):
                sentences.append({"sent_id": n_sent, "sent": sents[i], "raw": sents[i], "tokens": sents[i].split()})
                n_sent += 1
            refs.append(
                {
                    "ref_id": len(refs),
                    "ann_id": a["id"],
                    "image_id": idx + 1,
                    "category_id": a["category_id"],
                    "split": split_of[idx],
                    "file_name": file_name,
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "sentences": sentences,
                }
            )

    coco = {
        "info": {"description": "dense synthetic shapes", "version": "1", "seed": seed},
        "licenses": [],
        "images": images,
        "categories": [dict(c) for c in CATEGORIES],
        "annotations": annotations,
    }
    _write_json(out / "annotations.json", coco)
    _write_json(out / "refs.json", refs)
    return {
        "images": len(images),
        "annotations": len(annotations),
        "refs": len(refs),
        "sentences": n_sent,
        "annotation_file": str(out / "annotations.json"),
        "refs_file": str(out / "refs.json"),
    }


def _annotation(obj: Shape, seg, mask: np.ndarray, *, iscrowd: int) -> dict:
    return {
        "id": 0,
        "image_id": 0,
        "category_id": CATEGORY_ID[(obj.colour, obj.shape)],
        "segmentation": seg,
        "area": int(mask.sum()),
        "bbox": _box_xywh(mask),
        "iscrowd": iscrowd,
    }


def _write_json(path: Path, obj) -> None:
    """Atomic: write a temporary file, then rename (never a half file)."""
    write_json(path, obj, indent=None)
