"""Score probes at the original image resolution: one confusion matrix per probe over the split -> named figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tqdm.auto import tqdm

from dense.metrics import SegmentationMeter
from probes.linear import LinearProbe


def evaluate_many(probes: Mapping[str, LinearProbe], samples: Sequence, *, progress: bool = False
                  ) -> dict[str, dict[str, float]]:
    """Figures (``mIoU``, ``pixel_acc``, ``mean_acc``, ``IoU/<class>``) per probe key, in one pass over ``samples``
    (:class:`probes.train.Sample`: features + uint8 label map ``[H, W]``, 255 ignored).

    Predictions are made at the label map's size, i.e. the original image resolution: logits on the patch grid are
    upsampled bilinearly to ``(H, W)`` and then arg-maxed.
    """
    meters = {k: SegmentationMeter(p.class_names) for k, p in probes.items()}
    for s in tqdm(samples, desc="evaluate", unit="img", disable=not progress):
        for k, p in probes.items():
            meters[k].update(p.predict(s.fmap, s.label.shape).numpy(), s.label)
    return {k: m.figures() for k, m in meters.items()}


def evaluate(probe: LinearProbe, samples: Sequence, *, progress: bool = False) -> dict[str, float]:
    """Named figures of one probe on ``samples`` (see :func:`evaluate_many`)."""
    return evaluate_many({"probe": probe}, samples, progress=progress)["probe"]
