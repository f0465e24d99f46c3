"""Found / not found: does a localization's score tell an expression that names something in the image from one that
names nothing?

Present expressions are every referring sentence of the split (each names exactly one object). Absent expressions are
``"the <colour> <shape>"`` for every class of the dataset with no annotation at all in the image (crowd regions
included), the form of the simplest generated sentence. Each gets :meth:`dense.Localizer.localize`'s ``score`` (the
heatmap peak, no candidates).

An absent expression is one of four kinds (``ABSENCE_KINDS``), by what of it the image does hold: ``colour`` (an
object of its colour, none of its shape), ``shape`` (an object of its shape, none of its colour), ``colour+shape`` (its
colour on one object, its shape on another) or ``neither``. A single not-found rate hides where "not found" fails: an
absent "red circle" beside a red square is much harder to reject than one in a picture with no red at all.
"""

from __future__ import annotations

import numpy as np

from dense._progress import tqdm
from dense.errors import InputError
from dense.eval import Result, stats
from dense.eval.settings import Bootstrap, Extraction

CHOICE_GRID = tuple(round(float(t), 2) for t in np.arange(0.01, 1.0, 0.01))  # thresholds choose_found_threshold tries
ABSENCE_KINDS = ("colour", "shape", "colour+shape", "neither")  # what of an absent expression the image holds


def absence_kind(colour: str, shape: str, there: set[tuple[str, str]]) -> str:
    """The kind of an absent ``colour shape`` in an image holding the ``(colour, shape)`` pairs ``there``."""
    colour_there = any(c == colour for c, _ in there)
    shape_there = any(s == shape for _, s in there)
    return {(True, True): "colour+shape", (True, False): "colour", (False, True): "shape",
            (False, False): "neither"}[(colour_there, shape_there)]


def _rates(rows: list[dict], threshold: float) -> dict[str, float]:
    """``found|present``, ``not_found|absent``, their mean ``balanced`` and, for rows that carry their ``absence``
    kind, ``not_found|absent/<kind>`` per kind of :data:`ABSENCE_KINDS` that occurs."""
    present = np.array([r["score"] for r in rows if r["present"]], np.float64)
    absent = np.array([r["score"] for r in rows if not r["present"]], np.float64)
    found = float((present >= threshold).mean()) if present.size else float("nan")
    not_found = float((absent < threshold).mean()) if absent.size else float("nan")
    out = {"found|present": found, "not_found|absent": not_found, "balanced": (found + not_found) / 2}
    for kind in ABSENCE_KINDS:
        scores = np.array([r["score"] for r in rows if not r["present"] and r.get("absence") == kind], np.float64)
        if scores.size:
            out[f"not_found|absent/{kind}"] = float((scores < threshold).mean())
    return out


