"""Metrics: segmentation from a confusion matrix, boxes, Acc@IoU, pointing game.

Segmentation figures follow the usual protocol (mmsegmentation, DINOv2's linear probe): one confusion matrix summed over
the whole split (not a mean of per-image scores), pixels labelled :data:`IGNORE` skipped; per-class
``IoU = TP / (TP + FP + FN)``; ``mIoU`` is the mean over classes whose union is non-empty (a class absent from both the
ground truth and the predictions is left out, not counted as 0 or 1).

Evaluators return named figures, as big_vision's ``run()`` yields ``(name, value)``: a flat ``dict[str, float]``
such as ``{"mIoU": 0.61, "pixel_acc": 0.93, "mean_acc": 0.70, "IoU/red circle": 0.55, ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dense.errors import InputError
from dense.labels import IGNORE, as_numpy

# ---------------------------------------------------------------------------------------------------------------------
# Segmentation


def confusion_matrix(pred, gt, num_classes: int, *, ignore_index: int = IGNORE) -> np.ndarray:
    """int64 ``[K, K]`` counts, rows = ground truth, columns = prediction (scikit-learn's convention).

    ``pred`` and ``gt`` are integer label maps of the same shape; pixels where ``gt == ignore_index`` are skipped.
    A ground-truth or predicted value outside ``[0, K)`` (other than the ignore index in ``gt``) raises ``ValueError``.
    """
    pred, gt = as_numpy(pred).astype(np.int64).ravel(), as_numpy(gt).astype(np.int64).ravel()
    if pred.shape != gt.shape:
        raise InputError(f"prediction has {pred.size} pixels, ground truth {gt.size}")
    keep = gt != ignore_index
    pred, gt = pred[keep], gt[keep]
    for name, v in (("ground truth", gt), ("prediction", pred)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            bad = np.unique(v[(v < 0) | (v >= num_classes)])[:8].tolist()
            hint = (" (255 = ignore is v0.1's uint8 convention; ignored pixels are now dense.labels.IGNORE = -1)"
                    if 255 in bad and ignore_index != 255 else "")
            raise InputError(f"{name} labels {bad} are outside [0, {num_classes}) (ignore index {ignore_index}){hint}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_figures(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Named figures from a confusion matrix: ``mIoU``, ``pixel_acc``, ``mean_acc`` and ``IoU/<class>`` for each class
    whose union is non-empty (NaN classes are left out of the dict and of the mean)."""
    cm = np.asarray(cm, dtype=np.float64)
    K = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(k) for k in range(K)]
    if len(names) != K:
        raise InputError(f"{len(names)} class names for a {K} x {K} confusion matrix")
    tp = np.diag(cm)
    gt_count, pred_count = cm.sum(1), cm.sum(0)
    union = gt_count + pred_count - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_count > 0, tp / gt_count, np.nan)
    total = cm.sum()
    out = {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "mean_acc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
    }
    out.update({f"IoU/{n}": float(v) for n, v in zip(names, iou, strict=True) if np.isfinite(v)})
    return out


class SegmentationMeter:
    """Accumulates one confusion matrix over many images; ``figures()`` gives the named figures.

    >>> meter = SegmentationMeter(class_names)
    >>> for pred, gt in pairs: meter.update(pred, gt)   # label maps [H, W], gt may hold IGNORE
    >>> meter.figures()["mIoU"]
    """

    def __init__(self, class_names: Sequence[str], *, ignore_index: int = IGNORE):
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.cm = np.zeros((len(self.class_names),) * 2, np.int64)

    def update(self, pred, gt) -> np.ndarray:
        """Add one image; returns its own confusion matrix ``[K, K]``."""
        cm = confusion_matrix(pred, gt, len(self.class_names), ignore_index=self.ignore_index)
        self.cm += cm
        return cm

    def figures(self) -> dict[str, float]:
        return segmentation_figures(self.cm, self.class_names)


# ---------------------------------------------------------------------------------------------------------------------
# Boxes and points


