"""Atomic writes: a temporary file beside the target, renamed over it only once complete (never a half file)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``.<name>.<pid>.tmp`` beside ``path`` to write; on success it replaces ``path``, on error it is removed.

    ``dense.cache`` recognises (and cleans up) leftovers of this pattern from killed processes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 1, **kwargs) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, **kwargs))
