"""Filling a feature cache from images: the extraction driver behind ``dense extract`` and the probe commands.

:func:`extract_to_cache` takes ``(key, image)`` pairs (:func:`folder_items` for a folder, :func:`dataset_items` for a
COCO or segmentation dataset), skips the keys whose entries already load, extracts the rest in batches and stores them
in a :class:`dense.cache.FeatureCache` (which only stores and reads). With a ``pooled`` cache each entry also holds the
MAP head's pooled embedding (:func:`dense.head.with_pooled`).

Sharding: under ``torchrun --nproc_per_node N`` (or any launcher setting ``RANK`` / ``WORLD_SIZE``), rank r takes
the keys ``sorted(keys)[r::N]`` into the same folder; no two ranks write the same entry.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dense._progress import tqdm
from dense.cache import FeatureCache, cache_spec
from dense.distributed import dist_info
from dense.errors import InputError
from dense.head import with_pooled
from dense.preprocess import IMAGE_EXTS


def folder_items(image_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """Every image under ``image_dir`` (recursively) as ``(relative posix path, path)``, sorted."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: not a folder")
    return sorted((p.relative_to(image_dir).as_posix(), p) for p in image_dir.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def dataset_items(dataset, split: str | None = None) -> list[tuple[str, Path]]:
    """``(key, image path)`` for a :class:`~dense.coco.CocoDataset` (key = image id) or
    :class:`~dense.coco.SegFolder` (key = stem); the probe trainer reads the cache with the same keys."""
    return [(str(i), dataset.image_path(i)) for i in dataset.ids(split)]


@dataclass
class ExtractReport:
    """What one rank did. ``skipped``: unreadable images (``on_error='skip'``), one line each."""

    rank: int = 0
    world_size: int = 1
    total: int = 0  # keys assigned to this rank
    extracted: int = 0
    cached: int = 0  # already valid on disk
    corrupt: int = 0  # found damaged, extracted again
    skipped: list[str] = field(default_factory=list)


def extract_to_cache(encoder, items: Sequence[tuple[str, object]], cache: FeatureCache, *,
                     max_patches: int | None = None, layers: Sequence[int] = (-1,), batch_size: int = 8,
                     on_error: str = "raise", rank: int | None = None, world_size: int | None = None,
                     progress: bool = True, store_dtype: torch.dtype | None = None, pooled: bool | None = None
                     ) -> ExtractReport:
    """Fill ``cache`` with the features of ``items`` (``(key, image)`` pairs), resuming where a previous run stopped.

    This rank takes ``sorted(items)[rank::world_size]`` (defaults: :func:`dense.distributed.dist_info`).
    ``on_error='skip'`` reports unreadable images and goes on; ``'raise'`` stops at the first one. ``store_dtype`` /
    ``pooled`` (see :func:`dense.cache.cache_spec`; None: as ``cache``'s spec says) must agree with the cache.
    """
    layers = tuple(layers)
    if store_dtype is None:
        store_dtype = cache.store_dtype
    if pooled is None:
        pooled = bool(cache.spec.get("pooled"))
    if cache.spec != cache_spec(encoder, max_patches=max_patches, layers=layers, store_dtype=store_dtype,
                                pooled=pooled):
        raise InputError(f"cache {cache.dir} is for {cache.spec}, not this encoder/max_patches/layers/storage")
    if rank is None or world_size is None:
        rank, world_size = dist_info()
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        raise InputError("duplicate cache keys among the items")
    mine = sorted(items, key=lambda kv: kv[0])[rank::world_size]
    report = ExtractReport(rank=rank, world_size=world_size, total=len(mine))
    cache.init()
    cache.remove_stale_temps()
    todo = []
    for key, image in mine:
        if key in cache:
            if cache.get(key) is not None:  # get() deletes what is damaged
                report.cached += 1
                continue
            report.corrupt += 1
        todo.append((key, image))
    if not todo:
        return report
    desc = "extract" if world_size == 1 else f"extract[{rank}/{world_size}]"
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, position=rank if world_size > 1 else None)
    try:
        results = encoder.extract_many([img for _, img in todo], max_patches=max_patches, layers=layers,
                                       batch_size=batch_size, on_error=on_error, progress=False)
        for (key, image), fmap in zip(todo, results, strict=True):
            if fmap is None:
                report.skipped.append(f"{key}: {image} could not be read")
            else:
                cache.put(key, with_pooled(encoder, fmap) if pooled else fmap)
                report.extracted += 1
            bar.update(1)
    finally:
        bar.close()
    return report