def box_iou_xyxy(a, b) -> np.ndarray:
    """Pairwise IoU of boxes ``a [N, 4]`` and ``b [M, 4]`` in ``[x0, y0, x1, y1]`` -> float64 ``[N, M]``.

    Continuous coordinates (a box from x0 to x1 is ``x1 - x0`` wide, as COCO's ``bbox``); degenerate boxes have area 0
    and IoU 0 with everything.
    """
    a = as_numpy(a).astype(np.float64).reshape(-1, 4)
    b = as_numpy(b).astype(np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)  # [N]
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # [M]
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def acc_at_iou(pred_xyxy, gt_xyxy, thr: float = 0.5) -> float:
    """Fraction of predictions whose IoU with their own ground truth is ``>= thr`` (RefCOCO's Acc@0.5).

    ``pred_xyxy`` and ``gt_xyxy`` are ``[N, 4]``, row k of one paired with row k of the other.
    """
    p = as_numpy(pred_xyxy).astype(np.float64).reshape(-1, 4)
    g = as_numpy(gt_xyxy).astype(np.float64).reshape(-1, 4)
    if len(p) != len(g):
        raise InputError(f"{len(p)} predicted boxes for {len(g)} ground-truth boxes")
    if not len(p):
        return float("nan")
    ious = np.array([box_iou_xyxy(p[k], g[k])[0, 0] for k in range(len(p))])
    return float((ious >= thr).mean())


def pointing_hits(points_xy, masks, *, tolerance_px: int = 0) -> np.ndarray:
    """bool ``[N]``: does point k fall inside mask k?

    Point ``(x, y)`` (original-image pixels, continuous) lies in pixel ``(row floor(y), column floor(x))``: pixel
    (r, c) covers ``[c, c+1) x [r, r+1)``, so ``x == W`` is already outside. A point outside the image, or NaN, is a
    miss. ``tolerance_px > 0`` also counts a mask pixel within that Chebyshev distance of the point's pixel as a hit.
    """
    pts = as_numpy(points_xy).astype(np.float64).reshape(-1, 2)
    if len(pts) != len(masks):
        raise InputError(f"{len(pts)} points for {len(masks)} masks")
    hits = np.zeros(len(pts), bool)
    t = int(tolerance_px)
    for k, ((x, y), m) in enumerate(zip(pts, masks, strict=True)):
        m = as_numpy(m).astype(bool)
        H, W = m.shape
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < W and 0 <= y < H):
            continue
        r, c = int(np.floor(y)), int(np.floor(x))
        hits[k] = m[max(r - t, 0):r + t + 1, max(c - t, 0):c + t + 1].any()
    return hits


def pointing_game(points_xy, masks, *, tolerance_px: int = 0) -> float:
    """Fraction of points inside their ground-truth mask (see :func:`pointing_hits` for the pixel rule)."""
    hits = pointing_hits(points_xy, masks, tolerance_px=tolerance_px)
    return float(hits.mean()) if len(hits) else float("nan")


# ---------------------------------------------------------------------------------------------------------------------
# Boundaries


