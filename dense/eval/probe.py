"""Linear-probe segmentation: the whole protocol as one keyword function, and the scoring of probes at the original
image resolution.

    >>> from dense.eval.data import open_data
    >>> from dense.eval.probe import evaluate_linear_probe
    >>> from dense.eval.settings import ProbeSplits
    >>> data = open_data(ann="shapes/annotations.json", images="shapes/images")
    >>> res = evaluate_linear_probe("shapes-tiny-v2", data, cache="cache", splits=ProbeSplits(test="test"))
    >>> res.figures["mIoU"], res.meta["best"]          # test mIoU of the head chosen on val, and its key
    >>> res.artifacts["probe"].save("probe.safetensors")

:func:`evaluate_linear_probe` is DINOv2's ``run_eval_linear`` for dense tokens: check every input, extract the
features into the cache (resumable), train every head of the sweep in one pass over them (:func:`probes.train_probes`),
choose the best on the val split (or a seeded holdout of the training split), and score the test split once with
the chosen head. :func:`evaluate_saved_probe` scores a saved probe on one split. ``dense probe train``, ``dense eval
probe`` and ``dense probe test`` are these two functions; the notebooks call them too.

Scoring (:func:`evaluate_probes`) gives one confusion matrix per probe over a split, plus boundary F-score and trimap
mIoU (where label maps are blocky, mIoU alone hides it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dense.errors import InputError
from dense.eval import Result
from dense.eval.settings import (
    LRS,
    POOLED,
    STORE_DTYPES,
    Extraction,
    ProbeSplits,
    ProbeTraining,
    Sharpening,
    figure_name,
)


def evaluate_probes(probes: Mapping[str, object], samples: Sequence, *, sharpen: str = "bilinear",
                    upsampler=None, images: Mapping[str, object] | None = None, calibration=None,
                    boundary: bool = True,
                    progress: bool = False) -> dict[str, Result]:
    """One :class:`~dense.eval.Result` per probe key, in one pass over ``samples`` (:func:`probes.score.score_probes`).

    ``probes``: e.g. :class:`probes.LinearProbe` objects by key. ``samples``: objects with ``key``, ``fmap`` and
    ``label`` (:class:`probes.Sample`, or streamed ones from :func:`probes.load_samples`). ``sharpen="guided"`` or an
    ``upsampler`` needs ``images``: each sample's image (path or uint8 array) under its key.

    Figures: ``mIoU``, ``pixel_acc``, ``mean_acc``, ``IoU/<class>`` and, with ``boundary``, ``bF``, ``trimap_mIoU``,
    ``bF/<class>``; rows: one per image.
    """
    from probes.score import score_probes

    scored = score_probes(probes, samples, sharpen=sharpen, upsampler=upsampler, images=images,
                          calibration=calibration, boundary=boundary,
                          progress=progress)
    meta = {"images": len(samples), "sharpen": sharpen, "upsampler": upsampler is not None}
    return {k: Result(figures=figs, rows=rows, meta=dict(meta)) for k, (figs, rows) in scored.items()}


def evaluate_probe(probe, samples: Sequence, **kwargs) -> Result:
    """One probe on ``samples`` (see :func:`evaluate_probes` for the options)."""
    return evaluate_probes({"probe": probe}, samples, **kwargs)["probe"]


def _open(data, split):
    data.check(split)  # label files' channels, bit depth and size, from headers: before the model
    return data.open(split)


def _store_dtype(name: str, what: str):
    import torch

    if name not in STORE_DTYPES:
        raise InputError(f"{what} must be one of {', '.join(STORE_DTYPES)}, got {name!r}")
    return getattr(torch, STORE_DTYPES[name])


def _encoder(encoder, device, dtype):
    if isinstance(encoder, (str, Path)):
        from dense.encoder import load_encoder

        return load_encoder(encoder, **{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
    return encoder


def _fill(encoder, cache, opened: dict, *, max_patches, layers, batch_size, extract, on_error, progress,
          data=None) -> tuple:
    """Extract what the cache misses for each split; ``({split: samples}, {key: image path}, [skipped])``.

    Entries the same image files already have in the cache under a folder (``dense extract --images DIR``, whatever
    folder above the images was named) are used, not extracted again (:func:`adopt_folder_entries`). With
    ``extract=False`` a missing entry raises naming the image and the command that fills the cache."""
    from dense.extract import dataset_items, extract_to_cache
    from probes import load_samples

    samples, paths, skipped = {}, {}, []
    for split, (ds, sub) in opened.items():
        items = dataset_items(ds, sub)
        ds_cache = cache.for_dataset(ds)
        adopt_folder_entries(ds_cache, items)
        if extract:
            rep = extract_to_cache(encoder, items, ds_cache, max_patches=max_patches, layers=layers,
                                   batch_size=batch_size, on_error=on_error, progress=progress)
            skipped += [f"{split}: {s}" for s in rep.skipped]
        else:
            missing = [(k, p) for k, p in items if k not in ds_cache]
            if missing:
                from dense.errors import MissingEntryError

                fill = _extract_command(encoder, ds, sub, cache, max_patches, layers, data)
                raise MissingEntryError(f"{missing[0][1]} (image id {missing[0][0]}) and {len(missing) - 1} other "
                                        f"image(s) of split {split!r} are not in the cache {cache.dir}: fill it with "
                                        f"`{fill}` (or drop --no-extract)")
        samples[split] = load_samples(ds, ds_cache, sub, progress=progress)
        paths.update(items)
    return samples, paths, skipped


def adopt_folder_entries(cache, items) -> int:
    """Make ``cache`` (one dataset's part of a feature cache) hold the entries its images already have under a
    FOLDER's part of the same cache: ``dense extract --images DIR`` keys each image by its path relative to ``DIR``
    in ``DIR``'s part (:func:`dense.cache.dataset_namespace`), a dataset by its image id in its own part, so the
    same file would otherwise be extracted twice. Every folder above each image is looked at; an entry found is
    hard-linked (copied where links fail, atomically) under the dataset's key. Returns how many were adopted."""
    import os

    from dense._atomic import write_bytes
    from dense.cache import FeatureCache, dataset_namespace

    n, parts = 0, {}
    for key, image in items:
        if key in cache:
            continue
        path = Path(image).resolve()
        for folder in path.parents:
            if folder not in parts:
                parts[folder] = FeatureCache(cache.root, cache.spec, dataset_namespace(folder))
            src = parts[folder].path(path.relative_to(folder).as_posix())
            if src.is_file():
                dst = cache.path(key)
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except FileExistsError:
                    pass
                except OSError:
                    write_bytes(dst, src.read_bytes())
                n += 1
                break
    return n


def _extract_command(encoder, ds, sub, cache, max_patches, layers, data=None) -> str:
    """The ``dense extract`` line that fills ``cache`` for split ``sub`` of ``ds``."""
    import shlex

    if getattr(ds, "source", None) is not None and getattr(ds, "image_dir", None) is not None:
        where = ["--ann", str(ds.source), "--images", str(ds.image_dir)]
    else:
        where = ["--dataset", getattr(data, "name", None) or "NAME", "--root", str(getattr(ds, "root", "ROOT"))]
    line = ["dense", "extract", "--model", str(encoder.name), *where, "--cache", str(cache.root)]
    if sub:
        line += ["--split", str(sub)]
    if max_patches is not None:
        line += ["--max-patches", str(max_patches)]
    if tuple(layers) != (-1,):
        line += ["--layers", ",".join(str(b) for b in layers)]
    return shlex.join(line)


def _upsampler(upsampler, encoder):
    if upsampler is None or not isinstance(upsampler, (str, Path)):
        return upsampler
    from dense.upsample import Upsampler

    return Upsampler.load(upsampler, encoder=encoder)


@dataclass(frozen=True)
class _Labelled:
    """A test image scored without cached features: its key, its image and (read when asked) its label map."""

    key: str
    image: object
    dataset: object
    image_id: object

    @property
    def label(self):
        return self.dataset.label_map(self.image_id)  # [H, W], read once per scoring pass


def _evaluate_slide(encoder, probe, ds, sub, slide: dict, *, progress: bool) -> Result:
    """``probe`` on split ``sub`` of ``ds`` with sliding windows (:func:`dense.tiling.predict_slide` with ``slide``)."""
    from dense.tiling import predict_slide
    from probes.score import score_probes

    items = [_Labelled(str(i), ds.image_path(i), ds, i) for i in ds.ids(sub)]

    def predict(p, s, size_hw):
        return predict_slide(encoder, p, s.image, size_hw=size_hw, **slide)  # int32 [H, W]

    figures, rows = score_probes({"probe": probe}, items, predict=predict, progress=progress)["probe"]
    return Result(figures=figures, rows=rows, meta={"images": len(items), "evaluation": "slide", **slide})


def evaluate_linear_probe(encoder, data, *, cache: str | Path, splits: ProbeSplits | None = None,
                          extraction: Extraction | None = None, training: ProbeTraining | None = None,
                          sharpening: Sharpening | None = None, preset: str | None = None, device: str | None = None,
                          dtype: str | None = None, progress: bool = False) -> Result:
    """The linear-probe protocol: extract (cached), sweep every head in one pass, choose on val, report test once.

    ``data``: a :class:`dense.eval.data.Data` (:func:`~dense.eval.data.open_data`: COCO file(s) + images, a
    :mod:`dense.segdata` name + root) or a dataset object / ``{split: dataset}``. ``encoder``: an
    :class:`~dense.encoder.Encoder` or a name for :func:`dense.load_encoder` (with ``device``, ``dtype``).

    Settings (:mod:`dense.eval.settings`): ``splits`` (:class:`ProbeSplits`: train, val, test, or a seeded holdout
    of train to choose on), ``extraction`` (:class:`Extraction`: token budget, blocks, batch, cache dtype, resume,
    bad input), ``training`` (:class:`ProbeTraining`: the sweep; one head per learning rate x layer set x pooled;
    ``protocol`` sets the layers), ``sharpening`` (:class:`Sharpening`: how test predictions reach the image's
    pixels). ``preset`` (:data:`probes.protocols.PRESETS`) fixes the blocks, layer sets, pooled heads, token budget
    and evaluation; setting any of those explicitly beside it is an error (an explicit default too).

    Every split, file and option is checked before the first image is read or the model is loaded.

    Returns a :class:`~dense.eval.Result`: ``figures`` are the reported split's (the test split, else the chosen
    head's val figures): ``mIoU``, ``pixel_acc``, ``mean_acc``, ``IoU/<class>`` (+ ``bF``, ``trimap_mIoU`` on test),
    and ``val/mIoU``, ``val/pixel_acc`` of the chosen head; ``rows``: the test images; ``meta``: ``sweep`` (val
    figures of every head, by head key), ``best`` (the chosen head's key), ``lr_at_grid_edge``, ``splits`` (images
    per split), ``protocol`` (train / choose / report splits, ``holdout``), ``encoder`` (the cache's spec),
    ``config``, ``class_names``, ``history`` and seconds. ``artifacts``: ``probe`` (the chosen
    :class:`probes.LinearProbe`; ``.save(path)`` writes it); ``values``: ``{probes.train.Head: val figures}``, the
    sweep keyed by its settings.
    """
    from dense.eval.data import check_cache_root, open_data

    t0 = time.perf_counter()
    splits = splits or ProbeSplits()
    extraction = extraction or Extraction()
    training = training or ProbeTraining()
    sharpening = sharpening or Sharpening()
    chosen_preset = None
    if preset is not None:
        from probes.protocols import preset as preset_of

        chosen_preset = preset_of(preset)  # an unknown name fails here, before anything is read
        fixed = {"protocol": training.protocol is not None, "layers": extraction.layers is not None,
                 "pooled": training.pooled is not None, "layer_sets": training.layer_sets is not None,
                 "max_patches": extraction.max_patches is not None, "sharpen": sharpening.is_set}
        clash = [k for k, given in fixed.items() if given]  # what the user set, not what differs from a default
        if clash:
            raise InputError(f"preset {preset!r} fixes {', '.join(clash)}; leave them out (what it fixes: "
                             f"probes.protocols.preset({preset!r}).describe())")
    upsampler = sharpening.upsampler
    if upsampler is not None and isinstance(upsampler, (str, Path)) and not Path(upsampler).is_file():
        raise FileNotFoundError(2, "upsampler file (upsampler=, --upsampler): no such file", str(upsampler))
    check_cache_root(cache)
    data = open_data(data, on_error=extraction.on_error)
    train_split = splits.train
    if train_split is None:
        from dense.segdata import PROTOCOLS

        train_split = PROTOCOLS[data.name][0] if data.name in PROTOCOLS else "train"
    holdout, test_split = splits.holdout, splits.test
    fit, choose = ("fit", "holdout") if holdout else (train_split, splits.val)
    if test_split is not None and test_split in (train_split, choose):
        raise InputError(f"the reported split {test_split!r} must not be the one trained on or chosen on")
    if fit == choose:  # a choice on the training split: its "val" figures are training figures
        logging.getLogger("dense").warning(
            "dense: heads are chosen on %r, the split they are trained on, so the choice and its figures are training "
            "figures; choose on another split (val=, --val-split) or a holdout (holdout=, --holdout)", fit)
    if holdout:
        from dense.segdata import with_holdout

        ds, sub = _open(data, train_split)
        carved = with_holdout(ds, sub, holdout, splits.holdout_seed)
        opened = {fit: (carved, fit), choose: (carved, choose)}
    else:
        opened = {fit: _open(data, fit), choose: _open(data, choose)}
    if test_split is not None:
        opened[test_split] = _open(data, test_split)
    class_names = list(opened[fit][0].class_names)
    for split, (ds, _) in opened.items():
        if list(ds.class_names) != class_names:
            raise InputError(f"split {split!r} has classes {list(ds.class_names)[:5]}..., split {fit!r} has "
                             f"{class_names[:5]}...")

    import torch

    from dense.preprocess import exif_tagged
    from dense.segdata import split_list
    from probes import ProbeConfig, train_probes
    from probes.protocols import protocol as protocol_of

    encoder = _encoder(encoder, device, dtype)
    proto = protocol_of(training.protocol, num_layers=encoder.num_layers, k=training.last_k) \
        if training.protocol else None
    heads_pooled = POOLED[training.pooled or "off"]
    layers, layer_sets, max_patches = extraction.blocks, training.layer_sets, extraction.max_patches
    slide = None
    if chosen_preset is not None:
        settings = chosen_preset.settings(patch_size=encoder.patch_size, num_layers=encoder.num_layers)
        proto = chosen_preset.protocol(encoder.num_layers)
        max_patches, slide = settings["max_patches"], settings["slide"]
    if proto:
        layers, layer_sets = proto.layers, proto.layer_sets
        heads_pooled = proto.pooled if training.pooled is None else heads_pooled
    from dense.cache import FeatureCache

    stored = _store_dtype(extraction.store_dtype, "store_dtype")
    cache_ = FeatureCache.for_encoder(cache, encoder, max_patches=max_patches, layers=tuple(layers),
                                      store_dtype=None if stored == torch.float32 else stored,
                                      pooled=any(heads_pooled))
    upsampler = _upsampler(upsampler, encoder)
    by_window = {test_split: opened[test_split]} if slide and test_split is not None else {}
    samples, paths, skipped = _fill(encoder, cache_, {s: v for s, v in opened.items() if s not in by_window},
                                    max_patches=max_patches, layers=tuple(layers), batch_size=extraction.batch_size,
                                    extract=extraction.extract, on_error=extraction.on_error, progress=progress,
                                    data=data)
    cfg = ProbeConfig(lrs=training.lrs, layer_sets=None if layer_sets is None else tuple(tuple(s) for s in layer_sets),
                      epochs=training.epochs, batch_size=training.train_batch_size, label_scale=training.label_scale,
                      weight_decay=training.weight_decay, seed=training.seed,
                      feature_dtype=STORE_DTYPES[training.feature_dtype], pooled=tuple(heads_pooled))
    sweep = train_probes(samples[fit], samples[choose], class_names, cfg, progress=progress)
    best = sweep.best
    val = sweep.val[sweep.best_key]
    figures, rows = dict(val), []
    if test_split is not None:
        if slide:  # the preset's windows, each encoded on its own: no cached features
            test = _evaluate_slide(encoder, best, *by_window[test_split], slide, progress=progress)
            samples[test_split] = test.rows
        else:
            test = evaluate_probe(best, samples[test_split], sharpen=sharpening.mode, upsampler=upsampler,
                                  images=paths, calibration=encoder.calibration, progress=progress)
        figures, rows = dict(test.figures), test.rows
        best.meta["test"] = {k: v for k, v in figures.items() if not k.startswith(("IoU/", "bF/"))}
    figures.update({figure_name("val", k): val[k] for k in ("mIoU", "pixel_acc") if k in val})
    held = getattr(opened[fit][0], "holdout", None) if holdout else None
    if held:
        best.meta["holdout"] = held
    meta = {"task": "probe", "data": data.what, "dataset": data.name, "encoder": cache_.spec,
            "class_names": class_names, "config": best.meta["config"],
            "splits": {s: len(v) for s, v in samples.items()},
            "protocol": {"train": fit, "choose": choose, "report": test_split, "holdout": held,
                         "chosen_on_training_split": fit == choose,
                         "holdout_from": train_split if holdout else None},
            "reported": test_split or choose, "best": sweep.best_key, "lr_at_grid_edge": sweep.lr_at_grid_edge,
            "sweep": sweep.val, "history": sweep.history, "sharpen": sharpening.mode,
            "upsampler": upsampler is not None, "skipped": skipped, "train_seconds": sweep.seconds,
            "seconds": time.perf_counter() - t0,
            "exif_tagged": {s: exif_tagged(ds, ds.ids(sub)) for s, (ds, sub) in opened.items()},
            "split_lists": {s: split_list(ds, sub) for s, (ds, sub) in opened.items()},
            "preset": None if chosen_preset is None else {
                "name": chosen_preset.name, "max_patches": max_patches, "slide": slide,
                "lines": chosen_preset.describe(patch_size=encoder.patch_size, num_layers=encoder.num_layers)}}
    heads = {sweep.heads[k]: v for k, v in sweep.val.items()} if getattr(sweep, "heads", None) else {}
    return Result(figures=figures, rows=rows, meta=meta, artifacts={"probe": best}, values=heads)


def evaluate_saved_probe(encoder, data, *, probe, cache: str | Path, split: str = "test",
                         extraction: Extraction | None = None, sharpening: Sharpening | None = None,
                         device: str | None = None, dtype: str | None = None, progress: bool = False) -> Result:
    """Score a saved probe on one split at the original resolution (extracting missing features into the cache).

    ``probe``: a :class:`probes.LinearProbe` or its file. ``encoder``, ``data``, ``extraction`` and ``sharpening``:
    as :func:`evaluate_linear_probe`. The cache is read at the probe's layers, pooled embedding, stored dtype and
    (unless ``extraction.max_patches`` is given) token budget: those it was trained from (``extraction.layers`` and
    ``store_dtype`` are the probe's, whatever is given). A probe of another encoder, or of other classes, is
    refused before any image is read. Figures: as :func:`evaluate_probes`; ``meta``: split, images, the probe's key
    and file, the encoder spec.
    """
    from dense.eval.data import check_cache_root, open_data
    from probes import LinearProbe

    extraction = extraction or Extraction()
    sharpening = sharpening or Sharpening()
    path = None
    if isinstance(probe, (str, Path)):
        path = str(probe)
        probe = LinearProbe.load(probe)
    check_cache_root(cache)
    data = open_data(data, on_error=extraction.on_error)
    opened = {split: _open(data, split)}
    ds = opened[split][0]
    if list(ds.class_names) != probe.class_names:
        raise InputError(f"{path or 'the probe'}: trained on classes {probe.class_names[:5]}..., the dataset has "
                         f"{list(ds.class_names)[:5]}...")
    import torch

    from dense.cache import FeatureCache
    from dense.errors import MismatchError
    from dense.preprocess import exif_tagged
    from dense.segdata import split_list

    encoder = _encoder(encoder, device, dtype)
    spec = probe.encoder_spec
    max_patches = spec.get("max_patches") if extraction.max_patches is None else extraction.max_patches
    layers = tuple(spec.get("layers", probe.layers))
    stored = _store_dtype(spec.get("store_dtype", "float32"), "the probe's store_dtype")
    cache_ = FeatureCache.for_encoder(cache, encoder, max_patches=max_patches, layers=layers,
                                      store_dtype=None if stored == torch.float32 else stored, pooled=probe.pooled)
    try:  # a probe of another encoder: refused before any extraction
        probe.check(cache_.spec)
    except MismatchError as e:
        raise MismatchError(f"{path or 'the probe'}: {e}") from None
    upsampler = _upsampler(sharpening.upsampler, encoder)
    samples, paths, skipped = _fill(encoder, cache_, opened, max_patches=max_patches, layers=layers,
                                    batch_size=extraction.batch_size, extract=extraction.extract,
                                    on_error=extraction.on_error, progress=progress, data=data)
    res = evaluate_probe(probe, samples[split], sharpen=sharpening.mode, upsampler=upsampler, images=paths,
                         calibration=encoder.calibration, progress=progress)
    res.meta.update({"task": "probe-test", "probe": path, "key": probe.meta.get("key"), "data": data.what,
                     "split": split, "encoder": cache_.spec, "skipped": skipped,
                     "exif_tagged": {split: exif_tagged(ds, ds.ids(opened[split][1]))},
                     "split_lists": {split: split_list(ds, opened[split][1])}})
    return res


__all__ = ["evaluate_linear_probe", "evaluate_saved_probe", "evaluate_probes", "evaluate_probe", "LRS", "POOLED"]
