"""Refining score maps with the image: PAMR (pixel-adaptive mask refinement, Araslanov & Roth, CVPR 2020).

Each pixel's scores become an affinity-weighted mean of its neighbours' scores, ``num_iter`` times. The neighbours
are the 8 pixels of a 3x3 window at each dilation of ``dilations``; the affinity of pixel i to neighbour j is
``softmax_j(-|I_i - I_j| / (0.1 * std_i))`` averaged over colour channels, where ``std_i`` is the colour standard
deviation over all of i's neighbours. Neighbours of the same colour share scores; an edge in the image stops the
sharing. The affinity depends only on the image, so the scores of every class map are refined by the same weights
(a per-pixel convex combination: scores that sum to one over classes still do).

Used by :func:`dense.heatmap.image_scores` (``refine="pamr"``); segmentation methods that adopt it (e.g. TagCLIP,
SegCLIP variants, CLIP-DIY) report +1.3 to +3 mIoU on PASCAL/COCO.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dense.errors import InputError
from dense.preprocess import image_tensor

REFINES = ("none", "pamr")
PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)


def _neighbours(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """``[C, H, W]`` -> ``[C, K, H, W]``: the 8 neighbours of each pixel at each dilation (K = 8 * len(dilations)),
    replicate padding at the border."""
    out = []
    for d in dilations:
        xp = F.pad(x[None], (d, d, d, d), mode="replicate")[0]  # [C, H + 2d, W + 2d]
        H, W = x.shape[-2:]
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if di == 0 and dj == 0:
                    continue
                out.append(xp[:, d + di * d: d + di * d + H, d + dj * d: d + dj * d + W])  # [C, H, W]
    return torch.stack(out, dim=1)  # K x [C, H, W] -> [C, K, H, W]


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """Image ``[3, H, W]`` (float, any scale) -> neighbour weights ``[K, H, W]`` that sum to one over K."""
    nb = _neighbours(image, dilations)  # [3, K, H, W]
    std = nb.std(dim=1, keepdim=True)  # [3, 1, H, W]
    aff = -(nb - image[:, None]).abs() / (1e-8 + 0.1 * std)  # [3, K, H, W]
    return torch.softmax(aff.mean(dim=0), dim=0)  # mean over colour channels, softmax over neighbours: [K, H, W]


@torch.inference_mode()
def pamr(image, scores: torch.Tensor, *, num_iter: int = 10, dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """Refine score maps ``[T, h, w]`` with ``image``: ``[T, h, w]``.

    ``image``: a path, PIL image or uint8 ``[H, W, 3]`` array (read with :func:`dense.preprocess.load_image`), or a
    float tensor ``[3, H, W]`` (any scale). It is resized to the scores' size (bilinear, antialiased), so refining at a
    reduced working resolution is the caller's choice (:func:`dense.heatmap.image_scores` works at the encoder's input
    resolution).
    """
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"image: expected a float tensor [3, H, W], got {tuple(image.shape)}")
        img = image.float()
    else:
        img = image_tensor(image)  # [3, H, W] in [0, 255]
    scores = torch.as_tensor(scores)
    if scores.ndim != 3 or min(scores.shape) == 0:
        raise InputError(f"scores: expected [T, h, w], got {tuple(scores.shape)}")
    h, w = scores.shape[-2:]
    if tuple(img.shape[-2:]) != (h, w):
        img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    aff = pamr_affinity(img, dilations)  # [K, h, w]
    x = scores.float()
    for _ in range(num_iter):
        x = (_neighbours(x, dilations) * aff[None]).sum(dim=1)  # [T, K, h, w] -> [T, h, w]
    return x


__all__ = ["REFINES", "PAMR_DILATIONS", "pamr", "pamr_affinity"]
