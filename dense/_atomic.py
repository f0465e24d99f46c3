"""Atomic writes: a temporary file beside the target, renamed over it only once complete (never a half file).

Every file dense writes goes through :func:`write_bytes` (or :func:`atomic_path` for writers that need a path): the
only temporary files dense can leave behind are ``.<name>.<pid>.tmp``, whose writer pid tells a later run whether it
is still alive (``dense.cache`` removes those of dead pids). Tensors are serialized in memory
(``safetensors.torch.save``), never with ``save_file``, whose own temporary files carry no pid.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from dense.errors import FormatError


def temp_path(path: str | os.PathLike) -> Path:
    """``.<name>.<pid>.tmp`` beside ``path``: the one temp-file name dense writes."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield :func:`temp_path` of ``path`` to write; on success it replaces ``path``, on error it is removed.

    ``dense.cache`` recognises (and cleans up) leftovers of this pattern from killed processes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: pid-named temp file, fsync, rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must never publish a file whose bytes are not on disk yet
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 1, **kwargs) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, **kwargs))


# ---------------------------------------------------------------------------------------------------------------------
# dense's own .safetensors files (FeatureMaps, probes, upsamplers, heads, text embeddings): tensors + a JSON header
# under the key "dense" holding at least "format" and "version". One writer, one reader, one header check.


def save_tensors(path: str | os.PathLike, tensors: dict, header: dict) -> Path:
    """Write ``tensors`` (name -> tensor) with ``header`` (JSON: at least ``format`` and ``version``), atomically."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"dense": json.dumps(header)})
    return write_bytes(path, data)


def _check_header(path: Path, meta: dict | None, fmt: str, version: int, what: str) -> dict:
    try:
        header = json.loads((meta or {})["dense"])
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: not a dense {what} file (no dense header: {type(e).__name__}: {e})") from e
    if not isinstance(header, dict) or header.get("format") != fmt or header.get("version") != version:
        got = header if not isinstance(header, dict) else f"{header.get('format')!r} v{header.get('version')}"
        raise FormatError(f"{path}: unknown {what} format {got} (expected {fmt!r} v{version})")
    return header


def read_header(path: str | os.PathLike, fmt: str, version: int, what: str) -> tuple[dict, dict[str, list[int]]]:
    """``(header, {tensor name: shape})`` of a file written by :func:`save_tensors`, reading no tensor data; the
    same checks and errors as :func:`load_tensors`."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError for a damaged header
        raise FormatError(f"{path}: not a dense {what} file ({type(e).__name__}: {e})") from e
    return _check_header(path, meta, fmt, version, what), shapes


def load_tensors(path: str | os.PathLike, fmt: str, version: int, what: str, names: Iterable[str] | None = None
                 ) -> tuple[dict, dict]:
    """``(header, tensors)`` of a file written by :func:`save_tensors`; the tensors own their memory (no tie to the
    file). ``names``: read only these tensors (those the file has). A missing file raises ``FileNotFoundError``;
    anything that is not a ``fmt`` v``version`` file raises :class:`~dense.errors.FormatError` (a ``ValueError``)
    naming it and ``what`` it should have been."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = _check_header(path, f.metadata(), fmt, version, what)
            wanted = None if names is None else set(names)
            tensors = {k: f.get_tensor(k).clone() for k in f.keys() if wanted is None or k in wanted}
    except (FileNotFoundError, FormatError):
        raise
    except Exception as e:  # safetensors raises its own SafetensorError for a damaged header or data
        raise FormatError(f"{path}: not a dense {what} file ({type(e).__name__}: {e})") from e
    return header, tensors
