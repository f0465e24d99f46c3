"""Linear-probe segmentation scored at the original image resolution: one confusion matrix per probe over a split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tqdm.auto import tqdm

from dense.eval import Result
from dense.metrics import SegmentationMeter, segmentation_figures


def evaluate_probes(probes: Mapping[str, object], samples: Sequence, *, progress: bool = False) -> dict[str, Result]:
    """One :class:`~dense.eval.Result` per probe key, in one pass over ``samples``.

    ``probes``: anything with ``class_names`` and ``predict(fmap, size_hw) -> int32 [H, W]``
    (:class:`probes.LinearProbe`). ``samples``: objects with ``key``, ``fmap`` and ``label`` (``[H, W]``, ignored
    pixels = :data:`dense.metrics.IGNORE`), e.g. :class:`probes.Sample`. Predictions are made at the label map's size,
    the original image resolution. Figures: ``mIoU``, ``pixel_acc``, ``mean_acc``, ``IoU/<class>``; rows: one per
    image with its own pixel accuracy and mIoU over the classes it holds.
    """
    meters = {k: SegmentationMeter(p.class_names) for k, p in probes.items()}
    rows: dict[str, list[dict]] = {k: [] for k in probes}
    for s in tqdm(samples, desc="evaluate", unit="img", disable=not progress):
        for k, p in probes.items():
            pred = p.predict(s.fmap, s.label.shape)  # int32 [H, W]
            figs = segmentation_figures(meters[k].update(pred, s.label))  # this image's own figures
            rows[k].append({"key": s.key, "pixel_acc": figs["pixel_acc"], "mIoU": figs["mIoU"]})
    return {k: Result(figures=m.figures(), rows=rows[k], meta={"images": len(samples)}) for k, m in meters.items()}


def evaluate_probe(probe, samples: Sequence, *, progress: bool = False) -> Result:
    """One probe on ``samples`` (see :func:`evaluate_probes`)."""
    return evaluate_probes({"probe": probe}, samples, progress=progress)["probe"]
