"""dense.metrics against scikit-learn and hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from dense.metrics import (
    IGNORE,
    SegmentationMeter,
    acc_at_iou,
    box_iou_xyxy,
    confusion_matrix,
    pointing_game,
    pointing_hits,
    segmentation_figures,
)


def test_confusion_matrix_matches_sklearn_with_ignore():
    rng = np.random.default_rng(0)
    K = 5
    gt = rng.integers(0, K, size=(3, 40, 50))
    gt[rng.random(gt.shape) < 0.1] = IGNORE
    pred = np.where(rng.random(gt.shape) < 0.6, np.where(gt == IGNORE, 0, gt), rng.integers(0, K, gt.shape))
    meter = SegmentationMeter([f"c{k}" for k in range(K)])
    for p, g in zip(pred, gt, strict=True):
        meter.update(p, g)
    keep = gt.ravel() != IGNORE
    want = sk_confusion_matrix(gt.ravel()[keep], pred.ravel()[keep], labels=list(range(K)))
    np.testing.assert_array_equal(meter.cm, want)
    figs = meter.figures()
    ious = jaccard_score(gt.ravel()[keep], pred.ravel()[keep], labels=list(range(K)), average=None)
    assert figs["mIoU"] == pytest.approx(ious.mean())
    for k in range(K):
        assert figs[f"IoU/c{k}"] == pytest.approx(ious[k])
    assert figs["pixel_acc"] == pytest.approx((gt.ravel()[keep] == pred.ravel()[keep]).mean())


def test_absent_class_is_left_out_of_the_mean():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    figs = segmentation_figures(confusion_matrix(pred, gt, 3), ["bg", "a", "b"])
    assert "IoU/b" not in figs  # neither in gt nor predicted
    assert figs["IoU/bg"] == pytest.approx(1 / 2) and figs["IoU/a"] == pytest.approx(2 / 3)
    assert figs["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert figs["pixel_acc"] == pytest.approx(3 / 4)


def test_miou_matches_sklearn_on_random_maps_with_ignore_and_absent_classes():
    """mIoU as mmsegmentation computes it (one confusion matrix over the split, ignore index skipped, classes absent
    from both ground truth and prediction left out of the mean; a class only predicted counts with IoU 0) against
    scikit-learn's jaccard_score on the pooled pixels, to 1e-9."""
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(1)
    K = 12
    names = [f"c{k}" for k in range(K)]
    in_gt = np.array([0, 1, 2, 3, 4, 5, 6, 7])  # 8, 9: only predicted; 10, 11: in neither (left out)
    meter = SegmentationMeter(names)
    all_gt, all_pred, per_image = [], [], []
    for i, (H, W) in enumerate([(31, 47), (64, 20), (17, 90), (50, 50)]):  # images of different sizes
        gt = rng.choice(in_gt, size=(H, W))
        gt[rng.random((H, W)) < 0.15] = IGNORE
        pred = np.where(rng.random((H, W)) < 0.55, np.where(gt == IGNORE, 8, gt), rng.integers(0, 10, (H, W)))
        pred[gt == IGNORE] = rng.integers(0, K, int((gt == IGNORE).sum()))  # whatever is predicted there: ignored
        if i == 0:
            gt[gt == 7] = 6  # class 7 only in the later images: a dataset-level mean, not per image
        per_image.append(segmentation_figures(meter.update(pred, gt))["mIoU"])
        keep = gt != IGNORE
        all_gt.append(gt[keep])
        all_pred.append(pred[keep])
    gt, pred = np.concatenate(all_gt), np.concatenate(all_pred)
    assert 10 not in pred and 11 not in pred and 8 in pred and 9 in pred
    figs = meter.figures()
    present = np.union1d(gt, pred)  # the classes of the mean: in the ground truth or the prediction
    assert present.tolist() == list(range(10))
    want = jaccard_score(gt, pred, labels=present, average="macro")
    assert abs(figs["mIoU"] - want) <= 1e-9
    per_class = jaccard_score(gt, pred, labels=present, average=None)
    for k, iou in zip(present, per_class, strict=True):
        assert abs(figs[f"IoU/c{k}"] - iou) <= 1e-9
    assert "IoU/c10" not in figs and "IoU/c11" not in figs  # absent from both: not classes of the mean
    assert figs["IoU/c8"] == 0.0 and figs["IoU/c9"] == 0.0  # only predicted: IoU 0, counted (mmsegmentation)
    assert abs(figs["pixel_acc"] - (gt == pred).mean()) <= 1e-9
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        mean_acc = balanced_accuracy_score(gt, pred)  # recall averaged over the classes in the ground truth
    assert abs(figs["mean_acc"] - mean_acc) <= 1e-9
    assert abs(figs["mIoU"] - np.mean(per_image)) > 1e-3  # the mean of per-image mIoU is another figure


def test_out_of_range_labels_raise():
    with pytest.raises(ValueError, match=r"\[7\]"):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="pixels"):
        confusion_matrix(np.zeros(3), np.zeros(4), 3)


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    want = np.array([[1, 50 / 150, 0], [0, 0, 0]])
    np.testing.assert_allclose(box_iou_xyxy(a, b), want)
    assert box_iou_xyxy(a, b).shape == (2, 3)
    assert acc_at_iou(b[:2], [[0, 0, 10, 10], [0, 0, 10, 10]]) == 0.5  # IoU 1 and 1/3
    assert acc_at_iou([[0, 0, 10, 10]], [[0, 0, 10, 20]], thr=0.5) == 1.0  # IoU exactly 0.5 counts


def test_pointing_game_boundaries():
    m = np.zeros((4, 6), bool)
    m[1:3, 2:5] = True  # rows 1-2, columns 2-4: the region x in [2, 5), y in [1, 3)
    pts = [(2.0, 1.0), (4.99, 2.99), (5.0, 2.0), (1.99, 1.5), (-1, 2), (6.0, 0.0), (np.nan, 1)]
    hits = pointing_hits(pts, [m] * len(pts))
    assert hits.tolist() == [True, True, False, False, False, False, False]
    assert pointing_game(pts, [m] * len(pts)) == pytest.approx(2 / 7)
    assert pointing_hits([(5.0, 2.0)], [m], tolerance_px=1).tolist() == [True]
