"""Linear-probe segmentation scored at the original image resolution: one confusion matrix per probe over a split,
plus boundary F-score and trimap mIoU (where label maps are blocky, mIoU alone hides it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from tqdm.auto import tqdm

from dense.eval import Result
from dense.metrics import BoundaryMeter, SegmentationMeter, segmentation_figures


def evaluate_probes(probes: Mapping[str, object], samples: Sequence, *, sharpen: str = "bilinear",
                    upsampler=None, image_of: Callable | None = None, boundary: bool = True,
                    progress: bool = False) -> dict[str, Result]:
    """One :class:`~dense.eval.Result` per probe key, in one pass over ``samples``.

    ``probes``: anything with ``class_names`` and ``predict(fmap, size_hw, sharpen=, image=, upsampler=) -> int32
    [H, W]`` (:class:`probes.LinearProbe`). ``samples``: objects with ``key``, ``fmap`` and ``label`` (``[H, W]``,
    ignored pixels = :data:`dense.labels.IGNORE`), e.g. :class:`probes.Sample`. Predictions are made at the label
    map's size, the original image resolution, upsampled as ``sharpen``/``upsampler`` say
    (:func:`dense.upsample.upsample_maps`); ``image_of(sample)`` gives the image those need.

    Figures: ``mIoU``, ``pixel_acc``, ``mean_acc``, ``IoU/<class>`` and, with ``boundary``, ``bF`` (boundary F-score
    at 2 px), ``trimap_mIoU`` (within 4 px of a ground-truth boundary) and ``bF/<class>``; rows: one per image with its
    own pixel accuracy and mIoU over the classes it holds.
    """
    sharp = sharpen != "bilinear" or upsampler is not None
    if sharp and image_of is None:
        raise ValueError(f"sharpen={sharpen!r}{' with an upsampler' if upsampler else ''} needs image_of(sample)")
    meters = {k: SegmentationMeter(p.class_names) for k, p in probes.items()}
    edges = {k: BoundaryMeter(p.class_names) for k, p in probes.items()} if boundary else {}
    rows: dict[str, list[dict]] = {k: [] for k in probes}
    for s in tqdm(samples, desc="evaluate", unit="img", disable=not progress):
        image = image_of(s) if sharp else None
        fmap, label = s.fmap, s.label  # read once (a streamed sample reads them from disk), scored by every probe
        for k, p in probes.items():
            pred = p.predict(fmap, label.shape, sharpen=sharpen, image=image, upsampler=upsampler)  # [H, W]
            figs = segmentation_figures(meters[k].update(pred, label))  # this image's own figures
            if boundary:
                edges[k].update(pred, label)
            rows[k].append({"key": s.key, "pixel_acc": figs["pixel_acc"], "mIoU": figs["mIoU"]})
    out = {}
    for k, m in meters.items():
        figures = m.figures()
        if boundary:
            figures.update(edges[k].figures())
        out[k] = Result(figures=figures, rows=rows[k], meta={"images": len(samples), "sharpen": sharpen,
                                                              "upsampler": upsampler is not None})
    return out


def evaluate_probe(probe, samples: Sequence, **kwargs) -> Result:
    """One probe on ``samples`` (see :func:`evaluate_probes` for the options)."""
    return evaluate_probes({"probe": probe}, samples, **kwargs)["probe"]
