"""Open-vocabulary segmentation on a COCO-style dataset: mIoU and pixel accuracy of :func:`dense.segment`'s rule,
plus the pointing game of each present category's heatmap peak, per heatmap method."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from dense import metrics
from dense._progress import tqdm
from dense.errors import InputError
from dense.eval import Result, stats
from dense.eval.settings import Bootstrap, Extraction, OpenVocabScoring, OpenVocabSetting, grid_edge
from dense.eval.zeroshot import peak_point_xy
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
    """The figure prefix of a (method, refinement) pair: ``map-value-mlp``, ``map-value-mlp+pamr``
    (:attr:`dense.eval.settings.OpenVocabSetting.prefix`)."""
    return OpenVocabSetting(method, refine or "none").prefix


def resolve_scoring(encoder, scoring: OpenVocabScoring | None = None) -> OpenVocabScoring:
    """``scoring`` with every unset field (None) taken from the encoder's calibration, checked."""
    scoring = scoring or OpenVocabScoring()
    cal = encoder.calibration
    methods = tuple(get_method(m).name for m in (scoring.methods or [cal.method]))
    refines = tuple(r or "none" for r in (scoring.refines if scoring.refines is not None else [cal.refine])) \
        or ("none",)
    for r in refines:
        if r not in REFINES:
            raise InputError(f"unknown refinement {r!r}; choose from {', '.join(REFINES)}")
    background = scoring.background if scoring.background is not None else (cal.background or 0.0)
    return replace(scoring, methods=methods, refines=refines,
                   windows=cal.windows if scoring.windows is None else scoring.windows, background=background,
                   templates=tuple(templates_of(encoder, scoring.templates)))


