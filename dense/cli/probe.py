"""``dense probe train | eval | refer``: linear-probe segmentation heads (and a small referring head) on cached
features.

    dense probe train --model shapes-tiny --ann shapes/annotations.json --images shapes/images --cache cache \\
        --test-split test --out probe.safetensors --json train.json      # splits from the images' "split" field
    dense probe train --model M --ann train=instances_train2017.json --images train=train2017 \\
        --ann val=instances_val2017.json --images val=val2017 --cache cache ...
    dense probe train --model M --dataset voc --root VOCdevkit/VOC2012 --holdout 0.1 --test-split val --cache cache
    dense probe train --model M --dataset ade20k --root ADEChallengeData2016 --train-split training \
        --holdout 0.1 --test-split validation --cache cache     # choose on 10% of training, report validation
    dense probe eval --probe probe.safetensors --model shapes-tiny --ann ... --images ... --split test --cache cache

Missing features are extracted into the cache first (resumable; ``--no-extract`` to require them).
"""

from __future__ import annotations

import time
from pathlib import Path

from dense.cli._args import (
    DATASETS,
    DenseError,
    add_max_patches,
    add_model,
    add_runtime,
    add_templates,
    command,
    existing,
    group,
    load,
    parse_floats,
    parse_layers,
    parse_templates,
    pct,
    write_json,
)


def add(sub, parent) -> None:
    _, actions = group(sub, "probe", parent, help="linear-probe segmentation on cached features (train, eval)",
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    t = command(actions, "train", parent, func=run_train,
                help="sweep learning rates in one pass over cached features, choose on val, report test once")
    _common(t)
    _add_eval(actions, parent)
    _add_refer(actions, parent)
    t.add_argument("--train-split", default="train")
    t.add_argument("--val-split", default="val")
    t.add_argument("--test-split", default=None, help="scored once with the chosen head (e.g. test)")
    t.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                   help="choose on a seeded FRACTION of --train-split (split 'holdout'), train on the rest ('fit'); "
                        "--val-split is then not read")
    t.add_argument("--holdout-seed", type=int, default=0)
    sweep_options(t)
    t.add_argument("--out", help="save the chosen probe (.safetensors)")


def sweep_options(t) -> None:
    """The options of the sweep (also used by ``dense eval probe``)."""
    t.add_argument("--layers", default="-1", help="blocks to extract, comma-separated")
    t.add_argument("--layer-sets", help="heads per layer set, ';'-separated, e.g. '-1;8,17,-1' (default: all layers)")
    t.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1", help="learning rates of the sweep")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=16, help="images per step")
    t.add_argument("--label-scale", type=int, default=1, help="training cells per patch side (1: the patch grid)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--feature-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="how training features are held in memory")
    t.add_argument("--seed", type=int, default=0)
    _upsample_args(t)
    # paper protocols and cache storage
    t.add_argument("--protocol", choices=("last", "last-k", "best-block", "pooled", "all"),
                   help="sweep a paper protocol (sets --layers and --layer-sets; see probes.protocols)")
    t.add_argument("--last-k", type=int, default=4, help="blocks of --protocol last-k (DINOv2: 4)")
    t.add_argument("--pooled", choices=("off", "on", "both"), default="off",
                   help="heads with the pooled MAP embedding concatenated to every token (TIPS)")
    t.add_argument("--store-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the tokens in the cache (bfloat16: half the disk)")


def _add_eval(actions, parent) -> None:
    e = command(actions, "eval", parent, func=run_eval, help="score a saved probe at the original image resolution")
    _common(e)
    e.add_argument("--probe", required=True, type=existing("file"), help="a probe saved by `dense probe train`")
    e.add_argument("--split", default="test")
    _upsample_args(e)



def _add_refer(actions, parent) -> None:
    r = command(actions, "refer", parent, func=run_refer,
                help="train the small referring head on frozen tokens and report Acc@0.5 / pointing")
    add_model(r)
    r.add_argument("--ann", required=True, type=existing("file"), help="COCO instances JSON")
    r.add_argument("--refs", required=True, type=existing("file"), help="refs in the RefCOCO layout")
    r.add_argument("--images", required=True, type=existing("folder"), help="image folder")
    add_templates(r)
    add_max_patches(r)
    r.add_argument("--steps", type=int, default=1500)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--lr", type=float, default=2e-3)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--test", action="store_true", help="also report the test split (once, after choosing on val)")
    r.add_argument("--save", help="where to save the trained head (.pt)")
    r.add_argument("--json", help="write the figures here")
    r.add_argument("--threads", type=int, default=1, help="torch threads (1: a tiny head, a shared machine)")


