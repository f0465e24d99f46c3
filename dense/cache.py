"""On-disk feature cache: extract once per dataset, read many times (probes, evaluation).

Layout::

    <root>/<family>-<hash>/spec.json            the encoder spec (fingerprint, family, dtype, budget, layers, ...)
    <root>/<family>-<hash>/entries/<key>.safetensors    one FeatureMap per image (FeatureMap.save), no dataset named
    <root>/<family>-<hash>/data/<dataset identity>/<key>.safetensors    the same, for one dataset (``dataset=``)

``<hash>`` is a hash of ``Encoder.spec(max_patches=..., layers=...)``, which identifies the weights by their
fingerprint (not by the name typed to load them), so changing the weights, their dtype, the token budget or the
layers opens a different folder: stale features are never served. Keys are strings: a COCO image id, a
segmentation-dataset id, or an image path relative to the image folder.

Entries belong to their dataset: ``FeatureCache.for_encoder(root, enc, dataset=ds)`` (what every ``dense`` command
does) keeps them under ``data/<ds.identity()>``, the dataset's kind and resolved root (a COCO file: the file and its
image folder; a plain folder: the folder), so two datasets under one ``--cache`` never share an entry even when their
image ids agree.

Safety: each entry is serialized in memory and written to dense's pid-named temp file, fsynced and renamed
(``FeatureMap.save`` through :func:`dense._atomic.write_bytes`), so a killed run leaves whole entries or none, plus
at most one ``.<name>.<pid>.tmp`` per killed writer. The next run removes those at once when their writer's pid is
gone (and any temp file older than ``TEMP_MAX_AGE_S``, including ``.tmpXXXXXX``-style ones that older versions,
which let safetensors write the file, could leave). Resuming skips entries that load; an entry that does not load, or
whose spec or shape is wrong, is reported as corrupt and extracted again.

The spec holds ``rules`` (:data:`dense.features.RULES_VERSION`), so features made under other versions of dense's
pixel and token rules live in another folder and are never served.

Filling a cache from images (resumable, sharded under ``torchrun``) is :func:`dense.extract.extract_to_cache`'s job;
this module only stores and reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from dense._atomic import write_json
from dense.errors import FormatError, InputError, MissingEntryError
from dense.features import FeatureMap

log = logging.getLogger("dense")

TEMP_MAX_AGE_S = 6 * 3600  # a temp file untouched this long has no live writer (pids are reused; shared disks)
_DENSE_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # dense._atomic: .<name>.<pid>.tmp
_OTHER_TEMP = re.compile(r"(^\.?tmp[A-Za-z0-9_]{4,}$)|(\.tmp[A-Za-z0-9_]{0,12}$)")  # safetensors, tempfile, ...


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FeatureCache:
    """The cache folder of one encoder spec. ``get``/``put``/``__contains__`` by string key."""

    def __init__(self, root: str | os.PathLike, spec: dict, namespace: str | None = None):
        self.root = Path(root)
        self.spec = dict(spec)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(spec.get("family", "model")))
        self.dir = self.root / f"{slug}-{spec_hash(self.spec)}"
        self.namespace = namespace
        if namespace is None:
            self.entries = self.dir / "entries"
        else:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", namespace) or namespace in (".", ".."):
                raise InputError(f"cache namespace {namespace!r}: letters, digits, '_', '.', '-' only")
            self.entries = self.dir / "data" / namespace

    @classmethod
    def for_encoder(cls, root, encoder, *, max_patches: int | None = None, layers: Sequence[int] = (-1,),
                    dataset=None, store_dtype: torch.dtype | None = None, pooled: bool = False) -> FeatureCache:
        """The cache of ``encoder`` at this budget and these layers, storing tokens as ``store_dtype`` (and the pooled
        embedding with ``pooled``); with ``dataset`` (anything with ``identity()``, or a namespace string), the part
        that belongs to that dataset."""
        return cls(root, cache_spec(encoder, max_patches=max_patches, layers=layers, store_dtype=store_dtype,
                                    pooled=pooled), dataset_namespace(dataset))

    def for_dataset(self, dataset) -> FeatureCache:
        """The same cache, scoped to ``dataset`` (see :func:`dataset_namespace`)."""
        return FeatureCache(self.root, self.spec, dataset_namespace(dataset))

    @property
    def store_dtype(self) -> torch.dtype | None:
        """The dtype tokens are stored in (None: as the encoder made them, float32)."""
        name = self.spec.get("store_dtype")
        return getattr(torch, name) if name else None

    def stored(self, fmap: FeatureMap) -> FeatureMap:
        """``fmap`` as this cache stores it: tokens cast to the store dtype, the cache's spec as its encoder."""
        if self.spec == base_spec(self.spec) or fmap.encoder_spec != base_spec(self.spec):
            return fmap  # nothing to change, or not this cache's features (check() will say so)
        if self.store_dtype is not None:
            fmap = fmap.to(self.store_dtype)
        return dataclasses.replace(fmap, encoder_spec=dict(self.spec))

    def init(self) -> None:
        """Create the folder and write ``spec.json`` (atomically; several ranks may do it at once)."""
        self.entries.mkdir(parents=True, exist_ok=True)
        target = self.dir / "spec.json"
        if target.exists():
            try:
                on_disk = json.loads(target.read_text())
            except ValueError as e:
                raise FormatError(f"{target}: not valid JSON ({e}); this folder is not a dense feature cache, or "
                                  f"its spec.json is damaged") from e
            if on_disk != self.spec:
                raise InputError(f"{target}: holds spec {on_disk}, expected {self.spec} (hash collision?)")
            return
        write_json(target, self.spec, sort_keys=True)

    def path(self, key: str) -> Path:
        key = str(key)
        if not key or key.startswith("/") or ".." in Path(key).parts:
            raise InputError(f"cache key {key!r} must be a relative name")
        return self.entries / f"{key}.safetensors"

    def keys(self) -> list[str]:
        """Keys of the entries on disk (whether they load or not), sorted."""
        if not self.entries.is_dir():
            return []
        n = len(".safetensors")
        return sorted(p.relative_to(self.entries).as_posix()[:-n] for p in self.entries.rglob("*.safetensors")
                      if not p.name.startswith("."))

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def check(self, fmap: FeatureMap) -> str | None:
        """Why ``fmap`` is not a valid entry of this cache (None when it is)."""
        if fmap.encoder_spec != self.spec:
            return f"made by {fmap.encoder_spec}, not {self.spec}"
        want_dim = self.spec.get("hidden_size", fmap.dim) * len(self.spec.get("layers", [0]))
        if fmap.dim != want_dim:
            return f"token dim {fmap.dim}, expected {want_dim}"
        if self.store_dtype is not None and fmap.tokens.dtype != self.store_dtype:
            return f"tokens are {fmap.tokens.dtype}, the cache stores {self.store_dtype}"
        if self.spec.get("pooled") and fmap.pooled is None:
            return "no pooled embedding"
        if not torch.isfinite(fmap.tokens).all():
            return "non-finite tokens"
        return None

    def get(self, key: str) -> FeatureMap | None:
        """The entry, or None when it is missing or corrupt (a corrupt one is logged and deleted)."""
        path = self.path(key)
        try:
            fmap = FeatureMap.load(path)
            why = self.check(fmap)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, OSError) as e:
            why = str(e)
        if why is None:
            return fmap
        log.warning("corrupt cache entry %s: %s; it will be extracted again", path, why)
        path.unlink(missing_ok=True)
        return None

    def load(self, key: str) -> FeatureMap:
        """Like :meth:`get`, but a missing or corrupt entry raises :class:`~dense.errors.MissingEntryError` (a
        ``KeyError``) naming it."""
        fmap = self.get(key)
        if fmap is None:
            raise MissingEntryError(f"{self.path(key)}: not in the cache (run `dense extract` first)")
        return fmap

    def put(self, key: str, fmap: FeatureMap) -> Path:
        fmap = self.stored(fmap)
        why = self.check(fmap)
        if why is not None:
            raise InputError(f"cache {self.dir}: refusing entry {key!r}: {why}")
        return fmap.save(self.path(key))

    def remove_stale_temps(self, *, max_age_s: float = TEMP_MAX_AGE_S, now: float | None = None) -> int:
        """Delete temp files left by killed writers anywhere in this spec's folder. Returns how many.

        A dense temp file (``.<name>.<pid>.tmp``) goes when its pid is gone or it is older than ``max_age_s``; any
        other temp-looking file (safetensors' and tempfile's ``.tmpXXXXXX``, ``*.tmp``) when it is older than
        ``max_age_s``, since its writer is unknown. Entries and ``spec.json`` are never touched."""
        if not self.dir.is_dir():
            return 0
        now = time.time() if now is None else now
        n = 0
        for p in list(self.dir.rglob("*")):
            if (p.suffix == ".safetensors" and not p.name.startswith(".")) or p.name == "spec.json":
                continue
            m = _DENSE_TEMP.match(p.name)
            if not m and not _OTHER_TEMP.search(p.name):
                continue
            try:
                old = now - p.stat().st_mtime > max_age_s
            except FileNotFoundError:  # its writer just renamed it
                continue
            if old or (m and not _pid_alive(int(m.group(1)))):
                if p.is_file():
                    p.unlink(missing_ok=True)
                    n += 1
                    log.info("removed stray temp file %s", p)
        return n


