"""Sharper maps than the patch grid: patch-grid maps ``[C, gh, gw]`` (probe logits or probabilities, heatmaps,
tokens) to the image's pixels ``[C, H, W]``, with the image itself as guide.

- :mod:`dense.upsample.guided`: :func:`guided_upsample`, bilinear to ``(H, W)`` (the geometry of
  ``FeatureMap.to_image``), then a colour guided filter, then renormalised; training-free.
- :mod:`dense.upsample.learned`: :class:`Upsampler`, a small learned joint upsampler (:func:`train_upsampler`).
- :func:`upsample_maps` here: the one entry point, sharpened as the caller chose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dense.checkpoint import Calibration
from dense.errors import InputError
from dense.features import FeatureMap
from dense.preprocess import load_image
from dense.upsample.guided import box_filter, guided_filter, guided_upsample
from dense.upsample.learned import Upsampler, UpsamplerConfig, train_upsampler

__all__ = ["GUIDED_EPS", "SHARPEN_MODES", "Upsampler", "UpsamplerConfig", "box_filter",
           "guided_filter", "guided_upsample", "train_upsampler", "upsample_maps"]

# ---------------------------------------------------------------------------------------------------------------------
# The one entry point: patch-grid maps -> pixels, sharpened as the caller chose

SHARPEN_MODES = ("bilinear", "guided")  # with or without a trained Upsampler underneath
GUIDED_EPS = 1e-4  # regularizer on the [0, 1] colour scale: small, so the filter follows colour edges


def upsample_maps(maps: torch.Tensor, fmap: FeatureMap, *, sharpen: str = "bilinear", image=None,
                  upsampler: Upsampler | None = None, probabilities: bool = False,
                  size_hw: tuple[int, int] | None = None, calibration: Calibration | None = None) -> torch.Tensor:
    """Patch-grid maps ``[C, gh, gw]`` (probe logits/probabilities, heatmaps) -> ``[C, H, W]`` at the image size.

    ``sharpen``: ``"bilinear"`` (the geometry of ``FeatureMap.to_image``) or ``"guided"`` (then a colour guided filter
    with the image as guide, :func:`guided_upsample`, of ``calibration.guided_radius_cells`` patch cells, computed at
    ``1 / calibration.guided_subsample`` resolution; ``calibration`` None: the neutral defaults of
    :class:`dense.checkpoint.Calibration`, else usually ``encoder.calibration``). ``upsampler``: a trained
    :class:`Upsampler` of the same encoder replaces the bilinear step. ``image`` (path, PIL or uint8 ``[H, W, 3]`` at
    the original size) is needed by both. ``probabilities``: the maps sum to one over ``C`` (renormalised after
    filtering).
    """
    if sharpen not in SHARPEN_MODES:
        raise InputError(f"sharpen must be one of {SHARPEN_MODES}, got {sharpen!r}")
    size_hw = tuple(size_hw or fmap.image_hw)
    if sharpen == "bilinear" and upsampler is None:
        return F.interpolate(maps[None].float(), size=size_hw, mode="bilinear", align_corners=False)[0]
    if image is None:
        raise InputError(f"sharpen={sharpen!r}{' with an upsampler' if upsampler else ''} needs the image")
    rgb = load_image(image)
    if tuple(rgb.shape[:2]) != tuple(fmap.image_hw):
        raise InputError(f"image is {rgb.shape[:2]}, the FeatureMap was made from {fmap.image_hw}")
    if upsampler is not None:
        maps = upsampler.to_image(fmap, rgb, maps.float(), size_hw=size_hw)  # [C, H, W]
    if sharpen == "bilinear":
        return maps
    if size_hw != tuple(fmap.image_hw):
        raise InputError("guided upsampling works at the image's own size")
    cal = calibration or Calibration()
    cell_px = math.sqrt((fmap.image_hw[0] / fmap.grid_hw[0]) * (fmap.image_hw[1] / fmap.grid_hw[1]))
    radius = max(1, round(cal.guided_radius_cells * cell_px))
    return guided_upsample(maps, rgb, radius=radius, eps=GUIDED_EPS, renormalize=probabilities,
                           subsample=int(cal.guided_subsample))
