"""Which files ``dense explore`` serves: the image files under one folder, by their relative names."""

from __future__ import annotations

import os
from pathlib import Path

from dense.preprocess import IMAGE_EXTS


def image_files(images_dir: str | os.PathLike) -> dict[str, Path]:
    """``{relative posix name: path}`` of every image file under ``images_dir`` whose real path stays inside it
    (hidden files and folders, dangling links and links that leave the folder are left out), sorted by name."""
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