def evaluate_openvocab(encoder, data, *, split: str | None = None, scoring: OpenVocabScoring | None = None,
                       extraction: Extraction | None = None, limit: int | None = None,
                       bootstrap: Bootstrap | None = None, choose: bool = False, guard: float = 0.02,
                       progress: bool = False) -> Result:
    """Score each (method, refinement) of ``scoring`` (:class:`~dense.eval.settings.OpenVocabScoring`; unset fields:
    the encoder's calibration, so a run with no settings reproduces what the calibration measured) on one split.

    ``data``: a :class:`dense.eval.data.Data` (:func:`~dense.eval.data.open_data`) or a dataset object; COCO
    category names (or a :mod:`dense.segdata` dataset's class names) are the queries. ``split``: None or ``"all"``:
    every image. ``extraction``: the token budget and images per extraction pass. Pointing: for every (image,
    category present), is the centre of the peak patch of that category's scores (the peak pixel with ``windows >
    1`` or a refinement) inside one of its (non-crowd) masks? ``choose``: also choose a setting on this split
    (:func:`choose_setting` with ``guard``), kept as ``meta["chosen"]`` (the whole setting, printable) and
    ``artifacts["chosen"]`` (an :class:`~dense.eval.settings.OpenVocabSetting`).

    Figures, per setting s (flat names from :meth:`OpenVocabSetting.name`): ``s/mIoU``, ``s/pixel_acc``,
    ``s/mean_acc``, ``s/pointing``, ``s/IoU/<class>``, and ``s/mIoU@thr=<t>``, ``s/pixel_acc@thr=<t>`` for each swept
    threshold. ``values``: the same figures as ``{OpenVocabSetting: {figure: value}}`` (a swept threshold is a
    setting of its own). Intervals: the bootstrap 95% interval of every mIoU, pixel accuracy and
    pointing figure, resampling images (``bootstrap``; the same draws for every setting). Rows: one per (image,
    setting) with its pixel accuracy, pointing hits and per-class counts ``inter``, ``union``, ``gt``.
    Raises ``ValueError`` when the split holds no image.
    """
    from dense.eval.data import open_data

    extraction = extraction or Extraction()
    bootstrap = bootstrap or Bootstrap()
    scoring = resolve_scoring(encoder, scoring)
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    if not 0.0 <= guard <= 1.0:
        raise InputError(f"guard must be a fraction in [0, 1], got {guard}")
    max_patches = extraction.max_patches
    split = None if split == "all" else split
    data = open_data(data)
    data.check(split)  # the split holds images; every label file's channels, bit depth and size
    ds, sub = data.open(split)
    ids = ds.ids(sub)[:limit] if limit is not None else ds.ids(sub)
    # a semantic dataset (dense.segdata) whose class 0 is not "background" (ADE20K, COCO-Stuff, Context) is scored
    # by the plain argmax over its classes
    offset = 1 if ds.class_names[0] == "background" else 0
    background, thresholds = scoring.background, scoring.thresholds
    if not offset:  # no background class: plain argmax, nothing to threshold
        background, thresholds = None, ()
    names = class_queries(ds.class_names[offset:])  # label k + offset <-> names[k]; first aliases, as big_vision
    K = len(ds.class_names)
    bg_prompts = background_prompts(background) if offset else []
    methods, windows, templates = list(scoring.methods), scoring.windows, list(scoring.templates)
    layers = layers_for(encoder, methods)
    from_image = {m for m in methods if m not in supported_methods(encoder, experimental=True)}  # clear-* on 1 block
    need_rgb = windows > 1 or bool(from_image) or any(r != "none" for r in scoring.refines)
    text = embed_texts(encoder, names + bg_prompts, templates=templates)  # [C + B, E], once for the whole run
    settings = replace(scoring, background=background).settings(background)
    entries = _entries(settings, thresholds)  # (setting, swept?): a swept threshold equal to the run's own counts twice
    meters = {e: metrics.SegmentationMeter(ds.class_names) for e in entries}
    counts: dict = {e: [] for e in entries}  # per image: (inter, union, gt), [K] each
    points: dict = {s: [] for s in settings}  # per image: (hits, points)
    rows = []
    t0 = time.perf_counter()
    paths = [ds.image_path(i) for i in ids]
    fmaps = encoder.extract_many(paths, max_patches=max_patches, layers=layers, batch_size=extraction.batch_size,
                                 progress=False)
    for iid, path, fmap in tqdm(zip(ids, paths, fmaps, strict=True), total=len(ids), desc="openvocab", unit="img",
                                disable=not progress):
        gt = ds.label_map(iid)  # [H, W], IGNORE where no metric counts
        if tuple(gt.shape) != tuple(fmap.image_hw):
            raise InputError(f"{path}: image is {fmap.image_hw}, annotation says {gt.shape} (image id {iid})")
        rgb = load_image(path) if need_rgb else None
        by_cat = {k - offset: m for k, m in ds.class_masks(iid).items() if k >= offset}
        for s in settings:
            m, r = s.method, s.refine
            grid = None
            if windows > 1:
                probs = image_scores(encoder, rgb, text, method=m, max_patches=max_patches, windows=windows,
                                     refine=r)  # [C + B, H, W]
            else:
                src = with_aligned(encoder, rgb, m, max_patches=max_patches) if m in from_image else fmap
                grid = patch_scores(encoder, src, text, method=m)  # [C + B, gh, gw]
                probs = to_image(grid, src) if r == "none" else image_scores(encoder, rgb, text, features=src,
                                                                                   method=m, refine=r)  # [C + B, H, W]
            cm = meters[(s, False)].update(labels_from_scores(probs, len(names), background) - 1 + offset, gt)
            counts[(s, False)].append(stats.counts_from_confusion(cm))
            for t in thresholds:
                e = (replace(s, background=t), True)
                cm_t = meters[e].update(labels_from_scores(probs[: len(names)], len(names), t), gt)
                counts[e].append(stats.counts_from_confusion(cm_t))
            image_hits = []
            for k, mask in by_cat.items():
                if grid is not None and r == "none":
                    point_xy = peak_point_xy(grid[k], fmap)  # the pointing game's one rule
                else:
                    y, x = np.unravel_index(int(probs[k].argmax()), tuple(probs.shape[1:]))  # peak pixel
                    point_xy = np.array([x + 0.5, y + 0.5])
                image_hits.append(bool(metrics.pointing_hits(point_xy[None], [mask])[0]))
            points[s].append((sum(image_hits), len(image_hits)))
            inter, union, gtc = counts[(s, False)][-1]
            rows.append({"image_id": iid, "method": s.prefix,
                         "pixel_acc": metrics.segmentation_figures(cm)["pixel_acc"],
                         "points": len(image_hits), "hits": sum(image_hits), "inter": inter.tolist(),
                         "union": union.tolist(), "gt": gtc.tolist()})
    boot = bootstrap.kwargs()
    values: dict[OpenVocabSetting, dict[str, float]] = {}
    figures, intervals = {}, {}
    for (s, is_swept), meter in meters.items():
        figs = dict(meter.figures()) if not is_swept else {k: meter.figures()[k] for k in ("mIoU", "pixel_acc")}
        arr = np.asarray(counts[(s, is_swept)], np.float64).reshape(-1, 3, K)  # n x (inter, union, gt) x [K]
        ci = stats.segmentation_intervals(arr[:, 0], arr[:, 1], arr[:, 2], **boot)
        if not is_swept:
            hits_pts = np.asarray(points[s], np.float64).reshape(-1, 2)  # [n, 2]
            figs["pointing"] = float(hits_pts[:, 0].sum() / hits_pts[:, 1].sum()) if hits_pts[:, 1].sum() \
                else float("nan")
            ci["pointing"] = stats.ratio_interval(hits_pts[:, 0], hits_pts[:, 1], **boot)
        values.setdefault(s, {}).update({k: v for k, v in figs.items() if k not in values.get(s, {})})
        figures.update({s.name(k, swept=is_swept): v for k, v in figs.items()})
        intervals.update({s.name(k, swept=is_swept): v for k, v in ci.items()})
    meta = {"task": "openvocab", "ann": data.what, "data": data.what, "split": split or "all", "images": len(ids),
            "points": {s.prefix: int(sum(p for _, p in points[s])) for s in settings}, "methods": methods,
            "refines": list(scoring.refines), "settings": [s.prefix for s in settings], "windows": windows,
            "background": list(background) if isinstance(background, tuple) else background,
            "templates": templates, "thresholds": list(thresholds), "encoder": encoder.name,
            "fingerprint": encoder.fingerprint, "max_patches": max_patches or encoder.pixels.max_patches,
            "exif_tagged": exif_tagged(ds, ids), "split_list": split_list(ds, split),
            "dtype": str(encoder.dtype).removeprefix("torch."),
            "bootstrap": {**boot, "level": stats.LEVEL}, "seconds": time.perf_counter() - t0}
    res = Result(figures=figures, rows=rows, meta=meta, intervals=intervals, values=values,
                 artifacts={"settings": settings})
    if choose:
        chosen = choose_setting(res, guard=guard)
        res.meta["chosen"] = chosen
        res.artifacts["chosen"] = chosen_setting(chosen)
    return res


