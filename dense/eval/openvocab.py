"""Open-vocabulary segmentation on a COCO-style dataset: mIoU and pixel accuracy of :func:`dense.segment`'s rule,
plus the pointing game of each present category's heatmap peak, per heatmap method."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dense import coco, metrics
from dense._progress import tqdm
from dense.errors import InputError
from dense.eval import Result, stats
from dense.heatmap import (
    get_method,
    image_scores,
    layers_for,
    patch_scores,
    supported_methods,
    templates_of,
    to_image,
    with_aligned,
)
from dense.openvocab import background_prompts, labels_from_scores
from dense.preprocess import exif_tagged, load_image
from dense.refine import REFINES
from dense.segdata import split_list
from dense.text import class_queries, embed_texts


def setting_key(method: str, refine: str | None = None) -> str:
    """The figure prefix of a (method, refinement) pair: ``map-value-mlp``, ``map-value-mlp+pamr``."""
    return method if refine in (None, "none") else f"{method}+{refine}"


def evaluate_openvocab(encoder, ann: str | Path, images: str | Path, *, methods: Sequence[str] | None = None,
                       background=None, templates: Sequence[str] | None = None, split: str | None = None,
                       limit: int | None = None, max_patches: int | None = None,
                       background_thresholds: Sequence[float] = (),
                       refines: Sequence[str] | None = None, windows: int | None = None,
                       resamples: int = stats.RESAMPLES, seed: int = 0, choose: bool = False,
                       guard: float = 0.02, progress: bool = False) -> Result:
    """Score each heatmap method of ``methods`` (None: the encoder's calibrated one) on one split.

    Category names are the queries (``dense.coco`` label k + 1 = category k). ``background`` and ``templates``:
    None = the encoder's calibration. Pointing: for every (image, category present), is the centre of the peak patch
    of that category's scores (the peak pixel with ``windows > 1`` or a refinement) inside one of its (non-crowd)
    masks? ``background_thresholds``: background thresholds to sweep as well, to choose one on a validation split.
    ``refines``: each method is scored with each refinement (``"none"``, ``"pamr"``: :mod:`dense.refine`);
    ``windows``: sliding windows (:func:`dense.heatmap.image_scores`); None for either: the encoder's calibration, so
    a run with no settings reproduces what the calibration measured. ``ann`` may also be a dataset object
    (:mod:`dense.segdata`).
    ``split``: None or ``"all"``: every image. ``choose``: also choose a setting on this split
    (:func:`choose_setting` with ``guard``), kept as ``meta["chosen"]`` (:func:`calibration_from_choice` turns it into
    a calibration).

    Figures, per setting s (:func:`setting_key`): ``s/mIoU``, ``s/pixel_acc``, ``s/mean_acc``, ``s/pointing``,
    ``s/IoU/<class>``, and ``s/mIoU@thr=<t>``, ``s/pixel_acc@thr=<t>`` for each swept threshold. Intervals
    (``Result.intervals``): the bootstrap 95% interval of every mIoU, pixel accuracy and pointing figure, resampling
    images (``resamples`` draws, ``seed``; the same draws for every setting). Rows: one per (image, setting) with its
    pixel accuracy, pointing hits and per-class counts ``inter``, ``union``, ``gt`` (at ``background``).
    Raises ``ValueError`` when the split holds no image.
    """
    cal = encoder.calibration
    methods = [get_method(m).name for m in (methods or [cal.method])]
    refines = [r or "none" for r in (refines if refines is not None else [cal.refine])] or ["none"]
    for r in refines:
        if r not in REFINES:
            raise InputError(f"unknown refinement {r!r}; choose from {', '.join(REFINES)}")
    windows = cal.windows if windows is None else windows
    if windows < 1:
        raise InputError(f"windows must be at least 1, got {windows}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    if background is None:
        background = cal.background or 0.0
    if isinstance(background, (int, float)) and not 0.0 <= background <= 1.0:
        raise InputError(f"background threshold must be in [0, 1], got {background}")
    if any(not 0.0 <= t <= 1.0 for t in background_thresholds):
        raise InputError(f"swept background thresholds must be in [0, 1], got {list(background_thresholds)}")
    split = None if split == "all" else split
    if not 0.0 <= guard <= 1.0:
        raise InputError(f"guard must be a fraction in [0, 1], got {guard}")
    templates = templates_of(encoder, templates)
    # ``ann`` may be a semantic dataset (dense.segdata): its class names are the queries; one whose class 0 is not
    # "background" (ADE20K, COCO-Stuff, Context) is scored by the plain argmax over its classes
    ds = ann if hasattr(ann, "label_map") else coco.load_coco(ann, images)
    ids = ds.ids(split)[:limit] if limit is not None else ds.ids(split)
    if not ids:
        present = ", ".join(sorted(ds.splits())) or "none (the images carry no 'split' field)"
        where = getattr(ds, "root", None) or getattr(ds, "source", None) or ann
        raise InputError(f"{where}: no images in {'the dataset' if split is None else f'split {split!r}'}; splits "
                         f"present: {present}")
    if hasattr(ds, "check_files"):  # every label file's channels, bit depth and size, before any text or image work
        for s in [split] if split is not None else sorted(ds.splits()):
            ds.check_files(s)
    offset = 1 if ds.class_names[0] == "background" else 0
    if not offset:  # no background class: plain argmax, nothing to threshold
        background, background_thresholds = None, ()
    names = class_queries(ds.class_names[offset:])  # label k + offset <-> names[k]; first aliases, as big_vision
    K = len(ds.class_names)
    bg_prompts = background_prompts(background) if offset else []
    layers = layers_for(encoder, methods)
    from_image = {m for m in methods if m not in supported_methods(encoder, experimental=True)}  # clear-* on 1 block
    text = embed_texts(encoder, names + bg_prompts, templates=templates)  # [C + B, E], once for the whole run
    settings = [(m, r, setting_key(m, r)) for m in methods for r in refines]
    meters = {s: metrics.SegmentationMeter(ds.class_names) for _, _, s in settings}
    sweep = {(s, t): metrics.SegmentationMeter(ds.class_names) for _, _, s in settings for t in background_thresholds}
    counts: dict = {key: [] for key in [*meters, *sweep]}  # per image: (inter, union, gt), [K] each
    points: dict[str, list[tuple[int, int]]] = {s: [] for s in meters}  # per image: (hits, points)
    rows = []
    t0 = time.perf_counter()
    for iid in tqdm(ids, desc="openvocab", unit="img", disable=not progress):
        path = ds.image_path(iid)
        gt = ds.label_map(iid)  # [H, W], IGNORE where no metric counts
        rgb = load_image(path)
        fmap = encoder.extract(rgb, max_patches=max_patches, layers=layers)
        if tuple(gt.shape) != tuple(fmap.image_hw):
            raise InputError(f"{path}: image is {fmap.image_hw}, annotation says {gt.shape} (image id {iid})")
        by_cat = {k - offset: m for k, m in ds.class_masks(iid).items() if k >= offset}
        for m, r, key in settings:
            grid = None
            if windows > 1:
                probs = image_scores(encoder, rgb, text, method=m, max_patches=max_patches, windows=windows,
                                     refine=r)  # [C + B, H, W]
            else:
                src = with_aligned(encoder, rgb, m, max_patches=max_patches) if m in from_image else fmap
                grid = patch_scores(encoder, src, text, method=m)  # [C + B, gh, gw]
                probs = to_image(grid, src) if r == "none" else image_scores(encoder, rgb, text, features=src,
                                                                                   method=m, refine=r)  # [C + B, H, W]
            cm = meters[key].update(labels_from_scores(probs, len(names), background) - 1 + offset, gt)
            counts[key].append(stats.counts_from_confusion(cm))
            for t in background_thresholds:
                cm_t = sweep[(key, t)].update(labels_from_scores(probs[: len(names)], len(names), t), gt)
                counts[(key, t)].append(stats.counts_from_confusion(cm_t))
            image_hits = []
            for k, mask in by_cat.items():
                if grid is not None and r == "none":
                    ij = np.unravel_index(int(grid[k].argmax()), tuple(grid.shape[1:]))  # peak patch (i, j)
                    point_xy = fmap.grid_to_pixel_xy(np.array(ij, dtype=np.float64))
                else:
                    y, x = np.unravel_index(int(probs[k].argmax()), tuple(probs.shape[1:]))  # peak pixel
                    point_xy = np.array([x + 0.5, y + 0.5])
                image_hits.append(bool(metrics.pointing_hits(point_xy[None], [mask])[0]))
            points[key].append((sum(image_hits), len(image_hits)))
            inter, union, gtc = counts[key][-1]
            rows.append({"image_id": iid, "method": key, "pixel_acc": metrics.segmentation_figures(cm)["pixel_acc"],
                         "points": len(image_hits), "hits": sum(image_hits), "inter": inter.tolist(),
                         "union": union.tolist(), "gt": gtc.tolist()})
    figures: dict[str, float] = {}
    intervals: dict[str, tuple[float, float]] = {}
    boot = dict(resamples=resamples, seed=seed)

    def seg_ci(c, name_miou, name_pix):
        arr = np.asarray(c, np.float64).reshape(len(c), 3, K)  # n x (inter, union, gt) x [K] -> [n, 3, K]
        ci = stats.segmentation_intervals(arr[:, 0], arr[:, 1], arr[:, 2], **boot)
        intervals[name_miou], intervals[name_pix] = ci["mIoU"], ci["pixel_acc"]

    for _, _, s in settings:
        figures.update({f"{s}/{k}": v for k, v in meters[s].figures().items()})
        hits_pts = np.asarray(points[s], np.float64).reshape(-1, 2)  # [n, 2]
        figures[f"{s}/pointing"] = float(hits_pts[:, 0].sum() / hits_pts[:, 1].sum()) if hits_pts[:, 1].sum() \
            else float("nan")
        intervals[f"{s}/pointing"] = stats.ratio_interval(hits_pts[:, 0], hits_pts[:, 1], **boot)
        seg_ci(counts[s], f"{s}/mIoU", f"{s}/pixel_acc")
        for t in background_thresholds:
            f_t = sweep[(s, t)].figures()
            figures[f"{s}/mIoU@thr={t}"], figures[f"{s}/pixel_acc@thr={t}"] = f_t["mIoU"], f_t["pixel_acc"]
            seg_ci(counts[(s, t)], f"{s}/mIoU@thr={t}", f"{s}/pixel_acc@thr={t}")
    meta = {"task": "openvocab", "ann": str(getattr(ds, "root", ann)), "split": split or "all", "images": len(ids),
            "exif_tagged": exif_tagged(ds, ids), "split_list": split_list(ds, split),
            "points": {s: int(sum(p for _, p in points[s])) for s in points}, "methods": methods,
            "refines": list(refines), "settings": [s for _, _, s in settings], "windows": windows,
            "background": background, "templates": list(templates), "thresholds": list(background_thresholds),
            "encoder": encoder.name, "fingerprint": encoder.fingerprint,
            "dtype": str(encoder.dtype).removeprefix("torch."),
            "max_patches": max_patches or encoder.pixels.max_patches, "bootstrap": {**boot, "level": stats.LEVEL},
            "seconds": time.perf_counter() - t0}
    res = Result(figures=figures, rows=rows, meta=meta, intervals=intervals)
    if choose:
        res.meta["chosen"] = choose_setting(res, guard=guard)
    return res


def choose_setting(res: Result, *, guard: float = 0.02) -> dict:
    """The (setting, background threshold) of an openvocab Result with the best mIoU among those whose pixel
    accuracy is within ``guard`` of the best (:func:`dense.eval.stats.choose`): the run's own background and every
    swept threshold count. The returned ``method`` is the setting key (a refinement shows as ``+pamr``)."""
    m = res.meta
    cands = []
    for s in m["settings"]:
        cands.append((s, m["background"], f"{s}/mIoU", f"{s}/pixel_acc"))
        cands += [(s, t, f"{s}/mIoU@thr={t}", f"{s}/pixel_acc@thr={t}") for t in m["thresholds"]]
    out = stats.choose(res.figures, cands, guard=guard)
    fig = "mIoU" if out["background"] == m["background"] and out["background"] not in m["thresholds"] \
        else f"mIoU@thr={out['background']}"
    out["mIoU_interval"] = res.intervals.get(f"{out['method']}/{fig}")
    out["pixel_acc_interval"] = res.intervals.get(f"{out['method']}/{fig.replace('mIoU', 'pixel_acc')}")
    out["setting"] = out["method"]
    out["method"], out["refine"] = split_setting(out["setting"])
    out["windows"] = m["windows"]
    return out


def split_setting(key: str) -> tuple[str, str]:
    """``(method, refinement)`` of a setting key (:func:`setting_key`): ``"map-value-mlp+pamr"`` ->
    ``("map-value-mlp", "pamr")``."""
    for r in REFINES:
        if r != "none" and key.endswith(f"+{r}"):
            return key[: -len(r) - 1], r
    return key, "none"


def calibration_from_choice(res: Result, choice: dict, *, command: str | None = None) -> dict:
    """The ``dense_calibration.json`` entries that make ``choice`` (:func:`choose_setting`) the encoder's defaults:
    method, refinement, windows, background threshold, templates and token budget, plus the ``measured`` provenance
    of the figures it was chosen by (command, split, images, mIoU and pixel accuracy with their intervals).

    Raises ``ValueError`` for a setting a calibration cannot express (background prompts instead of a threshold), so
    that no calibration records a figure its defaults would not reproduce."""
    m = res.meta
    bg = choice["background"]
    if bg is not None and not isinstance(bg, (int, float)):
        raise InputError(f"the chosen background is a list of prompts {bg}, which a calibration cannot express (it "
                         "holds a threshold): choose among thresholds (--background 0.5 --sweep ...)")
    return {"method": choice["method"], "refine": choice["refine"], "windows": choice["windows"], "background": bg,
            "templates": list(m["templates"]), "max_patches": m["max_patches"],
            "measured": {"segmentation": {
                "command": command, "split": m["split"], "images": m["images"], "data": m["ann"],
                "setting": choice["setting"], "mIoU": choice["mIoU"], "mIoU_interval": choice["mIoU_interval"],
                "pixel_acc": choice["pixel_acc"], "pixel_acc_interval": choice["pixel_acc_interval"],
                "guard": choice["guard"], "eligible": choice["eligible"]}}}
