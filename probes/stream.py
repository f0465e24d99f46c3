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

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from dense.features import FeatureMap


class CachedSample:
    """One image of a split: its cache entry (``path``) and its label map (``label_fn()``, read on demand).

    ``grid_hw``, ``image_hw``, ``encoder_spec`` (the entry's spec) and ``pooled_dim`` come from the entry's header.
    """

    def __init__(self, key: str, path: Path, label_fn: Callable[[], np.ndarray], *, grid_hw: tuple[int, int],
                 image_hw: tuple[int, int], encoder_spec: dict, pooled_dim: int | None):
        self.key, self.path, self.label_fn = key, Path(path), label_fn
        self.grid_hw, self.image_hw, self.encoder_spec, self.pooled_dim = grid_hw, image_hw, encoder_spec, pooled_dim

    @classmethod
    def open(cls, key: str, path: str | Path, label_fn: Callable[[], np.ndarray]) -> CachedSample:
        """Read only the header of the entry at ``path``; a missing entry raises ``KeyError`` naming it."""
        path = Path(path)
        if not path.exists():
            raise KeyError(f"{path}: not in the cache (run `dense extract` first)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["dense"])
                shape = f.get_slice("tokens").get_shape()  # [gh, gw, D]
                pooled = f.get_slice("pooled").get_shape()[0] if "pooled" in f.keys() else None
        except Exception as e:
            raise ValueError(f"{path}: not a dense FeatureMap file ({type(e).__name__}: {e})") from e
        p = int(meta["patch_size"])
        grid = (meta["resized_hw"][0] // p, meta["resized_hw"][1] // p)
        if tuple(shape[:2]) != grid:
            raise ValueError(f"{path}: tokens {shape} do not match the grid {grid}")
        return cls(key, path, label_fn, grid_hw=grid, image_hw=tuple(meta["image_hw"]),
                   encoder_spec=meta.get("encoder", {}), pooled_dim=pooled)

    def read(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens [gh, gw, D] in the stored dtype, pooled [E] or None)``, read from disk now."""
        with safe_open(str(self.path), framework="pt") as f:
            tokens = f.get_tensor("tokens").clone()  # own the memory: nothing stays mapped after the file closes
            pooled = f.get_tensor("pooled").clone() if "pooled" in f.keys() else None
        return tokens, pooled

    @property
    def fmap(self) -> FeatureMap:
        return FeatureMap.load(self.path)

    @property
    def label(self) -> np.ndarray:
        return self.read_label()

    def read_label(self) -> np.ndarray:
        """The label map ``[H, W]``, checked against the image size."""
        label = np.asarray(self.label_fn())
        if label.shape != tuple(self.image_hw):
            raise ValueError(f"image {self.key}: label map {label.shape} differs from the image size {self.image_hw}")
        return label

    def __repr__(self) -> str:
        return f"CachedSample({self.key!r}, grid={self.grid_hw}, image_hw={self.image_hw}, path={str(self.path)!r})"


def cached_samples(cache, keys: Sequence[str], label_fns: Sequence[Callable[[], np.ndarray]], *,
                   progress: bool = False, desc: str = "open") -> list[CachedSample]:
    """:class:`CachedSample` per key of ``cache`` (a :class:`dense.cache.FeatureCache`), reading headers only."""
    out = []
    for key, fn in tqdm(list(zip(keys, label_fns, strict=True)), desc=desc, unit="img", disable=not progress):
        s = CachedSample.open(str(key), cache.path(str(key)), fn)
        if s.encoder_spec != cache.spec:
            raise ValueError(f"{s.path}: made by {s.encoder_spec}, not {cache.spec}")
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
