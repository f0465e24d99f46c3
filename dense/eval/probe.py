"""Linear-probe segmentation: the whole protocol as one keyword function, and the scoring of probes at the original
image resolution.

    >>> from dense.eval.probe import evaluate_linear_probe
    >>> res = evaluate_linear_probe("shapes-tiny-v2", ann="shapes/annotations.json", images="shapes/images",
    ...                             cache="cache", test_split="test")
    >>> res.figures["mIoU"], res.meta["best"]          # test mIoU of the head chosen on val, and its key
    >>> res.artifacts["probe"].save("probe.safetensors")

:func:`evaluate_linear_probe` is DINOv2's ``run_eval_linear`` for dense tokens: check every input, extract the
features into the cache (resumable), train every head of the sweep in one pass over them (:func:`probes.train_probes`),
choose the best on the val split (or a seeded holdout of the training split), and score the test split once with
the chosen head. :func:`evaluate_saved_probe` scores a saved probe on one split. ``dense probe train``, ``dense eval
probe`` and ``dense probe eval`` are these two functions; the notebooks call them too.

Scoring (:func:`evaluate_probes`) gives one confusion matrix per probe over a split, plus boundary F-score and trimap
mIoU (where label maps are blocky, mIoU alone hides it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dense.errors import InputError
from dense.eval import Result

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
POOLED = {"off": (False,), "on": (True,), "both": (False, True)}  # heads without / with the pooled embedding (TIPS)
STORE_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


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


def _data(dataset, ann, images, root, on_error):
    from dense.eval.data import open_data

    if dataset is None and ann is None:
        raise InputError("give the data one way: dataset= (a dataset, {split: dataset} or a dense.segdata name "
                         "with root=), or ann= (COCO instances file(s), --ann) with images= (--images)")
    return open_data(dataset, ann=ann, images=images, root=root, on_error=on_error)


def _open(data, split):
    data.check(split)  # label files' channels, bit depth and size, from headers: before the model
    return data.open(split)


def _store_dtype(name: str, what: str):
    import torch

    if name not in STORE_DTYPES:
        raise InputError(f"{what} must be one of {', '.join(STORE_DTYPES)}, got {name!r}")
    return getattr(torch, STORE_DTYPES[name])


def _check_options(*, lrs, epochs, train_batch_size, batch_size, label_scale, max_patches, holdout, pooled,
                   sharpen, on_error, feature_dtype, store_dtype) -> None:
    from dense.preprocess import check_max_patches  # (imports torch: here, lazily)
    from dense.upsample import SHARPEN_MODES  # how predictions reach the image's pixels

    if not lrs or any(not lr > 0 for lr in lrs):
        raise InputError(f"lrs must be positive learning rates, got {list(lrs)}")
    for name, v in (("epochs", epochs), ("train_batch_size", train_batch_size), ("batch_size", batch_size),
                    ("label_scale", label_scale)):
        if int(v) < 1:
            raise InputError(f"{name} must be at least 1, got {v}")
    check_max_patches(max_patches)
    if holdout is not None and not 0 < holdout < 1:
        raise InputError(f"holdout must be a fraction in (0, 1), got {holdout}")
    if pooled not in POOLED:
        raise InputError(f"pooled must be one of {', '.join(POOLED)}, got {pooled!r}")
    if sharpen not in SHARPEN_MODES:
        raise InputError(f"sharpen must be one of {', '.join(SHARPEN_MODES)}, got {sharpen!r}")
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    _store_dtype(feature_dtype, "feature_dtype")
    _store_dtype(store_dtype, "store_dtype")


def _encoder(encoder, device, dtype):
    if isinstance(encoder, (str, Path)):
        from dense.encoder import load_encoder

        return load_encoder(encoder, **{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
    return encoder


def _fill(encoder, cache, opened: dict, *, max_patches, layers, batch_size, extract, on_error, progress) -> tuple:
    """Extract what the cache misses for each split; ``({split: samples}, {key: image path}, [skipped])``."""
    from dense.extract import dataset_items, extract_to_cache
    from probes import load_samples

    samples, paths, skipped = {}, {}, []
    for split, (ds, sub) in opened.items():
        items = dataset_items(ds, sub)
        ds_cache = cache.for_dataset(ds)
        if extract:
            rep = extract_to_cache(encoder, items, ds_cache, max_patches=max_patches, layers=layers,
                                   batch_size=batch_size, on_error=on_error, progress=progress)
            skipped += [f"{split}: {s}" for s in rep.skipped]
        samples[split] = load_samples(ds, ds_cache, sub, progress=progress)
        paths.update(items)
    return samples, paths, skipped


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


def evaluate_linear_probe(encoder, *, cache: str | Path, dataset=None, ann=None, images=None, root=None,
                          train_split: str | None = None, val_split: str = "val", test_split: str | None = None,
                          holdout: float | None = None, holdout_seed: int = 0,
                          layers: Sequence[int] = (-1,), layer_sets: Sequence[Sequence[int]] | None = None,
                          protocol: str | None = None, last_k: int = 4, pooled: str = "off",
                          lrs: Sequence[float] = LRS, epochs: int = 10, train_batch_size: int = 16,
                          label_scale: int = 1, weight_decay: float = 0.0, feature_dtype: str = "float32",
                          seed: int = 0, store_dtype: str = "float32", max_patches: int | None = None,
                          batch_size: int = 8, extract: bool = True, on_error: str = "raise",
                          sharpen: str = "bilinear", upsampler=None, preset: str | None = None,
                          device: str | None = None, dtype: str | None = None, progress: bool = False) -> Result:
    """The linear-probe protocol: extract (cached), sweep every head in one pass, choose on val, report test once.

    Data (one way): ``dataset`` (a dataset object of :mod:`dense.coco` / :mod:`dense.segdata`, a ``{split:
    dataset}`` mapping, or a :mod:`dense.segdata` name with ``root``), or ``ann`` + ``images`` (a COCO instances
    file whose images carry a ``split`` field, or ``{split: file}`` / ``{split: folder}``). ``encoder``: an
    :class:`~dense.encoder.Encoder` or a name for :func:`dense.load_encoder` (with ``device``, ``dtype``).

    Splits: heads train on ``train_split`` (None: ``"train"``, or a named dataset's training split of
    :data:`dense.segdata.PROTOCOLS`) and are chosen on ``val_split``; with ``holdout`` (a fraction) they train on
    the rest of ``train_split`` (split ``fit``) and are chosen on a seeded ``holdout`` of it (``holdout_seed``).
    ``test_split`` (None: none) is scored once with the chosen head and must differ from both.

    Sweep (:class:`probes.ProbeConfig`): one head per learning rate of ``lrs`` x layer set of ``layer_sets`` (None:
    all of ``layers``, the blocks extracted) x ``pooled`` (``"off"``, ``"on"``, ``"both"``: heads with the pooled
    embedding concatenated to every token); ``protocol`` (:mod:`probes.protocols`: ``last``, ``last-k`` with
    ``last_k`` blocks, ``best-block``, ``pooled``, ``all``) sets ``layers``, ``layer_sets`` and ``pooled`` instead.
    ``train_batch_size`` images per step; ``batch_size`` images per extraction pass. ``store_dtype`` (``float32`` /
    ``bfloat16``, or ``fp32`` / ``bf16``): the tokens in the cache; ``feature_dtype``: in-memory training tokens.
    ``sharpen`` (``bilinear``, ``guided``) and ``upsampler`` (a :class:`dense.upsample.Upsampler` or its file):
    how test predictions reach the image's pixels. ``extract=False`` requires every feature in the cache.
    ``on_error="skip"`` drops bad annotations and unreadable images (listed in ``meta["skipped"]``).

    Every split, file and option is checked before the first image is read or the model is loaded.

    Returns a :class:`~dense.eval.Result`: ``figures`` are the reported split's (``test_split``, else the chosen
    head's val figures): ``mIoU``, ``pixel_acc``, ``mean_acc``, ``IoU/<class>`` (+ ``bF``, ``trimap_mIoU`` on test),
    and ``val/mIoU``, ``val/pixel_acc`` of the chosen head; ``rows``: the test images; ``meta``: ``sweep`` (val
    figures of every head), ``best`` (the chosen head's key), ``lr_at_grid_edge``, ``splits`` (images per split),
    ``protocol`` (train / choose / report splits, ``holdout``), ``encoder`` (the cache's spec), ``config``,
    ``class_names``, ``history`` and seconds. The chosen probe is ``result.artifacts["probe"]`` (a
    :class:`probes.LinearProbe`; ``.save(path)`` writes it).
    """
    t0 = time.perf_counter()
    chosen_preset = None
    if preset is not None:
        from probes.protocols import preset as preset_of

        chosen_preset = preset_of(preset)  # an unknown name fails here, before anything is read
        fixed = {"protocol": protocol is not None, "layers": tuple(layers) != (-1,), "pooled": pooled != "off",
                 "layer_sets": layer_sets is not None, "max_patches": max_patches is not None,
                 "sharpen": sharpen != "bilinear" or upsampler is not None}
        clash = [k for k, given in fixed.items() if given]
        if clash:
            raise InputError(f"preset {preset!r} fixes {', '.join(clash)}; leave them out (what it fixes: "
                             f"probes.protocols.preset({preset!r}).describe())")
    lrs = tuple(float(v) for v in lrs)
    _check_options(lrs=lrs, epochs=epochs, train_batch_size=train_batch_size, batch_size=batch_size,
                   label_scale=label_scale, max_patches=max_patches, holdout=holdout, pooled=pooled,
                   sharpen=sharpen, on_error=on_error, feature_dtype=feature_dtype, store_dtype=store_dtype)
    if upsampler is not None and isinstance(upsampler, (str, Path)) and not Path(upsampler).is_file():
        raise FileNotFoundError(2, "upsampler file, upsampler= (--upsampler): no such file", str(upsampler))
    data = _data(dataset, ann, images, root, on_error)
    if train_split is None:
        from dense.segdata import PROTOCOLS

        train_split = PROTOCOLS[data.name][0] if data.name in PROTOCOLS else "train"
    fit, choose = ("fit", "holdout") if holdout else (train_split, val_split)
    if test_split is not None and test_split in (train_split, choose):
        raise InputError(f"the reported split {test_split!r} must not be the one trained on or chosen on")
    opened = {}
    if holdout:
        from dense.segdata import with_holdout

        ds, sub = _open(data, train_split)
        carved = with_holdout(ds, sub, holdout, holdout_seed)
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
    proto = protocol_of(protocol, num_layers=encoder.num_layers, k=last_k) if protocol else None
    heads_pooled = POOLED[pooled]
    slide = None
    if chosen_preset is not None:
        settings = chosen_preset.settings(patch_size=encoder.patch_size, num_layers=encoder.num_layers)
        proto = chosen_preset.protocol(encoder.num_layers)
        max_patches, slide = settings["max_patches"], settings["slide"]
    if proto:
        layers, layer_sets = proto.layers, proto.layer_sets
        heads_pooled = proto.pooled if pooled == "off" else heads_pooled
    from dense.cache import FeatureCache

    stored = _store_dtype(store_dtype, "store_dtype")
    cache_ = FeatureCache.for_encoder(cache, encoder, max_patches=max_patches, layers=tuple(layers),
                                      store_dtype=None if stored == torch.float32 else stored,
                                      pooled=any(heads_pooled))
    upsampler = _upsampler(upsampler, encoder)
    by_window = {test_split: opened[test_split]} if slide and test_split is not None else {}
    samples, paths, skipped = _fill(encoder, cache_, {s: v for s, v in opened.items() if s not in by_window},
                                    max_patches=max_patches, layers=tuple(layers), batch_size=batch_size,
                                    extract=extract, on_error=on_error, progress=progress)
    cfg = ProbeConfig(lrs=lrs, layer_sets=None if layer_sets is None else tuple(tuple(s) for s in layer_sets),
                      epochs=epochs, batch_size=train_batch_size, label_scale=label_scale, weight_decay=weight_decay,
                      seed=seed, feature_dtype=STORE_DTYPES[feature_dtype], pooled=tuple(heads_pooled))
    sweep = train_probes(samples[fit], samples[choose], class_names, cfg, progress=progress)
    best = sweep.best
    val = sweep.val[sweep.best_key]
    figures, rows = dict(val), []
    if test_split is not None:
        if slide:  # the preset's windows, each encoded on its own: no cached features
            test = _evaluate_slide(encoder, best, *by_window[test_split], slide, progress=progress)
            samples[test_split] = test.rows
        else:
            test = evaluate_probe(best, samples[test_split], sharpen=sharpen, upsampler=upsampler, images=paths,
                                  calibration=encoder.calibration, progress=progress)
        figures, rows = dict(test.figures), test.rows
        best.meta["test"] = {k: v for k, v in figures.items() if not k.startswith(("IoU/", "bF/"))}
    figures.update({f"val/{k}": val[k] for k in ("mIoU", "pixel_acc") if k in val})
    held = getattr(opened[fit][0], "holdout", None) if holdout else None
    if held:
        best.meta["holdout"] = held
    meta = {"task": "probe", "data": data.what, "dataset": data.name, "encoder": cache_.spec,
            "class_names": class_names, "config": best.meta["config"],
            "splits": {s: len(v) for s, v in samples.items()},
            "protocol": {"train": fit, "choose": choose, "report": test_split, "holdout": held,
                         "holdout_from": train_split if holdout else None},
            "reported": test_split or choose, "best": sweep.best_key, "lr_at_grid_edge": sweep.lr_at_grid_edge,
            "sweep": sweep.val, "history": sweep.history, "sharpen": sharpen, "upsampler": upsampler is not None,
            "skipped": skipped, "train_seconds": sweep.seconds, "seconds": time.perf_counter() - t0,
            "exif_tagged": {s: exif_tagged(ds, ds.ids(sub)) for s, (ds, sub) in opened.items()},
            "split_lists": {s: split_list(ds, sub) for s, (ds, sub) in opened.items()},
            "preset": None if chosen_preset is None else {
                "name": chosen_preset.name, "max_patches": max_patches, "slide": slide,
                "lines": chosen_preset.describe(patch_size=encoder.patch_size, num_layers=encoder.num_layers)}}
    return Result(figures=figures, rows=rows, meta=meta, artifacts={"probe": best})


def evaluate_saved_probe(probe, encoder, *, cache: str | Path, split: str = "test", dataset=None, ann=None,
                         images=None, root=None, max_patches: int | None = None, batch_size: int = 8,
                         extract: bool = True, on_error: str = "raise", sharpen: str = "bilinear", upsampler=None,
                         device: str | None = None, dtype: str | None = None, progress: bool = False) -> Result:
    """Score a saved probe on one split at the original resolution (extracting missing features into the cache).

    ``probe``: a :class:`probes.LinearProbe` or its file. ``encoder``, the data, ``sharpen``/``upsampler`` and the
    extraction options: as :func:`evaluate_linear_probe`. The cache is read at the probe's layers, pooled embedding,
    stored dtype and (unless ``max_patches`` is given) token budget: those it was trained from. A probe of another
    encoder, or of other classes, is refused before any image is read. Figures: as :func:`evaluate_probes`;
    ``meta``: split, images, the probe's key and file, the encoder spec.
    """
    from probes import LinearProbe

    _check_options(lrs=(1.0,), epochs=1, train_batch_size=1, batch_size=batch_size, label_scale=1,
                   max_patches=max_patches, holdout=None, pooled="off", sharpen=sharpen, on_error=on_error,
                   feature_dtype="float32", store_dtype="float32")
    path = None
    if isinstance(probe, (str, Path)):
        path = str(probe)
        probe = LinearProbe.load(probe)
    data = _data(dataset, ann, images, root, on_error)
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
    max_patches = spec.get("max_patches") if max_patches is None else max_patches  # the budget it was trained at
    layers = tuple(spec.get("layers", probe.layers))
    stored = _store_dtype(spec.get("store_dtype", "float32"), "the probe's store_dtype")
    cache_ = FeatureCache.for_encoder(cache, encoder, max_patches=max_patches, layers=layers,
                                      store_dtype=None if stored == torch.float32 else stored, pooled=probe.pooled)
    try:  # a probe of another encoder: refused before any extraction
        probe.check(cache_.spec)
    except MismatchError as e:
        raise MismatchError(f"{path or 'the probe'}: {e}") from None
    upsampler = _upsampler(upsampler, encoder)
    samples, paths, skipped = _fill(encoder, cache_, opened, max_patches=max_patches, layers=layers,
                                    batch_size=batch_size, extract=extract, on_error=on_error, progress=progress)
    res = evaluate_probe(probe, samples[split], sharpen=sharpen, upsampler=upsampler, images=paths,
                         calibration=encoder.calibration,
                         progress=progress)
    res.meta.update({"task": "probe-eval", "probe": path, "key": probe.meta.get("key"), "data": data.what,
                     "split": split, "encoder": cache_.spec, "skipped": skipped,
                     "exif_tagged": {split: exif_tagged(ds, ds.ids(opened[split][1]))},
                     "split_lists": {split: split_list(ds, opened[split][1])}})
    return res


__all__ = ["evaluate_linear_probe", "evaluate_saved_probe", "evaluate_probes", "evaluate_probe", "LRS", "POOLED"]
