"""Zero-shot classification and the pointing game, each one evaluator (data in, :class:`~dense.eval.Result` out).

    >>> res = evaluate_zero_shot(enc, [(image, label), ...], class_names, templates=("{}",))
    >>> res.figures["acc"], res.intervals["acc"]
    >>> res = evaluate_pointing(enc, [(image, [("red circle", mask), ...]), ...], methods=["map-value-mlp"])
    >>> res.figures["map-value-mlp/pointing"]

The pointing rule is :func:`peak_point_xy`, the one :func:`dense.eval.openvocab.evaluate_openvocab` scores too: the
centre of the patch where a query's patch scores peak, mapped to the original image
(:meth:`dense.FeatureMap.grid_to_pixel_xy`), is a hit when it lies on the query's mask
(:func:`dense.metrics.pointing_hits`: pixel ``(floor(y), floor(x))``). ``data`` is either in-memory samples (a
script's generated images) or a COCO-style source (:func:`dense.eval.data.open_data`): zero-shot classification
reads the images whose non-crowd annotations are all of one category, pointing every (image, category present with
one object) pair with that object's mask.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from dense import metrics
from dense.errors import InputError
from dense.eval import Result, stats
from dense.eval.settings import Bootstrap, Extraction, figure_name


def peak_point_xy(grid: np.ndarray, fmap) -> np.ndarray:
    """The centre of the peak patch of ``grid`` (``[gh, gw]`` scores of one query) in original-image pixels:
    float64 ``[2]`` ``(x, y)``. The pointing game's rule for patch scores."""
    from dense.refer import find_peak_grid

    ij = find_peak_grid(np.asarray(grid, np.float64), peak="none")  # peak patch (i, j)
    return np.asarray(fmap.grid_to_pixel_xy(ij), np.float64)


def _single_label_samples(data, split) -> tuple[list, list[str]]:
    """``([(image path, label index)], class names)``: images whose non-crowd annotations are all one category."""
    ds, sub = data.open(split)
    names = list(ds.class_names[1:])  # class_names[0] is background
    out = []
    for i in ds.ids(sub):
        cats = {ds.cat_to_label[a["category_id"]] - 1 for a in ds.anns(i, crowd=False)}
        if len(cats) == 1:
            out.append((ds.image_path(i), cats.pop()))
    return out, names


def _pointing_samples(data, split) -> list:
    """``[(image path, [(category name, mask)])]``: each category with exactly one non-crowd object in its image."""
    ds, sub = data.open(split)
    out = []
    for i in ds.ids(sub):
        anns = ds.anns(i, crowd=False)
        cats = [a["category_id"] for a in anns]
        queries = [(ds.category_name(a["category_id"]), ds.mask(a["id"])) for a in anns
                   if cats.count(a["category_id"]) == 1]
        if queries:
            out.append((ds.image_path(i), queries))
    return out


def _from_source(data, split):
    """A data source opened with :func:`dense.eval.data.open_data`, or None for in-memory samples."""
    if isinstance(data, (list, tuple)):
        return None
    from dense.eval.data import open_data

    data = open_data(data)
    data.check(split)
    return data


def evaluate_zero_shot(encoder, data, class_names: Sequence[str] | None = None, *, split: str | None = None,
                       templates: Sequence[str] | None = None, extraction: Extraction | None = None,
                       bootstrap: Bootstrap | None = None) -> Result:
    """Zero-shot classification accuracy: each image's argmax of :func:`dense.classify` over ``class_names``.

    ``data``: ``[(image, label index)]`` (an image: path, PIL or uint8 array) with ``class_names``, or a COCO-style
    source (:func:`dense.eval.data.open_data`; ``split``), whose single-category images are classified among its
    category names. ``templates``: None = the checkpoint's calibration. ``extraction.max_patches``: the token budget
    (None: the checkpoint's). Figures: ``acc``; intervals: its bootstrap 95% interval over images; rows: per image
    its label, prediction and the probability of each. Raises ``ValueError`` when there is no image.
    """
    from dense.openvocab import classify

    extraction = extraction or Extraction()
    bootstrap = bootstrap or Bootstrap()
    source = _from_source(data, split)
    if source is not None:
        samples, names = _single_label_samples(source, split)
        if class_names is not None and list(class_names) != names:
            raise InputError("class_names come from the data's categories; give none with a data source")
    else:
        samples, names = list(data), list(class_names or [])
    if not samples:
        raise InputError(f"{getattr(source, 'what', 'the samples')}: no image to classify")
    if not names:
        raise InputError("class_names: give the names the labels index")
    labels = np.array([int(lab) for _, lab in samples])
    if labels.min() < 0 or labels.max() >= len(names):
        raise InputError(f"labels must index class_names (0..{len(names) - 1}), got {labels.min()}..{labels.max()}")
    t0 = time.perf_counter()
    probs = classify(encoder, [img for img, _ in samples], names, templates=templates,
                     max_patches=extraction.max_patches).numpy()  # [N, C]
    pred = probs.argmax(-1)  # [N]
    hit = (pred == labels).astype(np.float64)  # [N]
    rows = [{"label": names[lab], "pred": names[p], "hit": bool(h), "prob": float(pr[p])}
            for lab, p, h, pr in zip(labels, pred, hit, probs, strict=True)]
    from dense.heatmap import templates_of

    meta = {"task": "zero-shot", "data": getattr(source, "what", "samples"), "split": split, "images": len(samples),
            "class_names": names, "templates": list(templates_of(encoder, templates)),
            "max_patches": extraction.max_patches or encoder.pixels.max_patches, "encoder": encoder.name,
            "fingerprint": encoder.fingerprint, "bootstrap": {**bootstrap.kwargs(), "level": stats.LEVEL},
            "seconds": time.perf_counter() - t0}
    return Result(figures={"acc": float(hit.mean())}, rows=rows, meta=meta,
                  intervals={"acc": stats.mean_interval(hit, **bootstrap.kwargs())})