def evaluate_found(encoder, data, *, split: str | None = "val", threshold: float | None = None,
                   limit: int | None = None, extraction: Extraction | None = None, bootstrap: Bootstrap | None = None,
                   progress: bool = False) -> Result:
    """Found rate on present expressions and not-found rate on absent ones at ``threshold`` (None: the encoder's
    calibrated ``found_threshold``).

    ``data``: a :class:`dense.eval.data.Data` with referring expressions (``open_data(ann=, images=, refs=)``);
    ``extraction.max_patches``: the token budget; ``bootstrap``: the intervals' draws.

    Figures: ``found|present``, ``not_found|absent`` and their mean ``balanced``, and ``not_found|absent/<kind>`` for
    each kind of absence (:data:`ABSENCE_KINDS`), with bootstrap 95% intervals (``bootstrap``); the count of each kind
    is ``meta["absent_by_kind"]``. Rows: one per expression with ``image_id``, ``expression``, ``present``, ``score``
    and, for absent ones, ``absence`` (its kind), so :func:`choose_found_threshold` can try other thresholds without
    running the model again.
    """
    from dense.datasets import CATEGORIES
    from dense.heatmap import get_method, layers_for, supported_methods
    from dense.refer import Localizer

    if threshold is None:
        threshold = encoder.calibration.found_threshold
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold is a probability in [0, 1], got {threshold}")
    from dense.eval.data import open_data

    extraction = extraction or Extraction()
    bootstrap = bootstrap or Bootstrap()
    max_patches, resamples, seed = extraction.max_patches, bootstrap.resamples, bootstrap.seed
    data = open_data(data)
    ds = data.dataset(None)
    by_image: dict[int, list[str]] = {}
    for r in data.load_refs(split):  # raises naming the splits that hold expressions
        by_image.setdefault(r.image_id, []).extend(r.sentences)
    image_ids = sorted(by_image)[:limit] if limit is not None else sorted(by_image)
    pair_of = {f"{c['colour']} {c['shape']}": (c["colour"], c["shape"]) for c in CATEGORIES}
    rows: list[dict] = []
    method = get_method(encoder.calibration.method).name
    paths = [ds.image_path(i) for i in image_ids]
    if method in supported_methods(encoder, experimental=True):  # batched extraction, the method's blocks
        fmaps = encoder.extract_many(paths, max_patches=max_patches, layers=layers_for(encoder, [method]),
                                     batch_size=extraction.batch_size, progress=False)
    else:  # clear-* on a 1-block tower: each Localizer computes its tokens from the image
        fmaps = iter([None] * len(paths))
    for iid, path, fmap in tqdm(zip(image_ids, paths, fmaps, strict=True), total=len(paths), desc="found",
                                unit="img", disable=not progress):
        there = {pair_of[ds.category_name(a["category_id"])] for a in ds.anns(iid, crowd=True)}
        loc = Localizer(encoder, path, features=fmap, max_patches=max_patches)
        for expr in by_image[iid]:
            rows.append({"image_id": iid, "expression": expr, "present": True,
                         "score": loc.localize(expr, found_threshold=threshold).score})
        for name, (colour, shape) in pair_of.items():
            if (colour, shape) not in there:
                expr = f"the {name}"
                rows.append({"image_id": iid, "expression": expr, "present": False,
                             "absence": absence_kind(colour, shape, there),
                             "score": loc.localize(expr, found_threshold=threshold).score})
    figures = _rates(rows, threshold)
    intervals = {}
    absent_rows = [r for r in rows if not r["present"]]
    for name, subset, hit in (("found|present", [r for r in rows if r["present"]], lambda s: s >= threshold),
                              ("not_found|absent", absent_rows, lambda s: s < threshold),
                              *((f"not_found|absent/{k}", [r for r in absent_rows if r["absence"] == k],
                                 lambda s: s < threshold) for k in ABSENCE_KINDS)):
        if subset:
            intervals[name] = stats.mean_interval([float(hit(r["score"])) for r in subset], resamples=resamples,
                                                  seed=seed)
    meta = {"task": "found", "ann": data.what, "refs": str(data.refs), "split": split, "images": len(image_ids),
            "present": sum(r["present"] for r in rows), "absent": len(absent_rows),
            "absent_by_kind": {k: n for k in ABSENCE_KINDS if (n := sum(r["absence"] == k for r in absent_rows))},
            "threshold": threshold, "encoder": encoder.name, "fingerprint": encoder.fingerprint,
            "max_patches": max_patches or encoder.pixels.max_patches}
    return Result(figures=figures, rows=rows, meta=meta, intervals=intervals)


def choose_found_threshold(res: Result, grid=CHOICE_GRID) -> float:
    """The threshold of ``grid`` with the best balanced rate (mean of found|present and not_found|absent) over the
    rows of an :func:`evaluate_found` run (ties: the lower threshold)."""
    if not res.rows:
        raise InputError("the run holds no expressions")
    balanced = [_rates(res.rows, t)["balanced"] for t in grid]
    return float(grid[int(np.argmax(balanced))])


def rates_at(res: Result, threshold: float) -> dict[str, float]:
    """The figures of an :func:`evaluate_found` run's rows (``found|present``, ``not_found|absent``, ``balanced``,
    ``not_found|absent/<kind>``) at another threshold."""
    return _rates(res.rows, threshold)
