"""Scoring linear probes at the original image resolution: one confusion matrix per probe over a set of samples, in
one pass that reads each sample once for every probe.

It lives in ``probes`` (not in ``dense.eval``) because training chooses its head with it, and ``probes`` reads only
dense's core; :func:`dense.eval.probe.evaluate_probes` wraps it into :class:`dense.eval.Result` objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from dense._progress import tqdm
from dense.errors import InputError
from dense.metrics import BoundaryMeter, SegmentationMeter, segmentation_figures


def score_probes(probes: Mapping[str, object], samples: Sequence, *, sharpen: str = "bilinear", upsampler=None,
                 images: Mapping[str, object] | None = None, boundary: bool = True, progress: bool = False,
                 predict: Callable | None = None, calibration=None) -> dict[str, tuple[dict[str, float], list[dict]]]:
    """``{probe key: (figures, rows)}`` in one pass over ``samples``.

    ``probes``: anything with ``class_names`` and ``predict(fmap, size_hw, sharpen=, image=, upsampler=,
    calibration=) -> int32 [H, W]`` (:class:`probes.LinearProbe`). ``samples``: objects with ``key``, ``fmap`` and
    ``label`` (``[H, W]``, ignored pixels = ``dense.labels.IGNORE``). Predictions are made at the label map's size,
    the original image resolution, upsampled as ``sharpen``/``upsampler`` say (the guided filter following
    ``calibration``, the encoder's); those two need ``images``: each sample's image (a path or a uint8 array) under
    its key.

    Figures: ``mIoU``, ``pixel_acc``, ``mean_acc``, ``IoU/<class>`` and, with ``boundary``, ``bF`` (boundary F-score
    at 2 px), ``trimap_mIoU`` (within 4 px of a ground-truth boundary) and ``bF/<class>``; rows: one per image with its
    own pixel accuracy and mIoU over the classes it holds.

    ``predict(probe, sample, size_hw) -> int32 [H, W]`` replaces the prediction from the sample's cached FeatureMap
    (e.g. sliding windows, :func:`dense.tiling.predict_slide`); samples then need only ``key`` and ``label``.
    """
    sharp = predict is None and (sharpen != "bilinear" or upsampler is not None)
    if sharp and images is None:
        raise InputError(f"sharpen={sharpen!r}{' with an upsampler' if upsampler else ''} needs each sample's image "
                         "(images={key: image})")
    if sharp:
        missing = [s.key for s in samples if s.key not in images]
        if missing:
            raise InputError(f"no image for samples {missing[:5]} in images= ({len(missing)} missing)")
    meters = {k: SegmentationMeter(p.class_names) for k, p in probes.items()}
    edges = {k: BoundaryMeter(p.class_names) for k, p in probes.items()} if boundary else {}
    rows: dict[str, list[dict]] = {k: [] for k in probes}
    for s in tqdm(samples, desc="evaluate", unit="img", disable=not progress):
        image = images[s.key] if sharp else None
        label = s.label  # read once (a streamed sample reads it from disk), scored by every probe
        fmap = s.fmap if predict is None else None
        for k, p in probes.items():
            if predict is None:
                pred = p.predict(fmap, label.shape, sharpen=sharpen, image=image, upsampler=upsampler,
                                  calibration=calibration)  # [H, W]
            else:
                pred = predict(p, s, label.shape)  # [H, W]
            figs = segmentation_figures(meters[k].update(pred, label))  # this image's own figures
            if boundary:
                edges[k].update(pred, label)
            rows[k].append({"key": s.key, "pixel_acc": figs["pixel_acc"], "mIoU": figs["mIoU"]})
    out = {}
    for k, m in meters.items():
        figures = m.figures()
        if boundary:
            figures.update(edges[k].figures())
        out[k] = (figures, rows[k])
    return out


__all__ = ["score_probes"]
