"""``dense probe train`` and ``dense probe eval``.

    dense probe train --model shapes-tiny --ann shapes/annotations.json --images shapes/images --cache cache \\
        --out probe.safetensors --json train.json            # splits from the COCO images' "split" field
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

from dense._atomic import write_json
from dense.cache import FeatureCache, _parse_layers, dataset_items, extract_to_cache


def _dataset(args, split: str | None):
    """``(dataset, split name within it)`` for one split of the chosen source."""
    if args.ann:
        from dense.coco import load_coco

        anns, images = _per_split(args.ann, "--ann"), _per_split(args.images or [], "--images")
        ann = anns.get(split, anns.get(None))
        if ann is None:
            raise ValueError(f"no --ann for split {split!r} (give FILE for one file with a 'split' field per image, "
                             f"or {split}=FILE)")
        # a file named for this split holds the split whole; a shared file is filtered by its images' 'split'
        sub = None if split in anns else split
        key = (ann, images.get(split, images.get(None)))
        if key not in _DATASETS:
            _DATASETS[key] = load_coco(ann, key[1], on_error="skip" if args.skip_bad else "raise")
        return _DATASETS[key], sub
    if args.voc:
        from dense.coco import voc_folder

        return voc_folder(args.voc), split
    if args.ade20k:
        from dense.coco import ade20k_folder

        return ade20k_folder(args.ade20k, split), None
    raise ValueError("give a dataset: --ann FILE --images DIR, --voc ROOT or --ade20k ROOT")


_DATASETS: dict = {}


def _per_split(values: list[str], flag: str) -> dict[str | None, str]:
    """``["FILE"]`` or ``["train=FILE", "val=FILE2"]`` -> ``{None: FILE}`` / ``{"train": FILE, "val": FILE2}``."""
    out: dict[str | None, str] = {}
    for v in values:
        split, sep, path = v.partition("=")
        key, path = (split, path) if sep and not Path(v).exists() else (None, v)
        if key in out:
            raise ValueError(f"{flag} given twice for {'all splits' if key is None else key}")
        out[key] = path
    return out


def _prepare(args, splits: list[str], check=None):
    """Load the encoder, fill the cache for ``splits`` and return ``(encoder, cache, {split: (dataset, samples)})``.

    ``check(spec)`` runs on the cache's encoder spec before any extraction."""
    from dense.encoder import load_encoder
    from probes.train import load_samples

    _DATASETS.clear()
    layers = _parse_layers(args.layers)
    encoder = load_encoder(args.model, dtype=args.dtype, device=args.device)
    cache = FeatureCache.for_encoder(args.cache, encoder, max_patches=args.max_patches, layers=layers)
    if check is not None:
        check(cache.spec)
    out = {}
    for split in splits:
        ds, sub = _dataset(args, split)
        if not args.no_extract:
            rep = extract_to_cache(encoder, dataset_items(ds, sub), cache, max_patches=args.max_patches,
                                   layers=layers, batch_size=args.batch_size_extract,
                                   on_error="skip" if args.skip_bad else "raise", progress=not args.quiet)
            if rep.skipped:
                print(f"{split}: skipped {len(rep.skipped)} unreadable images: {rep.skipped[:3]}")
        samples = load_samples(ds, cache, sub, progress=not args.quiet)
        if not samples:
            raise ValueError(f"split {split!r} has no images")
        out[split] = (ds, samples)
    return encoder, cache, out


def _fmt(v) -> str:
    return "   nan" if v != v else f"{100 * v:6.2f}"


def _print_figures(title: str, figs: dict) -> None:
    print(f"\n{title}: mIoU {_fmt(figs['mIoU'])}  pixel acc {_fmt(figs['pixel_acc'])}  "
          f"mean acc {_fmt(figs['mean_acc'])}")
    per_class = [(k[4:], v) for k, v in figs.items() if k.startswith("IoU/")]
    if per_class:
        width = max(len(n) for n, _ in per_class)
        print(f"  {'class':<{width}}  IoU")
        for n, v in per_class:
            print(f"  {n:<{width}}  {_fmt(v)}")


def _write_json(path: str | None, obj: dict) -> None:
    if not path:
        return
    print(f"wrote {write_json(path, obj)}")


