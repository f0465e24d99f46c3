"""Tiled high-resolution extraction: a finer patch grid than the token budget allows in one pass.

The image is resized to ``scale`` times its budget grid per side, ``(gh', gw') = (scale * gh, scale * gw)``; windows of
exactly the budget grid ``(gh, gw)`` (the trained token count and the image's own aspect ratio) are cut from it with
``overlap`` patches in common, each is encoded on its own (position embeddings resized to the window), and the tokens
are stitched into ONE :class:`~dense.FeatureMap` on the ``(gh', gw')`` grid with ``resized_hw = (gh' * p, gw' * p)``:
``grid_to_pixel_xy`` / ``pixel_to_grid`` stay exact. ``scale=1`` is one window: the plain extraction, bit for bit.
Cost: ``windows`` encoder passes of the budget's size (``scale**2`` without overlap).

Sliding-window evaluation (:func:`predict_slide`) is the other use of windows: the segmentation protocol of
mmsegmentation and DINOv3 (``mode="slide"``). The image is resized so its short side is ``short_side_px``, square
windows of ``window_px`` are placed every ``stride_px`` pixels (the last one flush with the far edge; on an image
smaller than a window, as the chosen reference places them: :data:`SLIDE_RULES`), each window is
encoded and classified on its own, its logits are upsampled to the window's pixels and averaged where windows
overlap; the averaged logits are upsampled to the original image and the label is their argmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dense.errors import InputError
from dense.features import FeatureMap
from dense.preprocess import ImageInput, load_image, to_pixels


def window_starts(length: int, window: int, *, overlap: int | None = None, n: int | None = None) -> list[int]:
    """Start positions of windows of ``window`` cells (or pixels) covering ``[0, length)``, spread evenly: the first
    at 0, the last at ``length - window``. How many: ``n``, or as few as keep at least ``overlap`` cells in common
    between neighbours. One window when it spans the axis.

    The one rule for tiled extraction (:func:`extract_tiled`, ``overlap``) and sliding-window scores
    (:func:`dense.heatmap.image_scores`, ``n``).
    """
    if not 1 <= window <= length:
        raise InputError(f"window {window} must lie in [1, {length}] (the axis)")
    if (overlap is None) == (n is None):
        raise InputError("pass exactly one of overlap= and n=")
    if window == length:
        return [0]
    if n is None:
        if not 0 <= overlap < window:
            raise InputError(f"overlap must be in [0, {window}), got {overlap}")
        n = max(2, math.ceil((length - overlap) / (window - overlap)))  # windows needed with stride window - overlap
    elif n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if n == 1:
        return [0]
    return [round(k * (length - window) / (n - 1)) for k in range(n)]


def _owner(length: int, starts: list[int], window: int) -> np.ndarray:
    """For each cell of an axis, the window whose centre is nearest (``blend='centre'``): int ``[length]``."""
    centres = np.asarray(starts, np.float64) + (window - 1) / 2  # [n]
    pos = np.arange(length)[:, None]  # [length, 1]
    inside = (pos >= np.asarray(starts)) & (pos < np.asarray(starts) + window)  # [length, n]
    dist = np.where(inside, np.abs(pos - centres), np.inf)
    return dist.argmin(1)


def extract_tiled(encoder, image: ImageInput, *, scale: int = 2, overlap: int = 2, max_patches: int | None = None,
                  layers: tuple[int, ...] = (-1,), blend: str = "centre", batch_size: int = 1) -> FeatureMap:
    """One image -> a :class:`FeatureMap` on ``scale`` times the budget grid per side, from overlapping windows.

    Args:
        scale: grid refinement per side (1 = the plain extraction).
        overlap: patches shared by neighbouring windows (clipped to the window size - 1).
        max_patches: the per-window token budget (None: the encoder's default).
        blend: ``'centre'`` (default): each cell comes from the window whose centre is nearest, so no cell is taken
            from a window's border when another window sees it in the middle; ``'mean'``: overlapping tokens averaged.
        batch_size: windows per encoder call (1 keeps peak memory at one extraction's).

    The returned map has ``aligned=None`` (text-aligned tokens are not stitched) and its ``encoder_spec`` records the
    tiling (``{"scale", "overlap", "blend", "windows"}``) next to the per-window ``max_patches``.
    """
    if int(scale) != scale or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale}")
    if blend not in ("centre", "mean"):
        raise InputError(f"blend must be 'centre' or 'mean', got {blend!r}")
    if overlap < 0:
        raise InputError(f"overlap must be >= 0, got {overlap}")
    scale = int(scale)
    rgb, (gh, gw) = encoder.prepare(image, max_patches)
    p = encoder.patch_size
    Gh, Gw = scale * gh, scale * gw
    pixels = to_pixels(rgb, (Gh, Gw), encoder.pixels)  # [3, Gh*p, Gw*p]
    rows = window_starts(Gh, gh, overlap=min(overlap, gh - 1))
    cols = window_starts(Gw, gw, overlap=min(overlap, gw - 1))
    boxes = [(i0, j0) for i0 in rows for j0 in cols]
    crops = [pixels[:, i0 * p:(i0 + gh) * p, j0 * p:(j0 + gw) * p] for i0, j0 in boxes]  # each [3, gh*p, gw*p]
    tiles = []
    for k in range(0, len(crops), batch_size):
        tiles.extend(encoder.forward_pixels(torch.stack(crops[k:k + batch_size]), layers))  # each [gh, gw, D*L]
    D = tiles[0].shape[-1]
    if blend == "mean":
        total = torch.zeros(Gh, Gw, D)
        count = torch.zeros(Gh, Gw, 1)
        for (i0, j0), t in zip(boxes, tiles, strict=True):
            total[i0:i0 + gh, j0:j0 + gw] += t
            count[i0:i0 + gh, j0:j0 + gw] += 1
        tokens = total / count  # every cell is covered: the windows span the grid
    else:
        row_owner, col_owner = _owner(Gh, rows, gh), _owner(Gw, cols, gw)  # [Gh], [Gw]
        tokens = torch.empty(Gh, Gw, D)
        for a, i0 in enumerate(rows):
            for b, j0 in enumerate(cols):
                t = tiles[a * len(cols) + b]  # [gh, gw, D]
                ri = np.nonzero(row_owner == a)[0]
                ci = np.nonzero(col_owner == b)[0]
                if len(ri) and len(ci):  # owned cells are contiguous: nearest-centre regions along a sorted axis
                    r0, r1, c0, c1 = ri[0], ri[-1] + 1, ci[0], ci[-1] + 1
                    tokens[r0:r1, c0:c1] = t[r0 - i0:r1 - i0, c0 - j0:c1 - j0]
    spec = encoder.spec(max_patches=max_patches, layers=layers)
    if scale > 1:
        spec["tiling"] = {"scale": scale, "overlap": overlap, "blend": blend, "windows": len(boxes)}
    return FeatureMap(tokens=tokens, image_hw=tuple(int(v) for v in rgb.shape[:2]), resized_hw=(Gh * p, Gw * p),
                      patch_size=p, layers=tuple(encoder.block_index(i) for i in layers), encoder_spec=spec)


# ---------------------------------------------------------------------------------------------------------------------
# Sliding-window evaluation


def resize_short_side(image_hw: tuple[int, int], short_side: int) -> tuple[int, int]:
    """``(H, W)`` of an image resized so its short side is ``short_side``, the aspect ratio kept and the long side
    rounded half up (DINOv3's ``FixedSideResize``): ``(300, 400) -> (512, 683)``."""
    H, W = image_hw
    if H > W:
        return int(short_side * H / W + 0.5), short_side
    return short_side, int(short_side * W / H + 0.5)


def slide_starts(length: int, window: int, stride: int) -> list[int]:
    """Start positions of windows of ``window`` cells every ``stride`` cells along an axis of ``length`` cells, the
    last one moved back to end at ``length``, as mmsegmentation's and DINOv3's ``slide_inference`` place them
    (``length=683, window=512, stride=341 -> [0, 171]``). A window longer than the axis is cut to it: one window.
    """
    if window < 1 or not 1 <= stride <= window:
        raise InputError(f"window {window} and stride {stride}: need 1 <= stride <= window (no gaps)")
    return _starts(length, window, stride)


def _starts(length: int, window: int, stride: int) -> list[int]:
    """The placement of :func:`slide_starts`, unchecked: ``h_grids`` and ``y1 = max(min(k * stride + window, length)
    - window, 0)`` of both references' ``slide_inference``."""
    n = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(k * stride + window, length) - window, 0) for k in range(n)]


# Whose ``slide_inference`` places the windows. They differ in one case only: an image smaller than the window on
# BOTH sides. mmsegmentation (``EncoderDecoder.slide_inference``) keeps one window cut to the image; DINOv3
# (``dinov3/eval/segmentation/inference.py``: ``if h_crop > h_img and w_crop > w_img: h_crop, w_crop = min(h_img,
# w_img), min(h_img, w_img)``) shrinks the window to a square of the short side and slides it with the same stride
# (300 x 400, window 512, stride 341 -> two 300 x 300 windows, at x = 0 and 100).
SLIDE_RULES = ("mmseg", "dinov3")


def slide_windows(image_hw: tuple[int, int], window: int, stride: int, *, rule: str = "mmseg"
                  ) -> list[tuple[int, int, int, int]]:
    """The windows ``(y0, x0, y1, x1)`` that ``rule``'s ``slide_inference`` (:data:`SLIDE_RULES`) places on an image
    of ``image_hw``, rows first: :func:`slide_starts` on each axis, each window cut to the image."""
    if rule not in SLIDE_RULES:
        raise InputError(f"unknown sliding-window rule {rule!r}; choose one of {', '.join(SLIDE_RULES)}")
    H, W = image_hw
    slide_starts(max(H, W), window, stride)  # the option check: 1 <= stride <= window
    if rule == "dinov3" and window > H and window > W:
        window = min(H, W)  # the crop becomes a square of the short side; the stride is kept
    rows, cols = _starts(H, window, stride), _starts(W, window, stride)
    for length, starts in ((H, rows), (W, cols)):
        if any(b - a > window for a, b in zip(starts, starts[1:], strict=False)):  # DINOv3 asserts: a pixel uncovered
            raise InputError(f"{rule} windows on a {H} x {W} image: the window shrinks to the short side "
                             f"({window} px), under the stride ({stride} px): pixels of the {length}-px axis would "
                             "be in no window")
    return [(y0, x0, min(y0 + window, H), min(x0 + window, W)) for y0 in rows for x0 in cols]


def slide_logits(image_hw: tuple[int, int], window: int, stride: int,
                 logits_of: Callable[[int, int, int, int], torch.Tensor], *, rule: str = "mmseg") -> torch.Tensor:
    """Logits averaged over sliding windows: float32 ``[K, H, W]``.

    ``logits_of(y0, x0, y1, x1)`` returns the logits ``[K, y1 - y0, x1 - x0]`` of the window covering rows
    ``[y0, y1)`` and columns ``[x0, x1)``; windows are placed by :func:`slide_windows` under ``rule``, and each pixel
    gets the mean over the windows that cover it.
    """
    H, W = image_hw
    total, count = None, torch.zeros(1, H, W)
    for y0, x0, y1, x1 in slide_windows((H, W), window, stride, rule=rule):
        lg = logits_of(y0, x0, y1, x1).float()  # [K, y1 - y0, x1 - x0]
        if lg.shape[1:] != (y1 - y0, x1 - x0):
            raise InputError(f"logits_of gave {tuple(lg.shape)} for a {y1 - y0} x {x1 - x0} window")
        if total is None:
            total = torch.zeros(lg.shape[0], H, W)
        total[:, y0:y1, x0:x1] += lg
        count[:, y0:y1, x0:x1] += 1
    return total / count  # every pixel is covered: the last window of each axis ends at its edge


@torch.inference_mode()
def predict_slide(encoder, head, image: ImageInput, *, window_px: int, stride_px: int,
                  short_side_px: int | None = None, max_patches: int | None = None,
                  size_hw: tuple[int, int] | None = None, rule: str = "mmseg") -> np.ndarray:
    """A label map (int32 ``[H, W]``, the original size or ``size_hw``) for a whole image from sliding windows.

    Args:
        head: a trained probe (:class:`probes.LinearProbe`): ``layers``, ``pooled`` and ``grid_logits(fmap)``
            (logits ``[K, gh, gw]``).
        window_px: the side of the square windows, in pixels of the resized image (DINOv3: 512).
        stride_px: pixels between window starts (DINOv3: 341); at most ``window_px``.
        short_side_px: the image is first resized (bilinear) so its short side is this (default ``window_px``:
            windows then span the short side and slide along the long one).
        max_patches: each window's token budget (default ``(window_px // patch_size) ** 2``: a 512 px window at
            patch 14 is 36 x 36 = 1,296 tokens; a window is encoded at its own aspect ratio, square ones exactly).
        rule: whose ``slide_inference`` places the windows (:data:`SLIDE_RULES`): ``"mmseg"`` (default) or
            ``"dinov3"``; they differ only when the resized image is smaller than the window on both sides
            (``short_side_px < window_px``): DINOv3 then slides a square window of the short side.

    Each window's logits are upsampled bilinearly to its pixels and averaged where windows overlap
    (:func:`slide_logits`); the averaged logits are upsampled bilinearly to the output size and argmax'd.
    """
    p = encoder.patch_size
    if window_px < p:
        raise InputError(f"window_px={window_px} is smaller than one patch ({p} px)")
    if not 1 <= stride_px <= window_px:
        raise InputError(f"stride_px={stride_px} must be in [1, window_px={window_px}] (windows leave no gaps)")
    if rule not in SLIDE_RULES:
        raise InputError(f"unknown sliding-window rule {rule!r}; choose one of {', '.join(SLIDE_RULES)}")
    short = int(short_side_px or window_px)
    if short < 1:
        raise InputError(f"short_side_px={short_side_px} must be positive")
    budget = int(max_patches or (window_px // p) ** 2)
    rgb = load_image(image)
    H, W = rgb.shape[:2]
    h2, w2 = resize_short_side((H, W), short)
    if (h2, w2) != (H, W):
        rgb = np.asarray(Image.fromarray(rgb).resize((w2, h2), resample=Image.Resampling.BILINEAR))
    layers = tuple(head.layers)
    pooled = bool(getattr(head, "pooled", False))
    if pooled and encoder.num_layers - 1 not in layers:
        layers = (*layers, encoder.num_layers - 1)  # the pooled embedding is the MAP head over the last block
    from dense.head import with_pooled

    def logits_of(y0: int, x0: int, y1: int, x1: int) -> torch.Tensor:
        fmap = encoder.extract(rgb[y0:y1, x0:x1], max_patches=budget, layers=layers)
        if pooled:
            fmap = with_pooled(encoder, fmap)
        grid = head.grid_logits(fmap)[None]  # [1, K, gh, gw]
        return F.interpolate(grid, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]

    logits = slide_logits((h2, w2), window_px, stride_px, logits_of, rule=rule)  # [K, h2, w2]
    out_hw = tuple(size_hw or (H, W))
    if tuple(logits.shape[1:]) != out_hw:
        logits = F.interpolate(logits[None], size=out_hw, mode="bilinear", align_corners=False)[0]
    return logits.argmax(0).to(torch.int32).numpy()
