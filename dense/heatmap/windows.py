"""Image-resolution scores: patch scores upsampled, with sliding windows (SCLIP/ClearCLIP's inference) and PAMR."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dense.errors import InputError
from dense.features import FeatureMap, check_featuremap_identity
from dense.heatmap.inputs import ImageOrFeatureMap
from dense.heatmap.scores import patch_scores, text_matrix, to_image, with_aligned
from dense.preprocess import load_image


def sliding_window_scores(rgb: np.ndarray, windows: int, crop_scores: Callable[[np.ndarray], torch.Tensor]
                          ) -> torch.Tensor:
    """Scores ``[T, H, W]`` of an image uint8 ``[H, W, 3]`` from an ``windows x windows`` layout of overlapping crops.

    Each crop is ``2 / (windows + 1)`` of the image's height and width (neighbours overlap by half a crop; starts from
    :func:`dense.tiling.window_starts`); ``crop_scores(crop)`` gives its scores ``[T, h, w]`` at the crop's pixels,
    and each pixel gets the mean over the crops that hold it (SCLIP/ClearCLIP's sliding-window inference).
    """
    from dense.tiling import window_starts

    H, W = rgb.shape[:2]
    ch, cw = min(H, -(-2 * H // (windows + 1))), min(W, -(-2 * W // (windows + 1)))
    total, count = None, torch.zeros(H, W)
    for y0 in window_starts(H, ch, n=windows):
        for x0 in window_starts(W, cw, n=windows):
            s = crop_scores(np.ascontiguousarray(rgb[y0:y0 + ch, x0:x0 + cw]))  # [T, ch, cw]
            if total is None:
                total = torch.zeros(s.shape[0], H, W)  # [T, H, W]
            total[:, y0:y0 + ch, x0:x0 + cw] += s
            count[y0:y0 + ch, x0:x0 + cw] += 1
    return total / count  # every pixel lies in at least one crop


def image_scores(encoder, image: ImageOrFeatureMap, queries, *, features: FeatureMap | None = None,
                 method: str | None = None, templates: Sequence[str] | None = None, max_patches: int | None = None,
                 windows: int = 1, refine: str | None = None) -> torch.Tensor:
    """Sigmoid scores ``[T, H, W]`` at the original image size: :func:`patch_scores` upsampled, with two options.

    ``windows=n`` (n >= 2): sliding windows for images with more detail than the token budget holds. The image is
    cut into an n x n layout of crops of ``2 / (n + 1)`` of its height and width (neighbours overlap by half a crop),
    each crop is extracted at ``max_patches`` and scored, and the upsampled scores are averaged where crops overlap
    (SCLIP/ClearCLIP's sliding-window inference). ``refine="pamr"``: :func:`dense.refine.pamr` with the image, at the
    encoder's input resolution (times ``windows``), then upsampled.

    ``image``: a path, PIL image or uint8 array (read with :func:`dense.preprocess.load_image`), or a FeatureMap when
    neither option needs the pixels. ``features``: the image's FeatureMap, already extracted (used as is when
    ``windows == 1``).
    """
    from dense.preprocess import choose_grid
    from dense.refine import REFINES, pamr

    refine = None if refine in (None, "none") else refine
    if refine is not None and refine not in REFINES:
        raise InputError(f"unknown refinement {refine!r}; choose one of {', '.join(REFINES)}")
    if windows < 1:
        raise InputError(f"windows must be >= 1, got {windows}")
    if isinstance(image, FeatureMap):
        if features is not None:
            raise InputError("image is a FeatureMap and features= is given too: pass the image itself as image")
        image, features = None, image
    if features is not None:  # even when windows re-extract from the pixels: never mix in another encoder's map
        check_featuremap_identity(encoder.spec(), features, "image_scores")
    if image is None and (windows > 1 or refine is not None):
        raise InputError("windows > 1 and refine need the image's pixels: pass the image as image= (and its "
                         "FeatureMap as features=)")
    rgb = None if image is None else load_image(image)
    if rgb is not None and features is not None and tuple(rgb.shape[:2]) != tuple(features.image_hw):
        raise InputError(f"image is {tuple(rgb.shape[:2])}, its FeatureMap (features=) was made from "
                         f"{tuple(features.image_hw)}")
    text = text_matrix(encoder, queries, templates)  # [T, E]
    budget = max_patches or encoder.pixels.max_patches
    if windows == 1:
        fmap = features if features is not None else with_aligned(encoder, rgb, method, max_patches=max_patches)
        scores = patch_scores(encoder, fmap, text, method=method)  # [T, gh, gw]
        if refine is None:
            return to_image(scores, fmap)  # [T, H, W]
        H, W = fmap.image_hw
        probs = to_image(scores, fmap, size_hw=fmap.resized_hw)  # [T, gh * p, gw * p]
    else:
        H, W = rgb.shape[:2]

        def crop_scores(crop: np.ndarray) -> torch.Tensor:
            f = with_aligned(encoder, crop, method, max_patches=max_patches)
            return to_image(patch_scores(encoder, f, text, method=method), f)  # [T, h, w]

        probs = sliding_window_scores(rgb, windows, crop_scores)  # [T, H, W]
        if refine is None:
            return probs
        gh, gw = choose_grid((H, W), encoder.patch_size, budget)
        work_hw = (min(H, gh * encoder.patch_size * windows), min(W, gw * encoder.patch_size * windows))
        probs = F.interpolate(probs[None], size=work_hw, mode="bilinear", align_corners=False, antialias=True)[0]
    probs = pamr(rgb, probs)  # [T, h, w]
    return F.interpolate(probs[None], size=(H, W), mode="bilinear", align_corners=False)[0]  # [T, H, W]
