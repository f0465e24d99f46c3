"""Filling a feature cache from images: the job behind ``dense extract`` and the probe commands.

- :func:`fill_cache` is the whole job, torchrun included: load the encoder on this rank's device, scan what the cache
  already holds, share the MISSING keys between the ranks, extract, gather every rank's report, and return the total
  (``dense extract`` maps its flags to it and prints the result).
- :func:`extract_to_cache` is the work of one process: it skips the keys whose entries already load, extracts the
  rest (:meth:`dense.Encoder.extract_stream`: results leave per batch) and writes them from a small pool of threads
  while the model runs on, with at most :data:`WRITE_BUDGET_BYTES` of tokens waiting. It never shards by itself:
  commands that call it under torchrun extract every image they were given.

Items are ``(key, image)`` pairs: :func:`folder_items` for a folder, :func:`dataset_items` for a COCO or segmentation
dataset. With a ``pooled`` cache each entry also holds the MAP head's pooled embedding (:func:`dense.head.with_pooled`).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dense._progress import tqdm
from dense.cache import FeatureCache, cache_spec
from dense.errors import CacheWriteError, InputError, RankFailed
from dense.head import with_pooled
from dense.preprocess import image_files

WRITE_BUDGET_BYTES = 256 * 2**20  # tokens handed to the writer threads, not yet written (at least one entry)
WRITE_THREADS = 2


def folder_items(image_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """Every image of a user's folder (:func:`dense.preprocess.image_files`, the one rule) as ``(relative posix
    path, path)``, sorted: the relative path is the image's key in the cache."""
    return sorted(image_files(image_dir).items())


def dataset_items(dataset, split: str | None = None) -> list[tuple[str, Path]]:
    """``(key, image path)`` for a :class:`~dense.coco.CocoDataset` (key = image id) or
    :class:`~dense.coco.SegFolder` (key = stem); the probe trainer reads the cache with the same keys."""
    return [(str(i), dataset.image_path(i)) for i in dataset.ids(split)]


@dataclass
class ExtractReport:
    """What a fill did (one process's share, or every rank's summed by :func:`fill_cache`).
    ``skipped``: unreadable images (``on_error='skip'``), one line each."""

    total: int = 0  # keys asked for
    extracted: int = 0
    cached: int = 0  # already valid on disk
    corrupt: int = 0  # found damaged, extracted again
    skipped: list[str] = field(default_factory=list)
    ranks: int = 1  # processes that shared the work
    extracted_per_rank: list[int] = field(default_factory=list)  # fill_cache: each rank's share of ``extracted``
    rank: int = 0  # the process that returned it (fill_cache: every rank returns the total; print it on rank 0)
    cache: str | None = None  # fill_cache: the folder the entries are in
    spec: dict | None = None  # fill_cache: the cache's spec

    @staticmethod
    def sum(reports: Sequence[ExtractReport]) -> ExtractReport:
        return ExtractReport(total=sum(r.total for r in reports), extracted=sum(r.extracted for r in reports),
                             cached=sum(r.cached for r in reports), corrupt=sum(r.corrupt for r in reports),
                             skipped=[s for r in reports for s in r.skipped], ranks=len(reports),
                             extracted_per_rank=[r.extracted for r in reports])


class _Writers:
    """Cache entries written by a bounded pool of threads: at most ``budget`` bytes of tokens wait (the caller blocks
    past that); the first failure is raised in the caller's thread, naming the image, and stops the rest.
    Each write stays atomic (:meth:`FeatureCache.put`): a failed one leaves no file."""

    def __init__(self, cache: FeatureCache, threads: int = WRITE_THREADS, budget: int = WRITE_BUDGET_BYTES):
        self.cache, self.budget = cache, budget
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="dense-write")
        self.cond = threading.Condition()
        self.waiting = 0  # bytes handed over, not yet written
        self.error: tuple[str, object, BaseException] | None = None

    def put(self, key: str, image, fmap) -> None:
        n = fmap.tokens.nbytes
        with self.cond:
            while self.waiting and self.waiting + n > self.budget and self.error is None:
                self.cond.wait()
            self.raise_error()
            self.waiting += n
        self.pool.submit(self._write, key, image, fmap, n)

    def _write(self, key, image, fmap, n) -> None:
        try:
            if self.error is None:
                self.cache.put(key, fmap)
        except BaseException as e:  # handed to the caller's thread
            with self.cond:
                self.error = self.error or (key, image, e)
        finally:
            with self.cond:
                self.waiting -= n
                self.cond.notify_all()

    def raise_error(self) -> None:
        if self.error is not None:
            key, image, e = self.error
            raise CacheWriteError(f"{image}: writing cache entry {key!r} failed: {type(e).__name__}: {e}") from e

    def close(self, *, wait_all: bool) -> None:
        """Wait for the writes handed over (``wait_all``) or only for those running (after an error elsewhere)."""
        self.pool.shutdown(wait=True, cancel_futures=not wait_all)
        if wait_all:  # else an error is already on its way up: do not hide it
            self.raise_error()