def evaluate_pointing(encoder, data, *, split: str | None = None, methods: Sequence[str] | None = None,
                      templates: Sequence[str] | None = None, extraction: Extraction | None = None,
                      bootstrap: Bootstrap | None = None, progress: bool = False) -> Result:
    """The pointing game of each heatmap method of ``methods`` (None: the calibrated one): for every (image, query),
    is the query's peak patch centre (:func:`peak_point_xy`) on its mask?

    ``data``: ``[(image, [(query, mask bool [H, W]), ...])]`` (in-memory samples), or a COCO-style source
    (:func:`dense.eval.data.open_data`; ``split``), whose queries are the category names of the categories with one
    object in the image. ``extraction``: the token budget and images per extraction pass. Figures:
    ``<method>/pointing`` (:func:`dense.eval.settings.figure_name`); intervals: bootstrap 95% over queries; rows: one
    per (image, query, method) with the point and the hit.
    """
    from dense._progress import tqdm
    from dense.heatmap import get_method, layers_for, patch_scores, supported_methods, templates_of, with_aligned

    extraction = extraction or Extraction()
    bootstrap = bootstrap or Bootstrap()
    source = _from_source(data, split)
    samples = _pointing_samples(source, split) if source is not None else [s for s in data if len(s[1])]
    if not samples:
        raise InputError(f"{getattr(source, 'what', 'the samples')}: no (image, query) to point at")
    methods = [get_method(m).name for m in (methods or [encoder.calibration.method])]
    templates = templates_of(encoder, templates)
    layers = layers_for(encoder, methods)
    from_image = {m for m in methods if m not in supported_methods(encoder, experimental=True)}  # clear-* on 1 block
    hits: dict[str, list[float]] = {m: [] for m in methods}
    rows = []
    t0 = time.perf_counter()
    fmaps = encoder.extract_many([img for img, _ in samples], max_patches=extraction.max_patches, layers=layers,
                                 batch_size=extraction.batch_size, progress=False)
    for k, ((image, queries), fmap) in enumerate(tqdm(zip(samples, fmaps, strict=True), total=len(samples),
                                                      desc="pointing", unit="img", disable=not progress)):
        names = [q for q, _ in queries]
        for m in methods:
            src = with_aligned(encoder, image, m, max_patches=extraction.max_patches) if m in from_image else fmap
            scores = patch_scores(encoder, src, names, method=m, templates=templates)  # [T, gh, gw]
            for t, (name, mask) in enumerate(queries):
                point_xy = peak_point_xy(scores[t], src)
                hit = bool(metrics.pointing_hits(point_xy[None], [mask])[0])
                hits[m].append(float(hit))
                rows.append({"image": k, "query": name, "method": m, "point_xy": point_xy.tolist(), "hit": hit})
    figures = {figure_name(m, "pointing"): float(np.mean(h)) for m, h in hits.items()}
    intervals = {figure_name(m, "pointing"): stats.mean_interval(h, **bootstrap.kwargs()) for m, h in hits.items()}
    meta = {"task": "pointing", "data": getattr(source, "what", "samples"), "split": split, "images": len(samples),
            "queries": len(hits[methods[0]]), "methods": methods, "templates": list(templates),
            "max_patches": extraction.max_patches or encoder.pixels.max_patches, "encoder": encoder.name,
            "fingerprint": encoder.fingerprint, "bootstrap": {**bootstrap.kwargs(), "level": stats.LEVEL},
            "seconds": time.perf_counter() - t0}
    return Result(figures=figures, rows=rows, meta=meta, intervals=intervals)


__all__ = ["evaluate_zero_shot", "evaluate_pointing", "peak_point_xy"]