def mask_boundary(mask) -> np.ndarray:
    """bool ``[H, W]``: the pixels of ``mask`` with a 4-neighbour outside it (the image edge does not count)."""
    m = as_numpy(mask).astype(bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def _distance_to(boundary: np.ndarray) -> np.ndarray:
    """float32 ``[H, W]``: Euclidean distance of each pixel to the nearest ``True`` pixel (inf if there is none)."""
    import cv2

    if not boundary.any():
        return np.full(boundary.shape, np.inf, np.float32)
    return cv2.distanceTransform((~boundary).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def boundary_counts(pred, gt, num_classes: int, *, tolerance_px: float = 2.0, ignore_index: int = IGNORE
                    ) -> np.ndarray:
    """int64 ``[K, 4]`` per class: (predicted boundary pixels within ``tolerance_px`` of a ground-truth boundary,
    predicted boundary pixels, ground-truth boundary pixels within ``tolerance_px`` of a predicted boundary,
    ground-truth boundary pixels). Boundaries are those of each class's mask (:func:`mask_boundary`); pixels whose
    ground truth is ``ignore_index`` are left out of both. Sum over images, then :func:`boundary_figures`.
    """
    pred, gt = as_numpy(pred), as_numpy(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise InputError(f"prediction {pred.shape} and ground truth {gt.shape} must be label maps of one shape")
    keep = gt != ignore_index
    out = np.zeros((num_classes, 4), np.int64)
    for k in range(num_classes):
        bp = mask_boundary(pred == k) & keep
        bg = mask_boundary(gt == k) & keep
        if not (bp.any() or bg.any()):
            continue
        out[k] = ((_distance_to(bg)[bp] <= tolerance_px).sum(), bp.sum(),
                  (_distance_to(bp)[bg] <= tolerance_px).sum(), bg.sum())
    return out


def boundary_figures(counts: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """``bF`` (mean over classes of the boundary F-score ``2PR / (P + R)``, as DAVIS's F and the boundary F1 of
    Csurka et al. 2013), ``bP``, ``bR`` and ``bF/<class>``. A class with no boundary pixels in either map is left out;
    one with boundary pixels in only one of them scores 0."""
    c = np.asarray(counts, np.float64)
    K = c.shape[0]
    names = list(class_names) if class_names is not None else [str(k) for k in range(K)]
    present = (c[:, 1] + c[:, 3]) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        P = np.where(c[:, 1] > 0, c[:, 0] / c[:, 1], 0.0)
        R = np.where(c[:, 3] > 0, c[:, 2] / c[:, 3], 0.0)
        Fk = np.where(P + R > 0, 2 * P * R / (P + R), 0.0)
    if not present.any():
        return {"bF": float("nan"), "bP": float("nan"), "bR": float("nan")}
    out = {"bF": float(Fk[present].mean()), "bP": float(P[present].mean()), "bR": float(R[present].mean())}
    out.update({f"bF/{n}": float(f) for n, f, ok in zip(names, Fk, present, strict=True) if ok})
    return out


def trimap_mask(gt, width_px: float, *, ignore_index: int = IGNORE) -> np.ndarray:
    """bool ``[H, W]``: pixels within ``width_px`` of a boundary between two ground-truth labels (the "trimap" band of
    Kohli et al. 2009 / DeepLab), ignored pixels excluded."""
    gt = as_numpy(gt)
    edge = np.zeros(gt.shape, bool)
    diff_v = gt[1:] != gt[:-1]  # [H-1, W] label changes between vertical neighbours
    diff_h = gt[:, 1:] != gt[:, :-1]  # [H, W-1]
    edge[1:] |= diff_v
    edge[:-1] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    return (_distance_to(edge) <= width_px) & (gt != ignore_index)


class BoundaryMeter:
    """Boundary F-score and trimap mIoU over many images, beside :class:`SegmentationMeter`.

    >>> meter = BoundaryMeter(class_names, tolerance_px=2, trimap_px=4)
    >>> for pred, gt in pairs: meter.update(pred, gt)
    >>> meter.figures()   # {"bF": ..., "bP": ..., "bR": ..., "trimap_mIoU": ..., "bF/<class>": ...}
    """

    def __init__(self, class_names: Sequence[str], *, tolerance_px: float = 2.0, trimap_px: float = 4.0,
                 ignore_index: int = IGNORE):
        self.class_names = list(class_names)
        self.tolerance_px, self.trimap_px, self.ignore_index = tolerance_px, trimap_px, ignore_index
        K = len(self.class_names)
        self.counts = np.zeros((K, 4), np.int64)
        self.cm = np.zeros((K, K), np.int64)

    def update(self, pred, gt) -> None:
        pred, gt = as_numpy(pred), as_numpy(gt)
        K = len(self.class_names)
        self.counts += boundary_counts(pred, gt, K, tolerance_px=self.tolerance_px, ignore_index=self.ignore_index)
        band = trimap_mask(gt, self.trimap_px, ignore_index=self.ignore_index)
        self.cm += confusion_matrix(pred[band], gt[band], K, ignore_index=self.ignore_index)

    def figures(self) -> dict[str, float]:
        out = boundary_figures(self.counts, self.class_names)
        out["trimap_mIoU"] = segmentation_figures(self.cm, self.class_names)["mIoU"]
        return out