def _check_spec(encoder, cache: FeatureCache, max_patches, layers, store_dtype, pooled) -> tuple:
    if store_dtype is None:
        store_dtype = cache.store_dtype
    if pooled is None:
        pooled = bool(cache.spec.get("pooled"))
    if cache.spec != cache_spec(encoder, max_patches=max_patches, layers=layers, store_dtype=store_dtype,
                                pooled=pooled):
        raise InputError(f"cache {cache.dir} is for {cache.spec}, not this encoder/max_patches/layers/storage")
    return store_dtype, pooled


def scan_cache(cache: FeatureCache, items: Sequence[tuple[str, object]]) -> tuple[list, int, int]:
    """``(items whose entry is missing or damaged, how many load, how many were damaged)``; a damaged entry is
    deleted (:meth:`FeatureCache.get`)."""
    todo, cached, corrupt = [], 0, 0
    for key, image in items:
        if key in cache:
            if cache.get(key) is not None:
                cached += 1
                continue
            corrupt += 1
        todo.append((key, image))
    return todo, cached, corrupt


def extract_to_cache(encoder, items: Sequence[tuple[str, object]], cache: FeatureCache, *,
                     max_patches: int | None = None, layers: Sequence[int] = (-1,), batch_size: int = 8,
                     on_error: str = "raise", progress: bool = True, store_dtype: torch.dtype | None = None,
                     pooled: bool | None = None, num_workers: int | None = None, scanned: bool = False,
                     should_stop: Callable[[], bool] | None = None, desc: str = "extract") -> ExtractReport:
    """Fill ``cache`` with the features of ``items`` (``(key, image)`` pairs) in this process, resuming where a
    previous run stopped. Every item is this process's to do: no sharding here (:func:`fill_cache` shares work
    between torchrun's ranks).

    ``on_error='skip'`` reports unreadable images and goes on; ``'raise'`` stops at the first one. ``store_dtype`` /
    ``pooled`` (see :func:`dense.cache.cache_spec`; None: as ``cache``'s spec says) must agree with the cache.
    ``scanned``: ``items`` are known to be missing (skip the scan). ``should_stop``: asked after each batch; True
    stops the work (another rank failed).
    """
    layers = tuple(layers)
    store_dtype, pooled = _check_spec(encoder, cache, max_patches, layers, store_dtype, pooled)
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        raise InputError("duplicate cache keys among the items")
    report = ExtractReport(total=len(items))
    cache.init()
    if scanned:
        todo = list(items)
    else:
        cache.remove_stale_temps()
        todo, report.cached, report.corrupt = scan_cache(cache, items)
    if not todo:
        return report
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
    writers = _Writers(cache)
    ok = False
    try:
        # pooled entries need the last block in float32 for the head; others come in the cache's own dtype
        tokens_dtype = torch.float32 if pooled else (store_dtype or torch.float32)
        for index, fmap in encoder.extract_stream([img for _, img in todo], max_patches=max_patches, layers=layers,
                                                  batch_size=batch_size, on_error=on_error, progress=False,
                                                  num_workers=num_workers, tokens_dtype=tokens_dtype):
            key, image = todo[index]
            if fmap is None:
                report.skipped.append(f"{key}: {image} could not be read")
            else:
                writers.put(key, image, with_pooled(encoder, fmap) if pooled else fmap)
                report.extracted += 1
            del fmap  # the writer holds it now, and lets it go once written
            bar.update(1)
            if should_stop is not None and should_stop():
                break
        ok = True
    finally:
        bar.close()
        writers.close(wait_all=ok)
    return report


# ---------------------------------------------------------------------------------------------------------------------
# The whole job, torchrun included