def _entries(settings, thresholds) -> list[tuple[OpenVocabSetting, bool]]:
    """``(setting, swept)`` of a run, in table order: each setting at the run's background, then at each swept
    threshold."""
    return [(s, False) for s in settings] + [(replace(s, background=t), True) for s in settings for t in thresholds]


def run_settings(res: Result) -> list[OpenVocabSetting]:
    """The settings of an openvocab Result at its own background (rebuilt from ``meta`` for a Result read from
    JSON)."""
    if "settings" in res.artifacts:
        return list(res.artifacts["settings"])
    m = res.meta
    return [OpenVocabSetting(*split_setting(p), m["windows"], _bg(m["background"]), tuple(m["templates"]))
            for p in m["settings"]]


def choose_setting(res: Result, *, guard: float = 0.02) -> dict:
    """The setting of an openvocab Result with the best mIoU among those whose pixel accuracy is within ``guard`` of
    the best (:func:`dense.eval.stats.choose`): the run's own background and every swept threshold count.

    Returns the WHOLE setting (``method``, ``refine``, ``windows``, ``background``, ``templates``; ``setting``: its
    figure prefix, e.g. ``map-value-mlp+pamr``; ``text``: all of it in words) with its figures and intervals, and
    ``threshold_at_grid_edge`` (``"lowest"``/``"highest"`` when the chosen threshold is at that edge of the swept
    ones)."""
    m = res.meta
    entries = _entries(run_settings(res), m["thresholds"])
    cands = [(e, s.background, s.name("mIoU", swept=sw), s.name("pixel_acc", swept=sw)) for e in entries
             for s, sw in [e]]
    out = stats.choose(res.figures, cands, guard=guard)
    s, sw = out.pop("method")
    out.update(s.to_dict())
    out["setting"] = s.prefix
    out["text"] = str(s)
    out["mIoU_interval"] = res.intervals.get(s.name("mIoU", swept=sw))
    out["pixel_acc_interval"] = res.intervals.get(s.name("pixel_acc", swept=sw))
    out["threshold_at_grid_edge"] = grid_edge(s.background, m["thresholds"]) \
        if isinstance(s.background, (int, float)) else None
    return out


def _bg(background):
    return tuple(background) if isinstance(background, list) else background


def chosen_setting(choice: dict) -> OpenVocabSetting:
    """The :class:`~dense.eval.settings.OpenVocabSetting` of a :func:`choose_setting` dict."""
    return OpenVocabSetting(choice["method"], choice["refine"], choice["windows"], _bg(choice["background"]),
                            tuple(choice["templates"]))


def split_setting(key: str) -> tuple[str, str]:
    """``(method, refinement)`` of a setting prefix (:func:`setting_key`): ``"map-value-mlp+pamr"`` ->
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
