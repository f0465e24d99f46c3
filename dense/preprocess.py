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
import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dense.errors import AnnotationError, ImageError, InputError

ImageInput = str | os.PathLike | Image.Image | np.ndarray

# File suffixes taken as images when a folder is listed or an image id is looked up (lower case)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def image_files(images_dir: str | os.PathLike) -> dict[str, Path]:
    """The images of a user's folder, the one rule of every command (``dense extract``, ``demo --images``,
    ``explore``, ``upsampler train``): ``{relative posix name: real path}`` of every file with an image extension
    (:data:`IMAGE_EXTS`) under ``images_dir``, recursively, whose real path stays inside it (hidden files and folders,
    dangling links and links that leave the folder are left out), sorted by name."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{images_dir}: not a folder")
    real_root = root.resolve()
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTS or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling or looping symlink
            continue
        if real.is_file() and real.is_relative_to(real_root):
            out[p.relative_to(root).as_posix()] = real
    return out


def no_images_error(folder: str | os.PathLike) -> InputError:
    """The one error of a folder with no image file in it (every command and the explorer say the same words)."""
    return InputError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTS)})")


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


# ---------------------------------------------------------------------------------------------------------------------
# EXIF orientation: a user's photo is read upright; annotated data in the geometry of its annotation

ORIENTATION = 0x0112  # the EXIF tag; values 1..8, 5..8 swap height and width


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation of an open PIL image: 1..8, 1 when there is none or its value is not one of those."""
    try:
        tag = img.getexif().get(ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, TypeError):  # a malformed EXIF block: read as stored, as PIL would
        return 1
    return tag if isinstance(tag, int) and 1 <= tag <= 8 else 1


def read_hw(stored_hw: tuple[int, int], orientation: int, annotation_hw: tuple[int, int], name) -> tuple[bool, tuple]:
    """Annotated data: ``(upright, (H, W) read)`` for an image stored as ``stored_hw`` with EXIF ``orientation``
    whose annotation is ``annotation_hw`` (a COCO file's height and width, a label map's size).

    The pixels are read in the geometry the annotation has: as stored when its size is the stored one (which is also
    the references' reading when both orientations have that size: a square image, orientations 2..4), upright
    (``ImageOps.exif_transpose``) when only the upright size matches. When neither does, :class:`ImageError` names
    ``name`` and the three sizes. DINOv3's decoder, torchvision and pycocotools-based loaders read stored pixels;
    annotation tools that show a photo upright give the upright size.
    """
    stored_hw, annotation_hw = tuple(stored_hw), tuple(int(v) for v in annotation_hw)
    upright_hw = stored_hw[::-1] if orientation in (5, 6, 7, 8) else stored_hw
    if annotation_hw == stored_hw:
        return False, stored_hw
    if annotation_hw == upright_hw:
        return True, upright_hw
    raise ImageError(f"{name}: stored {stored_hw[0]} x {stored_hw[1]} (H x W) with EXIF orientation {orientation} "
                     f"(upright {upright_hw[0]} x {upright_hw[1]}), its annotation is {annotation_hw[0]} x "
                     f"{annotation_hw[1]}: neither")


class AnnotatedPath(type(Path())):
    """The path of an image of annotated data: :func:`load_image` reads it in its annotation's geometry
    (:func:`read_hw`), not upright. What the dataset readers' ``image_path`` return (:mod:`dense.coco`,
    :mod:`dense.segdata`); otherwise a plain path (a path derived from it, ``p.parent``, is a plain one).

    ``annotation_hw``: the annotation's ``(H, W)``, or a picklable function returning it (a label file's header,
    read only for an image that carries an orientation tag). Build it with :func:`annotated_path`.
    """

    annotation_hw = None  # class default: a derived path (p.parent, p.with_suffix) reads as any path

    def __reduce__(self):  # keep the annotation through pickling (DataLoader workers)
        return annotated_path, (str(self), self.annotation_hw)


def annotated_path(path: str | os.PathLike, annotation_hw) -> AnnotatedPath:
    """``path`` as an :class:`AnnotatedPath` whose annotation is ``annotation_hw`` (``(H, W)`` or a function)."""
    p = AnnotatedPath(path)
    p.annotation_hw = annotation_hw
    return p


def _annotation_hw(image) -> tuple[int, int] | None:
    hw = getattr(image, "annotation_hw", None)
    return hw() if callable(hw) else hw