def fill_cache(encoder, items: Sequence[tuple[str, object]], cache, *, layers: Sequence[int] = (-1,),
               max_patches: int | None = None, batch_size: int = 8, on_error: str = "raise",
               dataset=None, store_dtype: torch.dtype | None = None, pooled: bool | None = None,
               device: str | None = None, dtype=None, compile: bool | str = "auto", distributed: bool | None = None,
               num_workers: int | None = None, progress: bool = True) -> ExtractReport:
    """Fill a feature cache with ``items`` (``(key, image)`` pairs), under torchrun or alone; every rank returns the
    same total report.

    ``encoder``: an :class:`~dense.Encoder`, or a name/folder/hub id loaded here with ``device``/``dtype``/``compile``
    (under torchrun each rank on its own GPU: :func:`dense.distributed.plan_distributed`). ``cache``: a
    :class:`~dense.cache.FeatureCache`, or the root folder of one (opened for this encoder, ``max_patches``,
    ``layers``, ``dataset``, ``store_dtype`` and ``pooled``).

    ``distributed`` (None: when launched by torchrun, ``WORLD_SIZE > 1``): the ranks scan the cache in turns, agree
    on the keys still missing, and each extracts every N-th of THOSE, so a resumed job gives every rank an equal
    share. Reports are gathered over a gloo group whose timeout (:data:`dense.distributed.GROUP_TIMEOUT`) no real
    wait reaches; a rank that fails tells the others, which stop after their current batch and raise
    :class:`RankFailed` naming it.
    """
    from dense.distributed import gather_objects, init_distributed, plan_distributed, single_process

    is_encoder = not isinstance(encoder, (str, os.PathLike))
    want = str(device if device is not None else (encoder.device if is_encoder else "cpu"))
    plan = plan_distributed(want) if distributed or distributed is None else single_process(want)
    if distributed and plan.world_size == 1:
        raise InputError("distributed=True outside a torchrun job (no WORLD_SIZE > 1)")
    group = init_distributed(plan)  # the device first, then the (gloo) group
    rank, world = plan.rank, plan.world_size
    try:
        error, own, missing, counts, run = None, None, [], (0, 0), uuid.uuid4().hex[:12]
        try:
            if not is_encoder:
                from dense.encoder import load_encoder

                encoder = load_encoder(encoder, device=plan.device, dtype=dtype, compile=compile)
            layers = tuple(layers)
            if not isinstance(cache, FeatureCache):
                cache = FeatureCache.for_encoder(cache, encoder, max_patches=max_patches, layers=layers,
                                                 dataset=dataset, store_dtype=store_dtype, pooled=bool(pooled))
            _check_spec(encoder, cache, max_patches, layers, store_dtype, pooled)
            keys = [k for k, _ in items]
            if len(set(keys)) != len(keys):
                raise InputError("duplicate cache keys among the items")
            cache.init()
            if rank == 0:
                cache.remove_stale_temps()
            todo, cached, corrupt = scan_cache(cache, sorted(items, key=lambda kv: kv[0])[rank::world])
            missing, counts = [k for k, _ in todo], (cached, corrupt)
        except Exception as e:
            if world == 1:
                raise
            error, own = f"{type(e).__name__}: {e}", e
        scans = gather_objects((error, missing, counts, run), plan)  # every rank's scan, or its error
        _raise_failed(scans, rank, own)
        run = scans[0][3]  # rank 0's name for this job: its failure marker
        todo_keys = sorted(k for s in scans for k in s[1])[rank::world]  # the MISSING keys, shared in turns
        by_key = dict(items)
        marker = cache.dir / f".fill-{run}.failed"
        report, error = None, None
        try:
            report = extract_to_cache(
                encoder, [(k, by_key[k]) for k in todo_keys], cache, max_patches=max_patches, layers=layers,
                batch_size=batch_size, on_error=on_error, progress=progress, store_dtype=store_dtype, pooled=pooled,
                num_workers=num_workers, scanned=True, desc="extract" if world == 1 else f"extract[{rank}/{world}]",
                should_stop=(lambda: marker.exists()) if world > 1 else None)
        except Exception as e:
            if world == 1:
                raise
            error, own = f"{type(e).__name__}: {e}", e
            marker.write_text(f"rank {rank}: {error}\n")  # the others stop after their current batch
        done = gather_objects((error, report), plan)
        if rank == 0:
            marker.unlink(missing_ok=True)
        _raise_failed(done, rank, own)
        total = ExtractReport.sum([r for _, r in done])
        total.total, total.cached, total.corrupt = len(items), sum(s[2][0] for s in scans), sum(s[2][1] for s in scans)
        total.rank, total.cache, total.spec = rank, str(cache.entries), dict(cache.spec)
        return total
    finally:
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _raise_failed(parts: list, rank: int, own: BaseException | None) -> None:
    """After a gather: the failing rank raises its own error; the others raise :class:`RankFailed` naming the first
    rank that failed (one line)."""
    if own is not None:
        raise own
    for r, part in enumerate(parts):
        if part[0] is not None:
            raise RankFailed(f"rank {r} of {len(parts)} failed: {part[0]}")