STORE_KEYS = ("store_dtype", "pooled")  # how a cache stores features: part of its spec, not of the encoder's


def cache_spec(encoder, *, max_patches: int | None = None, layers: Sequence[int] = (-1,),
               store_dtype: torch.dtype | None = None, pooled: bool = False) -> dict:
    """The encoder's spec plus how the cache stores its features: ``store_dtype`` (e.g. ``torch.bfloat16``: half
    the disk and read bandwidth of float32; None keeps float32) and ``pooled`` (each entry also holds the MAP head's
    pooled embedding of the last block, for ``+pooled`` probes). Without either the spec is the encoder's, so
    existing caches keep their folder."""
    spec = encoder.spec(max_patches=max_patches, layers=tuple(layers))
    if store_dtype is not None and store_dtype != torch.float32:
        spec["store_dtype"] = str(store_dtype).removeprefix("torch.")
    if pooled:
        spec["pooled"] = True
    return spec


def base_spec(spec: dict) -> dict:
    """A cache spec without its storage keys: the spec of the encoder that made the features."""
    return {k: v for k, v in spec.items() if k not in STORE_KEYS}


def dataset_namespace(dataset) -> str | None:
    """The cache namespace of ``dataset``: its ``identity()`` (``dense.coco``, ``dense.segdata``), a string as is, a
    folder's ``folder-<hash of its resolved path>``; None for none."""
    if dataset is None or isinstance(dataset, str):
        return dataset
    if isinstance(dataset, os.PathLike):
        path = Path(dataset).resolve()
        return f"folder-{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    return dataset.identity()