def stored_geometry(path: str | os.PathLike) -> tuple[tuple[int, int], int] | None:
    """``((H, W) as stored, EXIF orientation)`` of an image file from its header, or None when it cannot be opened
    (left to the reading, which names it)."""
    try:
        with Image.open(path) as im:
            return (im.height, im.width), exif_orientation(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def read_geometry(path: str | os.PathLike) -> tuple[tuple[int, int], int] | None:
    """``((H, W) as :func:`load_image` will read ``path``, its EXIF orientation)`` from the header, or None when it
    cannot be opened: upright for a plain path; for an :class:`AnnotatedPath` carrying a tag, the geometry of its
    annotation (:func:`read_hw`, which raises :class:`ImageError` when neither orientation has the annotation's size).
    """
    found = stored_geometry(path)
    if found is None:
        return None
    stored_hw, tag = found
    if tag == 1:
        return stored_hw, tag
    if not isinstance(path, AnnotatedPath):
        return (stored_hw[::-1] if tag in (5, 6, 7, 8) else stored_hw), tag
    annotation = _annotation_hw(path)
    return (stored_hw if annotation is None else read_hw(stored_hw, tag, annotation, path)[1]), tag


def _oriented(img: Image.Image, image) -> Image.Image:
    """``img`` in the geometry it is read in: upright (EXIF applied) for a user's image, the annotation's for an
    :class:`AnnotatedPath`."""
    tag = exif_orientation(img)
    if tag == 1:
        return img
    if isinstance(image, AnnotatedPath):
        annotation = _annotation_hw(image)
        if annotation is None or not read_hw((img.height, img.width), tag, annotation, image)[0]:
            return img  # an annotation of unknown size (no label file): stored pixels, as the references read them
    return ImageOps.exif_transpose(img)


def exif_tagged(dataset, ids) -> int | None:
    """How many images of ``ids`` in ``dataset`` carry an EXIF orientation tag (its ``exif_tagged``; None for a
    dataset object without one): what the evaluators put in ``Result.meta["exif_tagged"]``. Annotated data is read
    in its annotation's geometry whatever the tag (:func:`read_hw`)."""
    count = getattr(dataset, "exif_tagged", None)
    return None if count is None else int(count(list(ids)))


def check_image_size(image: Path, annotation_hw: tuple[int, int], tags: dict, image_id, mismatch) -> None:
    """Before any expensive work: ``image`` (an id's image) is read at ``annotation_hw`` (its label map's size, its
    COCO entry's), in the geometry :func:`load_image` reads annotated data in (:func:`read_hw`: as stored, or upright
    when only that matches); otherwise :class:`AnnotationError` with the message ``mismatch(image_hw)`` (``image_hw``
    as stored, with its orientation when it carries one). Reads the header only; an image that cannot be opened is
    left to the extraction (which names it or skips it). Its EXIF orientation goes into ``tags[image_id]``."""
    found = stored_geometry(image)
    if found is None:
        return
    stored_hw, tag = found
    tags[image_id] = tag
    try:
        read_hw(stored_hw, tag, annotation_hw, image)
    except ImageError:
        upright = f" stored, EXIF orientation {tag}" if tag != 1 else ""
        raise AnnotationError(mismatch(f"{stored_hw[0]} x {stored_hw[1]}{upright}")) from None


def count_exif_tagged(ids, image_path, memo: dict) -> int:
    """How many of ``ids`` have an image (``image_path(id)``) that carries an EXIF orientation tag (2..8), from the
    headers; ``memo`` (id -> orientation) keeps what was read (a dataset's ``check_files`` fills it too)."""
    n = 0
    for i in ids:
        if i not in memo:
            found = stored_geometry(image_path(i))
            memo[i] = found[1] if found else 1
        n += memo[i] != 1
    return n


def load_image(image: ImageInput) -> np.ndarray:
    """Read a path, PIL image or array into uint8 ``[H, W, 3]`` RGB, EXIF orientation applied (a photo is read
    upright), except for an :class:`AnnotatedPath` (annotated data: read in its annotation's geometry, :func:`read_hw`).

    Raises :class:`ImageError` naming the input for a missing, empty, truncated or non-image file, a decompression bomb,
    an array of the wrong shape or dtype, or an annotated image whose annotation has neither orientation's size.
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
                return _pil_to_rgb(_oriented(img, image))
    except ImageError:
        raise
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


def check_max_patches(max_patches, what: str = "max_patches") -> int | None:
    """A token budget: None (the checkpoint's) or a whole number of tokens, at least 1 (``2.5``, ``True``, ``"64"``
    and ``0`` are refused). The one check of a budget; every function that takes ``max_patches`` calls it."""
    if max_patches is None:
        return None
    if isinstance(max_patches, bool) or not isinstance(max_patches, numbers.Integral):
        raise InputError(f"{what} is a whole number of tokens (at least 1), got {max_patches!r}")
    if max_patches < 1:
        raise InputError(f"{what} must be at least 1 (None: the checkpoint's budget), got {max_patches}")
    return int(max_patches)


def choose_grid(image_hw: tuple[int, int], patch_size: int, max_patches: int) -> tuple[int, int]:
    """The patch grid ``(gh, gw)`` for an image of ``image_hw = (H, W)`` pixels within ``max_patches`` tokens.

    transformers' NaFlex rule (see the module docstring), applied to the aspect ratio: the image is first scaled so
    its long side is 1000 patches, which lets the rule's scale search (bounded to [1e-6, 100]) reach the budget for any
    size.
    """
    H, W = image_hw
    if H <= 0 or W <= 0:
        raise InputError(f"image size must be positive, got {image_hw}")
    if check_max_patches(max_patches) is None:
        raise InputError("max_patches is None: choose_grid needs a number of tokens")
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