def _run_train(args) -> int:
    from probes.evaluate import evaluate
    from probes.train import ProbeConfig, train_probes

    t0 = time.perf_counter()
    splits = [args.train_split, args.val_split] + ([args.test_split] if args.test_split else [])
    encoder, cache, data = _prepare(args, splits)
    ds_train, train = data[args.train_split]
    class_names = ds_train.class_names
    layer_sets = tuple(_parse_layers(s) for s in args.layer_sets.split(";")) if args.layer_sets else None
    cfg = ProbeConfig(lrs=tuple(float(v) for v in args.lrs.split(",")), layer_sets=layer_sets, epochs=args.epochs,
                      batch_size=args.batch_size, label_scale=args.label_scale, weight_decay=args.weight_decay,
                      seed=args.seed, feature_dtype=args.feature_dtype)
    result = train_probes(train, data[args.val_split][1], class_names, cfg, progress=not args.quiet)
    print(f"\nsweep ({len(result.val)} heads, {result.seconds:.1f} s), chosen on {args.val_split}:")
    print(f"  {'head':<28} {'val mIoU':>8} {'pix acc':>8}")
    for key, figs in result.val.items():
        mark = "  <- best" if key == result.best_key else ""
        print(f"  {key:<28} {_fmt(figs['mIoU']):>8} {_fmt(figs['pixel_acc']):>8}{mark}")
    test = None
    if args.test_split:
        test = evaluate(result.best, data[args.test_split][1], progress=not args.quiet)
        result.best.meta["test"] = {k: v for k, v in test.items() if not k.startswith("IoU/")}
        _print_figures(f"test ({args.test_split}, reported once)", test)
    else:
        _print_figures(f"val ({args.val_split})", result.val[result.best_key])
    if args.out:
        print(f"saved {result.best.save(args.out)}")
    _write_json(args.json, {
        "encoder": cache.spec, "class_names": class_names, "config": result.best.meta["config"],
        "splits": {s: len(d[1]) for s, d in data.items()}, "best": result.best_key, "sweep": result.val,
        "history": result.history, "test": test, "train_seconds": result.seconds,
        "total_seconds": time.perf_counter() - t0, "probe": args.out})
    return 0


def _run_eval(args) -> int:
    from probes.evaluate import evaluate
    from probes.linear import LinearProbe

    probe = LinearProbe.load(args.probe)
    args.layers = ",".join(str(b) for b in probe.encoder_spec.get("layers", probe.layers))
    # a probe of another encoder is an error, raised before any extraction
    encoder, cache, data = _prepare(args, [args.split], check=lambda spec: LinearProbe.load(args.probe, encoder=spec))
    ds, samples = data[args.split]
    if list(ds.class_names) != probe.class_names:
        raise ValueError(f"{args.probe}: trained on classes {probe.class_names[:5]}..., the dataset has "
                         f"{list(ds.class_names)[:5]}...")
    figs = evaluate(probe, samples, progress=not args.quiet)
    _print_figures(f"{args.split} ({len(samples)} images)", figs)
    _write_json(args.json, {"probe": args.probe, "encoder": cache.spec, "split": args.split, "images": len(samples),
                            "figures": figs})
    return 0


def _common(p) -> None:
    p.add_argument("--model", required=True, help="hub id, local checkpoint folder, or 'shapes-tiny'")
    src = p.add_argument_group("dataset (one of)")
    src.add_argument("--ann", action="append", metavar="[SPLIT=]FILE",
                     help="COCO instances file; FILE alone: splits from its images' 'split' field; SPLIT=FILE "
                          "(repeatable): one file per split, e.g. train=instances_train2017.json")
    src.add_argument("--images", action="append", metavar="[SPLIT=]DIR", help="image folder(s) for --ann, as --ann")
    src.add_argument("--voc", help="PASCAL VOC root (JPEGImages, SegmentationClass, ImageSets/Segmentation)")
    src.add_argument("--ade20k", help="ADEChallengeData2016 root (splits: training, validation)")
    p.add_argument("--cache", required=True, help="feature cache root")
    p.add_argument("--no-extract", action="store_true", help="fail on features missing from the cache")
    p.add_argument("--max-patches", type=int, default=None, help="token budget (default: the checkpoint's)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size-extract", type=int, default=8)
    p.add_argument("--skip-bad", action="store_true", help="skip bad annotations/images with a report")
    p.add_argument("--json", help="write results here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_cli(sub, eval_sub) -> None:
    probe = sub.add_parser("probe", help="linear-probe segmentation on cached features (train, eval)")
    psub = probe.add_subparsers(dest="probe_command", metavar="ACTION")
    probe.set_defaults(func=lambda args: probe.print_help() or 2)

    t = psub.add_parser("train", help="sweep learning rates in one pass, pick on val, report test once")
    _common(t)
    t.add_argument("--layers", default="-1", help="blocks to extract, comma-separated (default -1)")
    t.add_argument("--layer-sets", help="heads per layer set, ';'-separated, e.g. '-1;8,17,-1' (default: all)")
    t.add_argument("--train-split", default="train")
    t.add_argument("--val-split", default="val")
    t.add_argument("--test-split", default=None, help="scored once with the chosen head (e.g. test)")
    t.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3,1e-2")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=16, help="images per step")
    t.add_argument("--label-scale", type=int, default=1, help="training cells per patch side (1: the patch grid)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--feature-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="how training features are held in memory")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="save the chosen probe (.safetensors)")
    t.set_defaults(func=_run_train)

    e = psub.add_parser("eval", help="score a saved probe at original resolution")
    _common(e)
    e.add_argument("--probe", required=True)
    e.add_argument("--split", default="test")
    e.set_defaults(func=_run_eval)
