"""``dense probe train | eval | refer``: linear-probe segmentation heads (and a small referring head) on cached
features.

    dense probe train --model shapes-tiny --ann shapes/annotations.json --images shapes/images --cache cache \\
        --test-split test --out probe.safetensors --json train.json      # splits from the images' "split" field
    dense probe train --model M --ann train=instances_train2017.json --images train=train2017 \\
        --ann val=instances_val2017.json --images val=val2017 --cache cache ...
    dense probe train --model M --voc VOCdevkit/VOC2012 --train-split train --val-split val --cache cache ...
    dense probe train --model M --ade20k ADEChallengeData2016 --train-split training --val-split validation ...
    dense probe eval --probe probe.safetensors --model shapes-tiny --ann ... --images ... --split test --cache cache

Missing features are extracted into the cache first (resumable; ``--no-extract`` to require them).
"""

from __future__ import annotations

import time
from pathlib import Path

from dense.cli._args import (
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
    t.add_argument("--layers", default="-1", help="blocks to extract, comma-separated")
    t.add_argument("--layer-sets", help="heads per layer set, ';'-separated, e.g. '-1;8,17,-1' (default: all layers)")
    t.add_argument("--train-split", default="train")
    t.add_argument("--val-split", default="val")
    t.add_argument("--test-split", default=None, help="scored once with the chosen head (e.g. test)")
    t.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1", help="learning rates of the sweep")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=16, help="images per step")
    t.add_argument("--label-scale", type=int, default=1, help="training cells per patch side (1: the patch grid)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--feature-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="how training features are held in memory")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="save the chosen probe (.safetensors)")
    # issue 12b: paper protocols and cache storage
    t.add_argument("--protocol", choices=("last", "last-k", "best-block", "pooled", "all"),
                   help="sweep a paper protocol (sets --layers and --layer-sets; see probes.protocols)")
    t.add_argument("--last-k", type=int, default=4, help="blocks of --protocol last-k (DINOv2: 4)")
    t.add_argument("--pooled", choices=("off", "on", "both"), default="off",
                   help="heads with the pooled MAP embedding concatenated to every token (TIPS)")
    t.add_argument("--store-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the tokens in the cache (bfloat16: half the disk)")

    e = command(actions, "eval", parent, func=run_eval, help="score a saved probe at the original image resolution")
    _common(e)
    e.add_argument("--probe", required=True, type=existing("file"), help="a probe saved by `dense probe train`")
    e.add_argument("--split", default="test")

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


def _common(p) -> None:
    add_model(p)
    src = p.add_argument_group("dataset (one of)")
    src.add_argument("--ann", action="append", metavar="[SPLIT=]FILE",
                     help="COCO instances file; FILE alone: splits from its images' 'split' field; SPLIT=FILE "
                          "(repeatable): one file per split, e.g. train=instances_train2017.json")
    src.add_argument("--images", action="append", metavar="[SPLIT=]DIR", help="image folder(s) for --ann, as --ann")
    src.add_argument("--voc", type=existing("folder"),
                     help="PASCAL VOC root (JPEGImages, SegmentationClass, ImageSets/Segmentation)")
    src.add_argument("--ade20k", type=existing("folder"), help="ADEChallengeData2016 root (splits: training, "
                     "validation)")
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
    if args.ann:
        from dense.coco import load_coco

        anns, images = _per_split(args.ann, "--ann"), _per_split(args.images or [], "--images")
        ann = anns.get(split, anns.get(None))
        if ann is None:
            raise DenseError(f"no --ann for split {split!r} (give FILE for one file with a 'split' field per image, "
                             f"or {split}=FILE)")
        # a file named for this split holds the split whole; a shared file is filtered by its images' 'split'
        sub = None if split in anns else split
        key = (ann, images.get(split, images.get(None)))
        if key not in loaded:
            loaded[key] = load_coco(ann, key[1], on_error="skip" if args.skip_bad else "raise")
        return loaded[key], sub
    if args.voc:
        from dense.coco import voc_folder

        return voc_folder(args.voc), split
    if args.ade20k:
        from dense.coco import ade20k_folder

        return ade20k_folder(args.ade20k, split), None
    raise DenseError("give a dataset: --ann FILE --images DIR, --voc ROOT or --ade20k ROOT")


def _prepare(args, splits: list[str], check=None):
    """Load the encoder, fill the cache for ``splits`` and return ``(encoder, cache, {split: (dataset, samples)})``.

    ``check(spec)`` runs on the cache's encoder spec before any extraction."""
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
        if not args.no_extract:
            rep = extract_to_cache(encoder, items, cache, max_patches=args.max_patches, layers=layers,
                                   batch_size=args.batch_size_extract, on_error="skip" if args.skip_bad else "raise",
                                   progress=not args.quiet)
            if rep.skipped:
                print(f"{split}: skipped {len(rep.skipped)} unreadable images: {rep.skipped[:3]}")
        out[split] = (ds, load_samples(ds, cache, sub, progress=not args.quiet))
    return encoder, cache, out


def _protocol(args, encoder):
    """The ``--protocol`` of ``probe train`` (None without one)."""
    from probes.protocols import protocol

    name = getattr(args, "protocol", None)
    return protocol(name, num_layers=encoder.num_layers, k=args.last_k) if name else None


def _print_figures(title: str, figs: dict) -> None:
    print(f"\n{title}: mIoU {pct(figs['mIoU'])}%  pixel acc {pct(figs['pixel_acc'])}%  "
          f"mean acc {pct(figs['mean_acc'])}%")
    per_class = [(k[4:], v) for k, v in figs.items() if k.startswith("IoU/")]
    if per_class:
        width = max(len(n) for n, _ in per_class)
        print(f"  {'class':<{width}}  IoU %")
        for n, v in per_class:
            print(f"  {n:<{width}}  {pct(v)}")


def run_train(args) -> int:
    from dense.eval.probe import evaluate_probe
    from probes import ProbeConfig, train_probes

    t0 = time.perf_counter()
    splits = [args.train_split, args.val_split] + ([args.test_split] if args.test_split else [])
    encoder, cache, data = _prepare(args, splits)
    ds_train, train = data[args.train_split]
    class_names = ds_train.class_names
    layer_sets = tuple(parse_layers(s) for s in args.layer_sets.split(";")) if args.layer_sets else None
    proto = _protocol(args, encoder)
    pooled = {"off": (False,), "on": (True,), "both": (False, True)}[args.pooled]
    if proto:
        layer_sets, pooled = proto.layer_sets, (proto.pooled if args.pooled == "off" else pooled)
    cfg = ProbeConfig(lrs=tuple(parse_floats(args.lrs, "--lrs")), layer_sets=layer_sets, epochs=args.epochs,
                      batch_size=args.batch_size, label_scale=args.label_scale, weight_decay=args.weight_decay,
                      seed=args.seed, feature_dtype=args.feature_dtype, pooled=pooled)
    result = train_probes(train, data[args.val_split][1], class_names, cfg, progress=not args.quiet)
    print(f"\nsweep ({len(result.val)} heads, {result.seconds:.1f} s), chosen on {args.val_split}:")
    print(f"  {'head':<28} {'val mIoU %':>10} {'pix acc %':>10}")
    for key, figs in result.val.items():
        mark = "  <- best" if key == result.best_key else ""
        print(f"  {key:<28} {pct(figs['mIoU']):>10} {pct(figs['pixel_acc']):>10}{mark}")
    if result.lr_at_grid_edge:
        print(f"  note: the best learning rate is the {result.lr_at_grid_edge} of the grid; the optimum may lie "
              f"beyond it (widen --lrs)")
    test = None
    if args.test_split:
        test = evaluate_probe(result.best, data[args.test_split][1], progress=not args.quiet).figures
        result.best.meta["test"] = {k: v for k, v in test.items() if not k.startswith("IoU/")}
        _print_figures(f"test ({args.test_split}, {len(data[args.test_split][1])} images, reported once)", test)
    else:
        _print_figures(f"val ({args.val_split}; no --test-split: chosen and reported on one split)",
                       result.val[result.best_key])
    if args.out:
        print(f"saved {result.best.save(args.out)}")
    write_json(args.json, {
        "encoder": cache.spec, "class_names": class_names, "config": result.best.meta["config"],
        "splits": {s: len(d[1]) for s, d in data.items()}, "best": result.best_key,
        "lr_at_grid_edge": result.lr_at_grid_edge, "sweep": result.val, "history": result.history, "test": test,
        "train_seconds": result.seconds, "total_seconds": time.perf_counter() - t0, "probe": args.out})
    return 0


def run_eval(args) -> int:
    from dense.eval.probe import evaluate_probe
    from probes import LinearProbe

    probe = LinearProbe.load(args.probe)
    args.layers = ",".join(str(b) for b in probe.encoder_spec.get("layers", probe.layers))
    args.pooled = "on" if probe.pooled else "off"  # a +pooled probe reads a cache that holds pooled embeddings
    args.store_dtype = probe.encoder_spec.get("store_dtype", "float32")  # the cache it was trained from
    # a probe of another encoder is an error, raised before any extraction
    encoder, cache, data = _prepare(args, [args.split], check=lambda spec: LinearProbe.load(args.probe, encoder=spec))
    ds, samples = data[args.split]
    if list(ds.class_names) != probe.class_names:
        raise DenseError(f"{args.probe}: trained on classes {probe.class_names[:5]}..., the dataset has "
                         f"{list(ds.class_names)[:5]}...")
    figs = evaluate_probe(probe, samples, progress=not args.quiet).figures
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
