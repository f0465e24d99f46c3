"""Tiled high-resolution extraction: a finer patch grid than the token budget allows in one pass.

The image is resized to ``scale`` times its budget grid per side, ``(gh', gw') = (scale * gh, scale * gw)``; windows of
exactly the budget grid ``(gh, gw)`` (the trained token count and the image's own aspect ratio) are cut from it with
``overlap`` patches in common, each is encoded on its own (position embeddings resized to the window), and the tokens
are stitched into ONE :class:`~dense.FeatureMap` on the ``(gh', gw')`` grid with ``resized_hw = (gh' * p, gw' * p)``:
``grid_to_pixel_xy`` / ``pixel_to_grid`` stay exact. ``scale=1`` is one window: the plain extraction, bit for bit.
Cost: ``windows`` encoder passes of the budget's size (``scale**2`` without overlap).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dense.features import FeatureMap
from dense.preprocess import ImageInput, to_pixels


def window_starts(length: int, window: int, *, overlap: int | None = None, n: int | None = None) -> list[int]:
    """Start positions of windows of ``window`` cells (or pixels) covering ``[0, length)``, spread evenly: the first
    at 0, the last at ``length - window``. How many: ``n``, or as few as keep at least ``overlap`` cells in common
    between neighbours. One window when it spans the axis.

    The one rule for tiled extraction (:func:`extract_tiled`, ``overlap``) and sliding-window scores
    (:func:`dense.heatmap.image_scores`, ``n``).
    """
    if not 1 <= window <= length:
        raise ValueError(f"window {window} must lie in [1, {length}] (the axis)")
    if (overlap is None) == (n is None):
        raise ValueError("pass exactly one of overlap= and n=")
    if window == length:
        return [0]
    if n is None:
        if not 0 <= overlap < window:
            raise ValueError(f"overlap must be in [0, {window}), got {overlap}")
        n = max(2, math.ceil((length - overlap) / (window - overlap)))  # windows needed with stride window - overlap
    elif n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
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
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if blend not in ("centre", "mean"):
        raise ValueError(f"blend must be 'centre' or 'mean', got {blend!r}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
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
