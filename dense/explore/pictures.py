"""What the page shows, as pictures: sizes at view scale, resizing, PNG bytes and ``data:`` URLs."""

from __future__ import annotations

import base64

import numpy as np

VIEW_MAX = 768  # long side, in pixels, of the images and overlays the page shows (answers stay in original pixels)


def view_hw(image_hw: tuple[int, int], view_max: int = VIEW_MAX) -> tuple[int, int]:
    """The size the page shows an image at: ``image_hw`` scaled so its long side is at most ``view_max``."""
    H, W = image_hw
    s = min(1.0, view_max / max(H, W))
    return max(1, round(H * s)), max(1, round(W * s))


def resize_rgb(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> ``[h, w, 3]`` (area interpolation; the array itself when the size is already right)."""
    import cv2

    if rgb.shape[:2] == tuple(size_hw):
        return rgb
    return cv2.resize(rgb, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA)


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` RGB -> PNG file bytes."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def png_data_url(rgb: np.ndarray) -> str:
    """uint8 ``[H, W, 3]`` RGB -> ``data:image/png;base64,...``."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")
