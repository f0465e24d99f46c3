"""Open-vocabulary segmentation on a COCO-style dataset: mIoU and pixel accuracy of :func:`dense.segment`'s rule,
plus the pointing game of each present category's heatmap peak, per heatmap method."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dense import coco, metrics
from dense.eval import Result
from dense.heatmap import get_method, layers_for, patch_scores, supported_methods, templates_of, upsample, with_aligned
from dense.openvocab import background_prompts, labels_from_scores
from dense.text import embed_texts


def evaluate_openvocab(encoder, ann: str | Path, images: str | Path, *, methods: Sequence[str] | None = None,
                       background=None, templates: Sequence[str] | None = None, split: str | None = None,
                       limit: int | None = None, max_patches: int | None = None, thresholds: Sequence[float] = (),
                       progress: bool = False) -> Result:
    """Score each heatmap method of ``methods`` (None: the encoder's calibrated one) on one split.

    Category names are the queries (``dense.coco`` label k + 1 = category k). ``background`` and ``templates``:
    None = the encoder's calibration. Pointing: for every (image, category present), is the centre of the peak patch
    of that category's scores inside one of its (non-crowd) masks? ``thresholds``: background thresholds to sweep as
    well, to choose one on a validation split.

    Figures, per method m: ``m/mIoU``, ``m/pixel_acc``, ``m/mean_acc``, ``m/pointing``, ``m/IoU/<class>`` and
    ``m/mIoU@thr=<t>`` for each swept threshold. Rows: one per (image, method) with its pixel accuracy and hits.
    Raises ``ValueError`` when the split holds no image.
    """
    methods = [get_method(m).name for m in (methods or [encoder.calibration.method])]
    if background is None:
        background = encoder.calibration.background or 0.0
    templates = templates_of(encoder, templates)
    # ``ann`` may be a semantic dataset (dense.segdata): its class names are the queries; one whose class 0 is not
    # "background" (ADE20K, COCO-Stuff, Context) is scored by the plain argmax over its classes
    ds = ann if hasattr(ann, "label_map") else coco.load_coco(ann, images)
    ids = ds.ids(split)[:limit] if limit is not None else ds.ids(split)
    if not ids:
        raise ValueError(f"{ann}: no images in split {split!r} (splits present: {sorted(ds.splits())})")
    offset = 1 if ds.class_names[0] == "background" else 0
    if not offset:
        background = None
    names = ds.class_names[offset:]  # label k + offset <-> names[k], as in dense.coco
    bg_prompts = background_prompts(background) if offset else []
    layers = layers_for(encoder, methods)
    from_image = {m for m in methods if m not in supported_methods(encoder)}  # clear-* on a 1-block tower
    text = embed_texts(encoder, names + bg_prompts, templates=templates)  # [C + B, E], once for the whole run
    meters = {m: metrics.SegmentationMeter(ds.class_names) for m in methods}
    sweep = {(m, t): metrics.SegmentationMeter(ds.class_names) for m in methods for t in thresholds}
    hits: dict[str, list[bool]] = {m: [] for m in methods}
    rows = []
    t0 = time.perf_counter()
    for iid in tqdm(ids, desc="openvocab", unit="img", disable=not progress):
        path = ds.image_path(iid)
        gt = ds.label_map(iid)  # [H, W], IGNORE where no metric counts
        fmap = encoder.extract(path, max_patches=max_patches, layers=layers)
        if tuple(gt.shape) != tuple(fmap.image_hw):
            raise ValueError(f"{path}: image is {fmap.image_hw}, annotation says {gt.shape} (image id {iid})")
        by_cat = {k - offset: m for k, m in ds.class_masks(iid).items() if k >= offset}
        for m in methods:
            src = with_aligned(encoder, path, m, max_patches=max_patches) if m in from_image else fmap
            scores = patch_scores(encoder, src, text, method=m)  # [C + B, gh, gw]
            probs = upsample(scores, fmap)  # [C + B, H, W]
            cm = meters[m].update(labels_from_scores(probs, len(names), background) - 1 + offset, gt)
            for t in thresholds if offset else ():
                sweep[(m, t)].update(labels_from_scores(probs[: len(names)], len(names), t), gt)
            image_hits = []
            for k, mask in by_cat.items():
                ij = np.unravel_index(int(scores[k].argmax()), fmap.grid_hw)  # peak patch (i, j)
                point_xy = fmap.grid_to_pixel_xy(np.array(ij, dtype=np.float64))
                image_hits.append(bool(metrics.pointing_hits(point_xy[None], [mask])[0]))
            hits[m] += image_hits
            rows.append({"image_id": iid, "method": m, "pixel_acc": metrics.segmentation_figures(cm)["pixel_acc"],
                         "points": len(image_hits), "hits": sum(image_hits)})
    figures: dict[str, float] = {}
    for m in methods:
        figures.update({f"{m}/{k}": v for k, v in meters[m].figures().items()})
        figures[f"{m}/pointing"] = float(np.mean(hits[m])) if hits[m] else float("nan")
        figures.update({f"{m}/mIoU@thr={t}": sweep[(m, t)].figures()["mIoU"] for t in thresholds})
    meta = {"task": "openvocab", "ann": str(getattr(ds, "root", ann)), "split": split, "images": len(ids),
            "points": {m: len(h) for m, h in hits.items()}, "methods": methods,
            "background": background, "templates": list(templates), "thresholds": list(thresholds),
            "encoder": encoder.name, "fingerprint": encoder.fingerprint,
            "max_patches": max_patches or encoder.pixels.max_patches, "seconds": time.perf_counter() - t0}
    return Result(figures=figures, rows=rows, meta=meta)
