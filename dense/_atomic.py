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


# ---------------------------------------------------------------------------------------------------------------------
# dense's own .safetensors files (FeatureMaps, probes, upsamplers): tensors + a JSON header under the key "dense"


def save_tensors(path: str | os.PathLike, tensors: dict, header: dict) -> Path:
    """Write ``tensors`` (name -> tensor) with ``header`` (JSON: at least ``format`` and ``version``), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"dense": json.dumps(header)})
    return path


def load_tensors(path: str | os.PathLike, fmt: str, version: int, what: str) -> tuple[dict, dict]:
    """``(header, tensors)`` of a file written by :func:`save_tensors`; the tensors own their memory (no tie to the
    file). A missing file raises ``FileNotFoundError``; anything that is not a ``fmt`` v``version`` file raises
    ``ValueError`` naming it and ``what`` it should have been."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["dense"])
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError for a damaged header
        raise ValueError(f"{path}: not a dense {what} file ({type(e).__name__}: {e})") from e
    if header.get("format") != fmt or header.get("version") != version:
        raise ValueError(f"{path}: unknown {what} format {header.get('format')!r} v{header.get('version')}")
    return header, tensors