def _upsample_args(p) -> None:
    p.add_argument("--upsample", default="bilinear", choices=("bilinear", "guided"),
                   help="how test predictions reach the image's pixels: bilinear, or a colour guided filter with the "
                        "image as guide (sharper edges)")
    p.add_argument("--upsampler", type=existing("file"),
                   help="a learned upsampler of this encoder (`dense upsampler train`) in place of bilinear")


def _sharpen(args, encoder, data: dict) -> dict:
    """``evaluate_probe`` options for ``--upsample``/``--upsampler``: the mode, the upsampler, each sample's image."""
    upsampler = None
    if args.upsampler:
        from dense.upsample import Upsampler

        upsampler = Upsampler.load(args.upsampler, encoder=encoder)
    paths = {key: path for _, _, items in data.values() for key, path in items}
    return {"upsample": args.upsample, "upsampler": upsampler, "image_of": lambda s: paths[s.key]}


def dataset_options(p) -> None:
    """``--dataset NAME --root DIR``: a dataset of :mod:`dense.segdata` by name."""
    p.add_argument("--dataset", choices=DATASETS, help="a dataset by name (dense.segdata), read from --root")
    p.add_argument("--root", type=existing("folder"), help="the --dataset's root folder")


def _common(p) -> None:
    add_model(p)
    src = p.add_argument_group("dataset (one of)")
    src.add_argument("--ann", action="append", metavar="[SPLIT=]FILE",
                     help="COCO instances file; FILE alone: splits from its images' 'split' field; SPLIT=FILE "
                          "(repeatable): one file per split, e.g. train=instances_train2017.json")
    src.add_argument("--images", action="append", metavar="[SPLIT=]DIR", help="image folder(s) for --ann, as --ann")
    dataset_options(src)
    src.add_argument("--voc", type=existing("folder"), help="= --dataset voc --root VOC")
    src.add_argument("--ade20k", type=existing("folder"), help="= --dataset ade20k --root ADE20K")
    p.add_argument("--cache", required=True, help="feature cache root")
    p.add_argument("--no-extract", action="store_true", help="fail on features missing from the cache")
    add_max_patches(p)
    add_runtime(p)
    p.add_argument("--batch-size-extract", type=int, default=8)
    p.add_argument("--skip-bad", action="store_true", help="skip bad annotations/images with a report")
    p.add_argument("--json", help="write results here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _per_split(values: list[str], flag: str) -> dict[str | None, str]:
    """``["FILE"]`` or ``["train=FILE", "val=FILE2"]`` -> ``{None: FILE}`` / ``{"train": FILE, "val": FILE2}``."""
    out: dict[str | None, str] = {}
    for v in values:
        split, sep, path = v.partition("=")
        key, path = (split, path) if sep and not Path(v).exists() else (None, v)
        if key in out:
            raise DenseError(f"{flag} given twice for {'all splits' if key is None else key}")
        if not Path(path).exists():
            raise FileNotFoundError(2, "no such file or directory", path)
        out[key] = path
    return out


def _dataset(args, split: str, loaded: dict):
    """``(dataset, split name within it)`` for one split of the chosen source."""
    holdout = getattr(args, "holdout", None)
    carved = holdout and split in ("fit", "holdout")
    if args.ann:
        from dense.coco import load_coco

        anns, images = _per_split(args.ann, "--ann"), _per_split(args.images or [], "--images")
        lookup = args.train_split if carved else split
        ann = anns.get(lookup, anns.get(None))
        if ann is None:
            raise DenseError(f"no --ann for split {lookup!r} (give FILE for one file with a 'split' field per image, "
                             f"or {lookup}=FILE)")
        # a file named for this split holds the split whole; a shared file is filtered by its images' 'split'
        sub = None if lookup in anns else lookup
        key = (ann, images.get(lookup, images.get(None)))
        if key not in loaded:
            loaded[key] = load_coco(ann, key[1], on_error="skip" if args.skip_bad else "raise")
        if not carved:
            return loaded[key], sub
        if (key, "holdout") not in loaded:
            from dense.segdata import with_holdout

            loaded[(key, "holdout")] = with_holdout(loaded[key], sub, holdout, args.holdout_seed)
        return loaded[(key, "holdout")], split
    name, root = (("voc", args.voc) if getattr(args, "voc", None) else ("ade20k", args.ade20k)
                  if getattr(args, "ade20k", None) else (args.dataset, args.root))
    if name is None:
        raise DenseError("give a dataset: --ann FILE --images DIR, or --dataset NAME --root DIR")
    if root is None:
        raise DenseError(f"--dataset {name} needs --root DIR")
    key = (name, str(root))
    if key not in loaded:
        from dense.segdata import load_dataset, with_holdout

        ds = load_dataset(name, root)
        if getattr(args, "holdout", None):
            ds = with_holdout(ds, args.train_split, args.holdout, args.holdout_seed)
        loaded[key] = ds
    return loaded[key], split


def _prepare(args, splits: list[str], check=None):
    """Load the encoder, fill the cache for ``splits`` and return
    ``(encoder, cache, {split: (dataset, samples, [(key, image path)])})``.

    ``check(spec)`` runs on the cache's encoder spec before any extraction. Each dataset has its own part of the
    cache (:meth:`dense.cache.FeatureCache.for_dataset`)."""
    import torch

    from dense.cache import FeatureCache, dataset_items, extract_to_cache
    from probes import load_samples

    encoder = load(args)
    proto = _protocol(args, encoder)
    layers = proto.layers if proto else parse_layers(args.layers)
    store = getattr(args, "store_dtype", "float32")
    pooled = getattr(args, "pooled", "off") != "off" or bool(proto and proto.pooled_needed)
    cache = FeatureCache.for_encoder(args.cache, encoder, max_patches=args.max_patches, layers=layers,
                                     store_dtype=None if store == "float32" else getattr(torch, store),
                                     pooled=pooled)
    if check is not None:
        check(cache.spec)
    out, loaded = {}, {}
    for split in splits:
        ds, sub = _dataset(args, split, loaded)
        items = dataset_items(ds, sub)
        if not items:
            raise DenseError(f"split {split!r} has no images")
        ds_cache = cache.for_dataset(ds)
        if not args.no_extract:
            rep = extract_to_cache(encoder, items, ds_cache, max_patches=args.max_patches, layers=layers,
                                   batch_size=args.batch_size_extract, on_error="skip" if args.skip_bad else "raise",
                                   progress=not args.quiet)
            if rep.skipped:
                print(f"{split}: skipped {len(rep.skipped)} unreadable images: {rep.skipped[:3]}")
        out[split] = (ds, load_samples(ds, ds_cache, sub, progress=not args.quiet), items)
    return encoder, cache, out


def _protocol(args, encoder):
    """The ``--protocol`` of ``probe train`` (None without one)."""
    from probes.protocols import protocol

    name = getattr(args, "protocol", None)
    return protocol(name, num_layers=encoder.num_layers, k=args.last_k) if name else None


def _print_figures(title: str, figs: dict) -> None:
    edges = f"  boundary F {pct(figs['bF'])}%  trimap mIoU {pct(figs['trimap_mIoU'])}%" if "bF" in figs else ""
    print(f"\n{title}: mIoU {pct(figs['mIoU'])}%  pixel acc {pct(figs['pixel_acc'])}%  "
          f"mean acc {pct(figs['mean_acc'])}%{edges}")
    per_class = [(k[4:], v) for k, v in figs.items() if k.startswith("IoU/")]
    if per_class:
        width = max(len(n) for n, _ in per_class)
        print(f"  {'class':<{width}}  IoU %")
        for n, v in per_class:
            print(f"  {n:<{width}}  {pct(v)}")


def run_train(args) -> int:
    if args.holdout:
        if args.test_split is None:
            raise DenseError("--holdout chooses on part of --train-split: give --test-split to report on")
        train, val = "fit", "holdout"
    else:
        train, val = args.train_split, args.val_split
    sweep_and_report(args, train, val, args.test_split)
    return 0


def sweep_and_report(args, train_split: str, val_split: str, test_split: str | None, meta: dict | None = None
                     ) -> dict:
    """Extract (cached), sweep every head on ``train_split``, choose on ``val_split``, score ``test_split`` once; print
    the tables, write ``--json`` and ``--out``. Returns the JSON record."""
    from dense.eval.probe import evaluate_probe
    from probes import ProbeConfig, train_probes

    t0 = time.perf_counter()
    if test_split in (train_split, val_split):
        raise DenseError(f"the reported split {test_split!r} must not be the one trained on or chosen on")
    splits = [train_split, val_split] + ([test_split] if test_split else [])
    encoder, cache, data = _prepare(args, splits)
    ds_train, train, _ = data[train_split]
    class_names = ds_train.class_names
    layer_sets = tuple(parse_layers(s) for s in args.layer_sets.split(";")) if args.layer_sets else None
    proto = _protocol(args, encoder)
    pooled = {"off": (False,), "on": (True,), "both": (False, True)}[args.pooled]
    if proto:
        layer_sets, pooled = proto.layer_sets, (proto.pooled if args.pooled == "off" else pooled)
    cfg = ProbeConfig(lrs=tuple(parse_floats(args.lrs, "--lrs")), layer_sets=layer_sets, epochs=args.epochs,
                      batch_size=args.batch_size, label_scale=args.label_scale, weight_decay=args.weight_decay,
                      seed=args.seed, feature_dtype=args.feature_dtype, pooled=pooled)
    result = train_probes(train, data[val_split][1], class_names, cfg, progress=not args.quiet)
    print(f"\nsweep ({len(result.val)} heads, {result.seconds:.1f} s), chosen on {val_split}:")
    print(f"  {'head':<28} {'val mIoU %':>10} {'pix acc %':>10}")
    for key, figs in result.val.items():
        mark = "  <- best" if key == result.best_key else ""
        print(f"  {key:<28} {pct(figs['mIoU']):>10} {pct(figs['pixel_acc']):>10}{mark}")
    if result.lr_at_grid_edge:
        print(f"  note: the best learning rate is the {result.lr_at_grid_edge} of the grid; the optimum may lie "
              f"beyond it (widen --lrs)")
    test = None
    if test_split:
        test = evaluate_probe(result.best, data[test_split][1], progress=not args.quiet,
                              **_sharpen(args, encoder, data)).figures
        result.best.meta["test"] = {k: v for k, v in test.items() if not k.startswith("IoU/")}
        _print_figures(f"test ({test_split}, {len(data[test_split][1])} images, reported once)", test)
    else:
        _print_figures(f"val ({val_split}; no --test-split: chosen and reported on one split)",
                       result.val[result.best_key])
    holdout = getattr(ds_train, "holdout", None)
    if holdout:
        result.best.meta["holdout"] = holdout
    out = getattr(args, "out", None)
    if out:
        print(f"saved {result.best.save(out)}")
    record = {
        **(meta or {}), "encoder": cache.spec, "class_names": class_names, "config": result.best.meta["config"],
        "splits": {s: len(d[1]) for s, d in data.items()}, "protocol": {"train": train_split, "choose": val_split,
                                                                         "report": test_split, "holdout": holdout},
        "best": result.best_key, "lr_at_grid_edge": result.lr_at_grid_edge, "sweep": result.val,
        "history": result.history, "test": test,
        "per_class_iou": None if test is None else {n: test.get(f"IoU/{n}") for n in class_names},
        "train_seconds": result.seconds, "total_seconds": time.perf_counter() - t0, "probe": out}
    write_json(args.json, record)
    return record


def run_eval(args) -> int:
    from dense.eval.probe import evaluate_probe
    from probes import LinearProbe

    probe = LinearProbe.load(args.probe)
    args.layers = ",".join(str(b) for b in probe.encoder_spec.get("layers", probe.layers))
    args.pooled = "on" if probe.pooled else "off"  # a +pooled probe reads a cache that holds pooled embeddings
    args.store_dtype = probe.encoder_spec.get("store_dtype", "float32")  # the cache it was trained from
    # a probe of another encoder is an error, raised before any extraction
    encoder, cache, data = _prepare(args, [args.split], check=lambda spec: LinearProbe.load(args.probe, encoder=spec))
    ds, samples, _ = data[args.split]
    if list(ds.class_names) != probe.class_names:
        raise DenseError(f"{args.probe}: trained on classes {probe.class_names[:5]}..., the dataset has "
                         f"{list(ds.class_names)[:5]}...")
    figs = evaluate_probe(probe, samples, progress=not args.quiet, **_sharpen(args, encoder, data)).figures
    _print_figures(f"{args.split} ({len(samples)} images)", figs)
    write_json(args.json, {"probe": str(args.probe), "encoder": cache.spec, "split": args.split,
                           "images": len(samples), "figures": figs})
    return 0


def run_refer(args) -> int:
    import torch

    from dense.eval.refer import evaluate_refer_head
    from probes.refer_head import dataset_samples, train_refer_head

    torch.set_num_threads(args.threads)
    enc = load(args)
    templates = parse_templates(args.templates)
    common = dict(templates=templates, max_patches=args.max_patches)
    t0 = time.perf_counter()
    train, _ = dataset_samples(enc, args.ann, args.refs, args.images, split="train", **common)
    if not train:
        raise DenseError(f"{args.refs}: no referring expressions in split 'train'")
    t1 = time.perf_counter()
    head = train_refer_head(train, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            log_every=max(args.steps // 10, 1))
    t2 = time.perf_counter()
    res = {"model": args.model, "steps": args.steps, "n_train": len(train), "seconds_features": t1 - t0,
           "seconds_train": t2 - t1, "splits": {}}
    print(f"{'split':<8}{'Acc@0.5 %':>10}{'point %':>9}{'expressions':>13}")
    for split in ("val", "test") if args.test else ("val",):
        samples, masks = dataset_samples(enc, args.ann, args.refs, args.images, split=split, **common)
        r = evaluate_refer_head(head, samples, masks)
        res["splits"][split] = {**r.figures, "expressions": r.meta["expressions"]}
        print(f"{split:<8}{pct(r.figures['acc@0.5']):>10}{pct(r.figures['pointing']):>9}{len(samples):>13}")
    print(f"features {t1 - t0:.1f} s, training {t2 - t1:.1f} s on {len(train)} expressions")
    if args.save:
        head.save(args.save, enc.spec())
    write_json(args.json, res)
    return 0
