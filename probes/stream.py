"""Samples whose tokens stay in the on-disk feature cache until a batch needs them: probe training in bounded memory.

A :class:`CachedSample` holds a cache entry's path, its geometry (read from the ``.safetensors`` header, not the
tokens) and a function that reads its label map. :func:`probes.train.train_probes` reads its tokens batch by batch
(in the cache's dtype: a bf16 cache is read as bf16, never converted whole) and computes its training targets from
the label map when the batch comes, so peak memory does not grow with the dataset: ADE20K's 20k images at 729 x 1152
are 34 GB in bf16 on disk, a few MB per batch in memory. The next batch is read on a background thread while the
current one trains.

Evaluators read ``sample.fmap`` / ``sample.label`` as for an in-memory :class:`probes.Sample`; each access reads the
file, so a caller that needs them twice keeps them (``dense.eval.probe`` reads each sample once for all heads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dense._atomic import load_tensors, read_header
from dense._progress import tqdm
from dense.errors import InputError, MissingEntryError
from dense.features import FORMAT, FORMAT_VERSION, FeatureMap


class CachedSample:
    """One image of a split: its cache entry (``path``) and its label map (``label_fn()``, read on demand).

    ``grid_hw``, ``image_hw``, ``encoder_spec`` (the entry's spec) and ``pooled_dim`` come from the entry's header.
    """

    def __init__(self, key: str, path: Path, label_fn: Callable[[], np.ndarray], *, grid_hw: tuple[int, int],
                 image_hw: tuple[int, int], encoder_spec: dict, pooled_dim: int | None,
                 label_where: Callable[[], str] | None = None):
        self.key, self.path, self.label_fn, self.label_where = key, Path(path), label_fn, label_where
        self.grid_hw, self.image_hw, self.encoder_spec, self.pooled_dim = grid_hw, image_hw, encoder_spec, pooled_dim

    @classmethod
    def open(cls, key: str, path: str | Path, label_fn: Callable[[], np.ndarray],
             label_where: Callable[[], str] | None = None) -> CachedSample:
        """Read only the header of the entry at ``path``; a missing entry raises ``KeyError`` naming it."""
        path = Path(path)
        if not path.exists():
            raise MissingEntryError(f"{path}: not in the cache (run `dense extract` first)")
        meta, shapes = read_header(path, FORMAT, FORMAT_VERSION, "FeatureMap")  # format and version checked
        if "tokens" not in shapes:
            raise InputError(f"{path}: not a dense FeatureMap file (no tokens)")
        shape = shapes["tokens"]  # [gh, gw, D]
        pooled = shapes["pooled"][0] if "pooled" in shapes else None
        p = int(meta["patch_size"])
        grid = (meta["resized_hw"][0] // p, meta["resized_hw"][1] // p)
        if tuple(shape[:2]) != grid:
            raise InputError(f"{path}: tokens {shape} do not match the grid {grid}")
        return cls(key, path, label_fn, grid_hw=grid, image_hw=tuple(meta["image_hw"]),
                   encoder_spec=meta.get("encoder", {}), pooled_dim=pooled, label_where=label_where)

    def read(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens [gh, gw, D] in the stored dtype, pooled [E] or None)``, read from disk now."""
        _, tensors = load_tensors(self.path, FORMAT, FORMAT_VERSION, "FeatureMap", names=("tokens", "pooled"))
        return tensors["tokens"], tensors.get("pooled")

    @property
    def fmap(self) -> FeatureMap:
        return FeatureMap.load(self.path)

    @property
    def label(self) -> np.ndarray:
        return self.read_label()

    def read_label(self) -> np.ndarray:
        """The label map ``[H, W]``, checked against the image size (the error names the label file, where known)."""
        label = np.asarray(self.label_fn())
        if label.shape != tuple(self.image_hw):
            where = self.label_where() if self.label_where else "label map"
            raise InputError(f"{where}: label map is {label.shape[0]} x {label.shape[1]} (H x W), its image is "
                             f"{self.image_hw[0]} x {self.image_hw[1]} (image id {self.key})")
        return label

    def __repr__(self) -> str:
        return f"CachedSample({self.key!r}, grid={self.grid_hw}, image_hw={self.image_hw}, path={str(self.path)!r})"


def cached_samples(cache, keys: Sequence[str], label_fns: Sequence[Callable[[], np.ndarray]], *,
                   progress: bool = False, desc: str = "open",
                   label_wheres: Sequence[Callable[[], str]] | None = None) -> list[CachedSample]:
    """:class:`CachedSample` per key of ``cache`` (a :class:`dense.cache.FeatureCache`), reading headers only.
    ``label_wheres``: per key, the label file's name for errors."""
    out = []
    wheres = label_wheres if label_wheres is not None else [None] * len(keys)
    for key, fn, where in tqdm(list(zip(keys, label_fns, wheres, strict=True)), desc=desc, unit="img",
                               disable=not progress):
        s = CachedSample.open(str(key), cache.path(str(key)), fn, where)
        if s.encoder_spec != cache.spec:
            raise InputError(f"{s.path}: made by {s.encoder_spec}, not {cache.spec}")
        out.append(s)
    return out


class Prefetcher:
    """Run ``fn(item)`` for the items in order, one item ahead on a background thread (disk reads and label
    decoding overlap the training step; numpy and safetensors release the GIL)."""

    def __init__(self, fn: Callable, items: Sequence):
        from concurrent.futures import ThreadPoolExecutor

        self.fn, self.items = fn, list(items)
        self.pool = ThreadPoolExecutor(max_workers=1)

    def __iter__(self):
        try:
            nxt = self.pool.submit(self.fn, self.items[0]) if self.items else None
            for k in range(len(self.items)):
                cur = nxt
                nxt = self.pool.submit(self.fn, self.items[k + 1]) if k + 1 < len(self.items) else None
                yield cur.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
