"""Images in, pixels out: reading any image, choosing a patch grid at native aspect ratio, and the geometry.

The grid rule
-------------
For an image of H x W pixels, a patch size ``p`` and a token budget ``max_patches`` we use transformers'
``get_image_size_for_max_num_patches`` (the NaFlex rule): find the largest scale ``s`` such that

    gh = max(1, ceil(H * s / p)),  gw = max(1, ceil(W * s / p)),  gh * gw <= max_patches

and resize the image to exactly ``(gh * p, gw * p)`` pixels, so no pixel is dropped by the patch convolution. Sides are
rounded UP (ceil), as the NaFlex checkpoints were trained; the per-axis scales ``gh * p / H`` and ``gw * p / W`` then
differ by less than a factor ``min(gh, gw) / (min(gh, gw) - 1)`` (aspect error below one patch per side). The rule is
applied to the aspect ratio alone, so a 5 x 5 icon and a 5000 x 5000 photo both fill the budget (27 x 27 = 729 tokens
for So400m/14-384).

The geometry
------------
Patch ``(i, j)`` (row, column) covers resized pixels ``[j*p, (j+1)*p) x [i*p, (i+1)*p)``. Resized and original pixels
are related by the per-axis scales ``W / resized_w`` and ``H / resized_h``. :func:`grid_to_pixel_xy` and
:func:`pixel_to_grid` are the only functions that do this mapping; everything else calls them.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dense.errors import ImageError

ImageInput = str | os.PathLike | Image.Image | np.ndarray

# File suffixes taken as images when a folder is listed or an image id is looked up (lower case)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class PixelConfig:
    """How a checkpoint wants its pixels: read from its ``preprocessor_config.json`` when there is one."""

    patch_size: int
    max_patches: int  # default token budget: the checkpoint's trained count (729 for So400m/14-384)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: int = Image.Resampling.BILINEAR  # PIL filter id, as in the checkpoint's image processor


# ---------------------------------------------------------------------------------------------------------------------
# Reading images


def _describe(image: ImageInput) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, Image.Image):
        return f"PIL image ({image.mode}, {image.width}x{image.height})"
    if isinstance(image, np.ndarray):
        return f"array {image.dtype} {tuple(image.shape)}"
    return type(image).__name__


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 [H, W, 3]. Transparency is composited on white; 16/32-bit grey is scaled, not clipped."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs arrive as "I;16" or "I"; an "I" image whose values fit in 8 bits is left as is.
        top = 255.0 if (mode == "I" and grey.max(initial=0) <= 255) else 65535.0
        grey = np.clip(grey / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        top = 1.0 if grey.max(initial=0) <= 1.0 else 255.0
        grey = np.clip(grey / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(image: ImageInput) -> np.ndarray:
    """Read a path, PIL image or array into uint8 ``[H, W, 3]`` RGB, EXIF orientation applied.

    Raises :class:`ImageError` naming the input for a missing, empty, truncated or non-image file, a decompression bomb,
    or an array of the wrong shape or dtype.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageError(f"{_describe(image)}: expected a uint8 array [H, W, 3] or [H, W]")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ImageError(f"{_describe(image)}: expected a uint8 array [H, W, 3] or [H, W]")
        return np.ascontiguousarray(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(ImageOps.exif_transpose(image))
    if not isinstance(image, (str, os.PathLike)):
        raise ImageError(f"{_describe(image)}: expected a path, a PIL image or a uint8 array")
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read file ({e.strerror or e})") from e
    if not data:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 89M and 179M pixels; a huge header is an error here, whatever its size.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return _pil_to_rgb(ImageOps.exif_transpose(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not an image PIL can read") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: corrupt or truncated image ({e})") from e


def image_tensor(image: ImageInput, name: str = "image") -> torch.Tensor:
    """An image (path, PIL image, uint8 ``[H, W, 3]`` numpy or torch array) -> float32 ``[3, H, W]`` in [0, 255].

    Read with :func:`load_image`; a bad input raises :class:`ImageError` naming the argument ``name`` and the input.
    """
    try:
        rgb = load_image(image.numpy() if isinstance(image, torch.Tensor) else image)  # uint8 [H, W, 3]
    except ImageError as e:
        raise ImageError(f"{name}: {e}") from None
    return torch.tensor(rgb).permute(2, 0, 1).float()  # [H, W, 3] -> [3, H, W]; a copy (load_image may share)


# ---------------------------------------------------------------------------------------------------------------------
# Grid choice and pixels


def _naflex_size(image_height: float, image_width: float, patch_size: int, max_num_patches: int,
                 eps: float = 1e-5) -> tuple[int, int]:
    """transformers' ``get_image_size_for_max_num_patches`` (siglip2 image processor), step for step.

    Restated here because importing it pulls in transformers' whole image-processing stack (seconds per process);
    ``tests/test_preprocess.py`` checks that both give the same size over many shapes and budgets.
    """

    def scaled(scale: float, size: float) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    lo, hi = eps / 10, 100.0  # binary search on the scale, as transformers does
    while hi - lo >= eps:
        scale = (lo + hi) / 2
        if (scaled(scale, image_height) / patch_size) * (scaled(scale, image_width) / patch_size) <= max_num_patches:
            lo = scale
        else:
            hi = scale
    return scaled(lo, image_height), scaled(lo, image_width)


def choose_grid(image_hw: tuple[int, int], patch_size: int, max_patches: int) -> tuple[int, int]:
    """The patch grid ``(gh, gw)`` for an image of ``image_hw = (H, W)`` pixels within ``max_patches`` tokens.

    transformers' NaFlex rule (see the module docstring), applied to the aspect ratio: the image is first scaled so
    its long side is 1000 patches, which lets the rule's scale search (bounded to [1e-6, 100]) reach the budget for any
    size.
    """
    H, W = image_hw
    if H <= 0 or W <= 0:
        raise ValueError(f"image size must be positive, got {image_hw}")
    if max_patches < 1:
        raise ValueError(f"max_patches must be >= 1, got {max_patches}")
    norm = 1000.0 * patch_size / max(H, W)
    h_px, w_px = _naflex_size(H * norm, W * norm, patch_size, max_patches)
    return h_px // patch_size, w_px // patch_size


def to_pixels(image_rgb: np.ndarray, grid_hw: tuple[int, int], cfg: PixelConfig) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, gh*p, gw*p]``, resized (PIL, the checkpoint's filter) and normalized."""
    gh, gw = grid_hw
    size_wh = (gw * cfg.patch_size, gh * cfg.patch_size)
    img = Image.fromarray(image_rgb)
    if img.size != size_wh:
        img = img.resize(size_wh, resample=cfg.resample)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)  # [h, w, 3]
    mean = torch.tensor(cfg.mean, dtype=torch.float32)
    std = torch.tensor(cfg.std, dtype=torch.float32)
    return ((x - mean) / std).permute(2, 0, 1).contiguous()  # [h, w, 3] -> [3, h, w]


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, 3, gh*p, gw*p]`` -> ``[B, gh*gw, p*p*3]``, channel-last patches in row-major order, as NaFlex expects."""
    B, C, h, w = pixels.shape
    p = patch_size
    gh, gw = h // p, w // p
    x = pixels.reshape(B, C, gh, p, gw, p)  # [B, 3, gh, p, gw, p]
    x = x.permute(0, 2, 4, 3, 5, 1)  # -> [B, gh, gw, p, p, 3]
    return x.reshape(B, gh * gw, p * p * C)  # -> [B, gh*gw, p*p*3]


# ---------------------------------------------------------------------------------------------------------------------
# The one pixel <-> patch mapping


def grid_to_pixel_xy(
    ij: np.ndarray | torch.Tensor | tuple[float, float],
    image_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    patch_size: int,
) -> np.ndarray:
    """Patch coordinates ``(..., 2)`` as (row i, column j), fractional allowed -> original-image pixel ``(x, y)``.

    Integer ``(i, j)`` gives the patch centre; ``(i - 0.5, j - 0.5)`` its top-left corner.
    """
    ij = np.asarray(ij, dtype=np.float64)
    H, W = image_hw
    rh, rw = resized_hw
    x = (ij[..., 1] + 0.5) * patch_size * (W / rw)
    y = (ij[..., 0] + 0.5) * patch_size * (H / rh)
    return np.stack([x, y], axis=-1)


def pixel_to_grid(
    point_xy: np.ndarray | torch.Tensor | tuple[float, float],
    image_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    patch_size: int,
) -> np.ndarray:
    """Original-image pixel ``(..., 2)`` as (x, y) -> integer patch ``(i, j)`` whose cell contains it (clipped)."""
    xy = np.asarray(point_xy, dtype=np.float64)
    H, W = image_hw
    rh, rw = resized_hw
    gh, gw = rh // patch_size, rw // patch_size
    j = np.floor(xy[..., 0] * (rw / W) / patch_size).astype(np.int64)
    i = np.floor(xy[..., 1] * (rh / H) / patch_size).astype(np.int64)
    return np.stack([np.clip(i, 0, gh - 1), np.clip(j, 0, gw - 1)], axis=-1)


def grid_cell_xyxy(
    ij: np.ndarray | tuple[int, int], image_hw: tuple[int, int], resized_hw: tuple[int, int], patch_size: int
) -> np.ndarray:
    """The original-image box ``[x0, y0, x1, y1]`` that patch ``(i, j)`` covers (through :func:`grid_to_pixel_xy`)."""
    ij = np.asarray(ij, dtype=np.float64)
    top_left = grid_to_pixel_xy(ij - 0.5, image_hw, resized_hw, patch_size)
    bottom_right = grid_to_pixel_xy(ij + 0.5, image_hw, resized_hw, patch_size)
    return np.concatenate([top_left, bottom_right], axis=-1)


def aspect_error(image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> float:
    """``|log(sy / sx)|`` of the resize from image to grid: 0 for a perfect aspect ratio."""
    (H, W), (gh, gw) = image_hw, grid_hw
    return abs(math.log((gh / H) / (gw / W)))
