"""Bootstrap confidence intervals for evaluation figures, and choosing a setting on validation with them.

Percentile bootstrap over SAMPLES (images for segmentation, expressions for localization): ``resamples`` draws of n
samples with replacement, the figure recomputed on each, the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
reported. The draws are a function of ``(n, resamples, seed)`` only, so every method evaluated on the same samples is
resampled identically (paired intervals), and a run is deterministic.

Segmentation figures are ratios of sums (mIoU = mean over classes of sum(intersection) / sum(union)), so they are
recomputed from per-image per-class counts, not averaged per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dense.errors import InputError

RESAMPLES = 1000
LEVEL = 0.95


def resample_counts(n: int, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` float64: how many times each sample appears in each bootstrap draw (rows sum to n)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))  # [B, n] sample indices
    out = np.zeros((resamples, n))
    np.add.at(out, (np.arange(resamples)[:, None], idx), 1.0)  # [B, n] counts
    return out


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mean_interval(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
                  ) -> tuple[float, float]:
    """Interval of the mean of per-sample values (Acc@0.5 hits, pointing hits)."""
    v = np.asarray(values, np.float64)  # [n]
    if v.size == 0:
        return float("nan"), float("nan")
    w = resample_counts(v.size, resamples=resamples, seed=seed)  # [B, n]
    return _interval(w @ v / v.size, level)


def ratio_interval(num: Sequence[float], den: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0,
                   level: float = LEVEL) -> tuple[float, float]:
    """Interval of ``sum(num) / sum(den)`` over resampled samples (pointing over images with several points)."""
    a, b = np.asarray(num, np.float64), np.asarray(den, np.float64)  # [n] each
    if a.size == 0:
        return float("nan"), float("nan")
    w = resample_counts(a.size, resamples=resamples, seed=seed)  # [B, n]
    with np.errstate(invalid="ignore", divide="ignore"):
        return _interval((w @ a) / (w @ b), level)


def segmentation_stats(inter: np.ndarray, union: np.ndarray, gt: np.ndarray, *, resamples: int = RESAMPLES,
                       seed: int = 0) -> np.ndarray:
    """Bootstrap draws of ``(mIoU, pixel_acc)`` from per-image per-class counts: ``[B, 2]``.

    ``inter``, ``union``, ``gt``: ``[n, K]`` (intersection = true positives, union, ground-truth pixels of class k in
    image i, ignored pixels excluded). As :func:`dense.metrics.segmentation_figures`: mIoU over the classes whose
    union is non-empty in the draw; pixel accuracy = sum of intersections / labelled pixels.
    """
    w = resample_counts(inter.shape[0], resamples=resamples, seed=seed)  # [B, n]
    I, U, G = w @ inter, w @ union, w @ gt  # [B, K] each
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(U > 0, I / np.where(U > 0, U, 1), np.nan)  # [B, K]
        miou = np.nanmean(np.where(np.isfinite(iou), iou, np.nan), axis=1)
        pix = I.sum(1) / G.sum(1)
    return np.stack([miou, pix], axis=1)  # [B, 2]


def segmentation_intervals(inter, union, gt, *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
                           ) -> dict[str, tuple[float, float]]:
    """``{"mIoU": (lo, hi), "pixel_acc": (lo, hi)}`` from per-image per-class counts ``[n, K]``."""
    draws = segmentation_stats(np.asarray(inter, np.float64), np.asarray(union, np.float64),
                               np.asarray(gt, np.float64), resamples=resamples, seed=seed)  # [B, 2]
    return {"mIoU": _interval(draws[:, 0], level), "pixel_acc": _interval(draws[:, 1], level)}


def counts_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's confusion matrix ``[K, K]`` (rows = ground truth) -> ``(inter, union, gt)``, ``[K]`` int64 each."""
    cm = np.asarray(cm, np.int64)
    inter, gt, pred = np.diag(cm).copy(), cm.sum(1), cm.sum(0)
    return inter, gt + pred - inter, gt


def choose(figures: Mapping[str, float], settings: Sequence[tuple[str, float | None, str, str]], *,
           guard: float = 0.02) -> dict:
    """The setting with the best mIoU among those whose pixel accuracy is within ``guard`` of the best one's.

    ``settings``: ``(method, threshold, mIoU figure name, pixel accuracy figure name)``. Returns ``{"method",
    "background", "mIoU", "pixel_acc", "best_pixel_acc", "guard", "eligible"}``. Pointing plays no part: a method
    that lights the whole background can point well and segment badly.
    """
    rows = [(m, t, figures[a], figures[b]) for m, t, a, b in settings
            if np.isfinite(figures.get(a, np.nan)) and np.isfinite(figures.get(b, np.nan))]
    if not rows:
        raise InputError("no setting has both mIoU and pixel accuracy")
    best_pix = max(r[3] for r in rows)
    eligible = [r for r in rows if r[3] >= best_pix - guard]
    m, t, miou, pix = max(eligible, key=lambda r: (r[2], r[3]))
    return {"method": m, "background": t, "mIoU": miou, "pixel_acc": pix, "best_pixel_acc": best_pix,
            "guard": guard, "eligible": len(eligible)}


__all__ = ["RESAMPLES", "LEVEL", "resample_counts", "mean_interval", "ratio_interval", "segmentation_stats",
           "segmentation_intervals", "counts_from_confusion", "choose"]
