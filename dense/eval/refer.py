"""Referring-expression localization on COCO + RefCOCO-style annotations: Acc@0.5 and the pointing game."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dense import metrics
from dense._progress import tqdm
from dense.errors import AnnotationError, InputError
from dense.eval import Result, stats
from dense.eval.settings import Bootstrap, Extraction, ReferScoring, Way, figure_name, grid_edge
from dense.heatmap import get_method, layers_for, supported_methods, templates_of
from dense.preprocess import check_max_patches, exif_tagged, load_image
from dense.refer import BOX_THRESHOLDS, Localizer, heatmap_box_xyxy


def config_key(setting: str, method: str, scorer: str = "-") -> str:
    """The figure prefix of one way of localizing: ``none/map-value-mlp/-``, ``gt-boxes/map-value-mlp/map-box``
    (:attr:`dense.eval.settings.Way.prefix`)."""
    return Way(setting, method, scorer).prefix


def ways(meta: dict) -> list[Way]:
    """Every way of localizing of an :func:`evaluate_refer` run, in table order (no swept thresholds)."""
    methods, scorers = meta["methods"], meta["scorers"]
    return ([Way("none", "centre-prior")] + [Way("none", m) for m in methods]
            + [Way("none", m, "components+map-box") for m in methods]
            + [Way("gt-boxes", m, s) for m in methods for s in scorers] + [Way("gt-boxes", "-", "random")])


def evaluate_refer(encoder, data, *, split: str | None = "val", scoring: ReferScoring | None = None,
                   extraction: Extraction | None = None, limit: int | None = None,
                   bootstrap: Bootstrap | None = None, choose: bool = False, progress: bool = False) -> Result:
    """Acc@0.5 and pointing accuracy of :class:`dense.Localizer` on every sentence of every ref of ``split``.

    ``data``: a :class:`dense.eval.data.Data` with referring expressions (``open_data(ann=, images=, refs=)``).
    ``scoring`` (:class:`~dense.eval.settings.ReferScoring`): the ways of localizing (each a
    :class:`~dense.eval.settings.Way`, a figure prefix), per heatmap method m (None: the encoder's calibrated one):

    - ``none/m/-``: no candidates; the component box at ``box_threshold`` (None: the calibration's) and the refined
      peak; ``none/m/-/acc@0.5@thr=<t>`` for each threshold of ``thresholds``;
    - ``none/m/components+map-box``: the components at all ``thresholds`` re-ranked by the map-box scorer;
    - ``gt-boxes/m/<scorer>``: the image's non-crowd ground-truth boxes are the candidates, ranked by each scorer;
    - baselines ``none/centre-prior/-`` (the whole image, its centre) and ``gt-boxes/-/random`` (the EXPECTED
      Acc@0.5 / pointing of a uniformly random candidate, pointing at its centre).

    ``split``: the refs' split; None or ``"all"``: every split. ``extraction``: token budget and images per
    extraction pass. ``choose``: also choose each method's box threshold among ``thresholds``
    (:func:`choose_box_thresholds`), kept as ``meta["chosen"]`` (per method: the threshold, its Acc@0.5 and whether
    it lies at the edge of the grid).

    Figures: ``<prefix>/acc@0.5``, ``<prefix>/pointing`` (the Localization's point in the target mask) and
    ``<prefix>/pointing_box_centre``; the same over images with at least two objects under ``multi/<prefix>/...``.
    Rows: one per (sentence, way) with ``iou``, ``point_hit`` and ``centre_hit``. Intervals (``Result.intervals``):
    the bootstrap 95% interval of every figure, resampling expressions (``bootstrap``; the same draws for every
    way). Raises ``ValueError`` when the split holds no expression.
    """
    from dense.eval.data import open_data

    scoring = scoring or ReferScoring()
    extraction = extraction or Extraction()
    bootstrap = bootstrap or Bootstrap()
    max_patches = extraction.max_patches
    methods = [get_method(m).name for m in (scoring.methods or [encoder.calibration.method])]
    templates = templates_of(encoder, scoring.templates)
    box_thresholds = BOX_THRESHOLDS if scoring.thresholds is None else scoring.thresholds
    box_threshold = encoder.calibration.box_threshold if scoring.box_threshold is None else scoring.box_threshold
    if choose and not box_thresholds:
        raise InputError("choose needs box thresholds to choose from (ReferScoring(thresholds=), --sweep)")
    from_image = {m for m in methods if m not in supported_methods(encoder, experimental=True)}  # clear-* on 1 block
    layers = layers_for(encoder, methods)
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    split = None if split == "all" else split
    data = open_data(data)
    ds = data.dataset(None)
    by_image: dict[int, list] = {}
    for r in data.load_refs(split):
        by_image.setdefault(r.image_id, []).append(r)
    image_ids = sorted(by_image)[:limit] if limit is not None else sorted(by_image)

    rows: list[dict] = []
    seconds = {"extract": 0.0, "localize": 0.0}
    n_sentences = 0
    paths = [ds.image_path(i) for i in image_ids]
    fmaps = encoder.extract_many(paths, max_patches=max_patches, layers=layers, batch_size=extraction.batch_size,
                                 progress=False)
    t0 = time.perf_counter()
    for iid, path, fmap in tqdm(zip(image_ids, paths, fmaps, strict=True), total=len(image_ids), desc="refer",
                                unit="img", disable=not progress):
        seconds["extract"] += time.perf_counter() - t0
        if tuple(fmap.image_hw) != ds.image_hw(iid):
            raise AnnotationError(f"{path}: image is {tuple(fmap.image_hw)}, annotation says {ds.image_hw(iid)} "
                                  f"(image id {iid})")
        rgb = load_image(path) if from_image else path
        cand_anns = ds.anns(iid, crowd=False)
        cands_xyxy = np.stack([ds.box_xyxy(a["id"]) for a in cand_anns])  # [K, 4]
        H, W = fmap.image_hw
        locs = {m: Localizer(encoder, rgb, features=None if m in from_image else fmap, method=m, templates=templates,
                             max_patches=max_patches) for m in methods}
        for ref in by_image[iid]:
            gt_xyxy, mask = ds.box_xyxy(ref.ann_id), ds.mask(ref.ann_id)
            cand_ious = metrics.box_iou_xyxy(cands_xyxy, gt_xyxy)[:, 0]  # [K]
            cand_centres_xy = (cands_xyxy[:, :2] + cands_xyxy[:, 2:]) / 2  # [K, 2]
            cand_hits = metrics.pointing_hits(cand_centres_xy, [mask] * len(cands_xyxy))  # [K]
            for sent in ref.sentences:
                n_sentences += 1
                base = {"image_id": iid, "ref_id": ref.ref_id, "sentence": sent, "candidates": len(cands_xyxy)}
                found = {Way("none", "centre-prior"): (np.array([0.0, 0.0, W, H]), np.array([W / 2, H / 2]))}
                t1 = time.perf_counter()
                for m, loc in locs.items():
                    heatmap = loc.heatmaps([sent])[0]
                    for t in box_thresholds:
                        found[Way("none", m, threshold=t)] = (heatmap_box_xyxy(heatmap, loc.fmap, threshold=t), None)
                    r = loc.localize(sent, box_threshold=box_threshold)
                    found[Way("none", m)] = (r.box_xyxy, r.point_xy)
                    r = loc.localize(sent, rerank_thresholds=box_thresholds)
                    found[Way("none", m, "components+map-box")] = (r.box_xyxy, r.point_xy)
                    for s in scoring.scorers:
                        r = loc.localize(sent, candidates_xyxy=cands_xyxy, scorer=s)
                        found[Way("gt-boxes", m, s)] = (r.box_xyxy, r.point_xy)
                seconds["localize"] += time.perf_counter() - t1
                for way, (box, point_xy) in found.items():
                    centre_xy = (box[:2] + box[2:]) / 2
                    row = {**base, "way": way, "iou": float(metrics.box_iou_xyxy(box[None], gt_xyxy)[0, 0]),
                           "centre_hit": bool(metrics.pointing_hits(centre_xy[None], [mask])[0])}
                    row["point_hit"] = row["centre_hit"] if point_xy is None else bool(
                        metrics.pointing_hits(point_xy[None], [mask])[0])
                    rows.append(row)
                rows.append({**base, "way": Way("gt-boxes", "-", "random"),
                             "acc@0.5": float((cand_ious >= 0.5).mean()), "point_hit": float(cand_hits.mean()),
                             "centre_hit": float(cand_hits.mean())})
        t0 = time.perf_counter()
    boot = bootstrap.kwargs()
    values, cis = _values(rows, **boot)
    multi, multi_cis = _values([r for r in rows if r["candidates"] >= 2], **boot)
    figures = {w.name(k): v for w, figs in values.items() for k, v in figs.items()}
    intervals = {w.name(k): v for w, figs in cis.items() for k, v in figs.items()}
    figures.update({figure_name("multi", w.name(k)): v for w, figs in multi.items() for k, v in figs.items()})
    intervals.update({figure_name("multi", w.name(k)): v for w, figs in multi_cis.items() for k, v in figs.items()})
    for r in rows:  # the JSON rows name their way flat
        r["way"] = r["way"].key
    meta = {"task": "refer", "ann": data.what, "data": data.what, "refs": str(data.refs), "split": split or "all",
            "images": len(image_ids), "refs_count": sum(len(by_image[i]) for i in image_ids),
            "expressions": n_sentences,
            "expressions_multi": len({(r["image_id"], r["ref_id"], r["sentence"]) for r in rows
                                      if r["candidates"] >= 2}),
            "methods": methods, "scorers": list(scoring.scorers), "thresholds": list(box_thresholds),
            "box_threshold": box_threshold, "templates": list(templates), "encoder": encoder.name,
            "fingerprint": encoder.fingerprint, "dtype": str(encoder.dtype).removeprefix("torch."),
            "max_patches": max_patches or encoder.pixels.max_patches, "exif_tagged": exif_tagged(ds, image_ids),
            "bootstrap": {**boot, "level": stats.LEVEL}, "seconds": seconds}
    res = Result(figures=figures, rows=rows, meta=meta, intervals=intervals, values=values,
                 artifacts={"multi": multi})
    if choose:
        res.meta["chosen"] = choose_box_thresholds(res)
    return res


def _values(rows: list[dict], *, resamples: int = stats.RESAMPLES, seed: int = 0) -> tuple[dict, dict]:
    """``({Way: {figure: value}}, {Way: {figure: interval}})``: Acc@0.5 and pointing per way of localizing over
    ``rows``, with bootstrap intervals over expressions (rows of one way are in the same expression order for every
    way, so the draws are paired). A swept threshold's way has Acc@0.5 only."""
    by_way: dict[Way, list[dict]] = {}
    for r in rows:
        by_way.setdefault(r["way"], []).append(r)
    out: dict[Way, dict[str, float]] = {}
    cis: dict[Way, dict[str, tuple[float, float]]] = {}
    for way, rs in by_way.items():
        per = {"acc@0.5": [r["acc@0.5"] if "acc@0.5" in r else float(r["iou"] >= 0.5) for r in rs]}
        if way.threshold is None:
            per["pointing"] = [float(r["point_hit"]) for r in rs]
            per["pointing_box_centre"] = [float(r["centre_hit"]) for r in rs]
        out[way] = {k: float(np.mean(v)) for k, v in per.items()}
        cis[way] = {k: stats.mean_interval(v, resamples=resamples, seed=seed) for k, v in per.items()}
    return out, cis


def choose_box_threshold(res: Result, method: str) -> float:
    """The swept box threshold with the best Acc@0.5 without candidates for ``method`` (ties: the lower one)."""
    thresholds = res.meta["thresholds"]
    if not thresholds:
        raise InputError("the run swept no box threshold (thresholds=())")
    accs = [res.figures[Way("none", method, threshold=t).name("acc@0.5")] for t in thresholds]
    return float(thresholds[int(np.argmax(accs))])


def choose_box_thresholds(res: Result) -> dict[str, dict]:
    """Per method of an :func:`evaluate_refer` Result, the chosen box threshold (:func:`choose_box_threshold`) as the
    whole setting: ``{"method", "templates", "max_patches", "box_threshold", "acc@0.5", "acc@0.5_interval",
    "threshold_at_grid_edge", "text"}``."""
    out = {}
    for m in res.meta["methods"]:
        t = choose_box_threshold(res, m)
        way = Way("none", m, threshold=t)
        edge = grid_edge(t, res.meta["thresholds"])
        out[m] = {"method": m, "templates": list(res.meta["templates"]), "max_patches": res.meta["max_patches"],
                  "box_threshold": t, "acc@0.5": res.figures[way.name("acc@0.5")],
                  "acc@0.5_interval": list(res.intervals.get(way.name("acc@0.5"), ())),
                  "threshold_at_grid_edge": edge,
                  "text": f"method {m}, no candidates, box threshold {t}, templates {list(res.meta['templates'])}, "
                          f"{res.meta['max_patches']} tokens"}
    return out


def box_threshold_calibration(res: Result, method: str, *, command: str | None = None) -> dict:
    """The ``dense_calibration.json`` entries of the box threshold chosen for ``method`` on ``res``'s split: the
    threshold and its ``measured`` provenance (command, split, images, expressions, Acc@0.5 and its interval)."""
    t = choose_box_threshold(res, method)
    name = Way("none", method, threshold=t).name("acc@0.5")
    m = res.meta
    return {"box_threshold": t, "measured": {"box_threshold": {
        "command": command, "split": m["split"], "images": m["images"], "expressions": m["expressions"],
        "method": method, "max_patches": m["max_patches"], "acc@0.5": res.figures[name],
        "acc@0.5_interval": list(res.intervals.get(name, ())), "thresholds": m["thresholds"]}}}


def evaluate_refer_head_protocol(encoder, data, *, train_split: str = "train", split: str = "val",
                                 test_split: str | None = None,
                                 templates: Sequence[str] | None = None, max_patches: int | None = None,
                                 steps: int = 1500, train_batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                                 device: str | None = None, dtype: str | None = None, progress: bool = False) -> Result:
    """Train the small referring head (:mod:`probes.refer_head`) on ``train_split``'s expressions over frozen tokens
    and report Acc@0.5 and pointing on ``split`` (and on ``test_split`` once, when given).

    ``data``: a :class:`dense.eval.data.Data` with referring expressions (``open_data(ann=, images=, refs=)``). Every
    split is checked before the model is loaded. ``encoder``: an Encoder or a name for :func:`dense.load_encoder`
    (with ``device``, ``dtype``). Figures: ``<split>/acc@0.5``, ``<split>/pointing`` per reported split; ``meta``:
    ``reported`` (the splits), ``expressions`` per split, ``encoder`` (its spec), seconds; the trained head is
    ``result.artifacts["head"]`` (``.save(path)``: a ``.safetensors`` file). ``progress``: bars over the extraction
    and the training steps.
    """
    from probes.refer_head import dataset_samples, train_refer_head

    for name, v in (("steps", steps), ("train_batch_size", train_batch_size)):
        if v < 1:
            raise InputError(f"{name} must be at least 1, got {v}")
    check_max_patches(max_patches)
    reported = [split] + ([test_split] if test_split else [])
    if test_split is not None and test_split in (train_split, split):
        raise InputError(f"the reported split {test_split!r} must not be the one trained on or chosen on")
    from dense.eval.data import open_data

    data = open_data(data)
    for s in (train_split, *reported):
        data.load_refs(s)  # each split holds expressions, before any extraction
    ds = data.dataset(None)
    ann, refs, images = ds.source, data.refs, ds.image_dir
    if isinstance(encoder, (str, Path)):
        from dense.encoder import load_encoder

        encoder = load_encoder(encoder, **{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
    common = dict(templates=templates, max_patches=max_patches, progress=progress)
    t0 = time.perf_counter()
    train, _ = dataset_samples(encoder, ann, refs, images, split=train_split, **common)
    t1 = time.perf_counter()
    head = train_refer_head(train, steps=steps, batch_size=train_batch_size, lr=lr, seed=seed,
                            log_every=max(steps // 10, 1), progress=progress)
    t2 = time.perf_counter()
    figures, counts = {}, {train_split: len(train)}
    for s in reported:
        samples, masks = dataset_samples(encoder, ann, refs, images, split=s, **common)
        r = evaluate_refer_head(head, samples, masks)
        figures.update({figure_name(s, k): v for k, v in r.figures.items()})
        counts[s] = r.meta["expressions"]
    meta = {"task": "refer-head", "ann": str(ann), "refs": str(refs), "encoder": encoder.spec(), "steps": steps,
            "train_batch_size": train_batch_size, "lr": lr, "seed": seed, "train_split": train_split,
            "reported": reported, "expressions": counts, "seconds_features": t1 - t0, "seconds_train": t2 - t1}
    return Result(figures=figures, meta=meta, artifacts={"head": head})


def evaluate_refer_head(head, samples: Sequence, masks: Sequence[np.ndarray]) -> Result:
    """Acc@0.5 of a trained referring head's box and pointing of its heatmap peak (:mod:`probes.refer_head`).

    ``head``: anything with ``predict(fmap, text_emb) -> {"box_xyxy": [1, 4], "point_xy": [1, 2]}``;
    ``samples``: objects with ``fmap``, ``text`` and ``box_xyxy``; ``masks``: the targets' masks, one per sample.
    """
    rows = []
    for s, mask in zip(samples, masks, strict=True):
        out = head.predict(s.fmap, s.text)
        box, point_xy = np.asarray(out["box_xyxy"][0]), np.asarray(out["point_xy"][0])
        rows.append({"iou": float(metrics.box_iou_xyxy(box[None], s.box_xyxy)[0, 0]),
                     "point_hit": bool(metrics.pointing_hits(point_xy[None], [mask])[0])})
    figures = {"acc@0.5": float(np.mean([r["iou"] >= 0.5 for r in rows])) if rows else float("nan"),
               "pointing": float(np.mean([r["point_hit"] for r in rows])) if rows else float("nan")}
    return Result(figures=figures, rows=rows, meta={"expressions": len(rows)})
