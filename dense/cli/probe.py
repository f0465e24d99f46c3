"""``dense probe train | test | refer``: linear-probe segmentation heads (and a small referring head) on cached
features.

    dense probe train --model shapes-tiny --ann shapes/annotations.json --images shapes/images --cache cache \\
        --test-split test --out probe.safetensors --json train.json      # splits from the images' "split" field
    dense probe train --model M --ann train=instances_train2017.json --images train=train2017 \\
        --ann val=instances_val2017.json --images val=val2017 --cache cache ...
    dense probe train --model M --dataset voc --root VOCdevkit/VOC2012 --holdout 0.1 --test-split val --cache cache
    dense probe test --probe probe.safetensors --model shapes-tiny --ann ... --images ... --split test --cache cache

Missing features are extracted into the cache first (resumable; ``--no-extract`` to require them). Each command is
one call of :mod:`dense.eval.probe` / :mod:`dense.eval.refer`; this module maps flags and prints the Result.
"""

from __future__ import annotations

from dense.cli._args import (
    CACHE,
    POOLED,
    PRESETS,
    PROTOCOLS,
    SHARPEN_MODES,
    STORE_DTYPES,
    add_dataset,
    add_json,
    add_max_patches,
    add_model,
    add_quiet,
    add_runtime,
    add_templates,
    cache_root,
    command,
    existing,
    finish,
    group,
    layer_sets,
    layers,
    non_negative_float,
    open_fraction,
    opt,
    pct,
    plural,
    positive_float,
    positive_floats,
    positive_int,
    runtime,
    tensors_file,
    write_json,
)


def add(sub, parent) -> None:
    _, actions = group(sub, "probe", parent, help="linear-probe segmentation on cached features (train, test)",
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    t = command(actions, "train", parent, func=run_train,
                help="sweep learning rates in one pass over cached features, choose on val, report test once")
    data_options(t)
    opt(t, "--train-split", "default: train (a --dataset's training split)")
    opt(t, "--val-split", default="val")
    opt(t, "--test-split")
    opt(t, "--holdout", type=open_fraction, metavar="FRACTION")
    opt(t, "--holdout-seed", type=int, default=0)
    sweep_options(t)
    opt(t, "--out", "the chosen probe (.safetensors; without it the probe is scored, then discarded)",
        type=tensors_file)
    add_json(t)
    add_quiet(t)

    e = command(actions, "test", parent, func=run_test,
                help="score a saved probe on one split at the original image resolution")
    data_options(e)
    opt(e, "--probe", required=True, type=existing("file"))
    opt(e, "--split", default="test")
    sharpen_options(e)
    add_json(e)
    add_quiet(e)

    r = command(actions, "refer", parent, func=run_refer,
                help="train the small referring head on frozen tokens and report Acc@0.5 / pointing")
    add_model(r)
    opt(r, "--ann", required=True, type=existing("file"))
    opt(r, "--refs", required=True, type=existing("file"))
    opt(r, "--images", required=True, type=existing("folder"))
    opt(r, "--train-split", default="train")
    opt(r, "--split", "the split reported", default="val")
    opt(r, "--test-split")
    add_templates(r)
    add_max_patches(r)
    add_runtime(r)
    opt(r, "--steps", type=positive_int, default=1500)
    opt(r, "--train-batch-size", "expressions per step", type=positive_int, default=64)
    opt(r, "--lr", type=positive_float, default=2e-3)
    opt(r, "--seed", "initialisation and batch draws", type=int, default=0)
    opt(r, "--out", "the trained head (.safetensors)", type=tensors_file)
    add_json(r)
    add_quiet(r)


def data_options(p) -> None:
    """The dataset, the cache and extraction (``probe train``, ``probe test``)."""
    add_model(p)
    src = p.add_argument_group("dataset (one of)")
    opt(src, "--ann", "FILE alone: splits from its images' 'split' field; SPLIT=FILE (repeatable): one file per "
                      "split, e.g. train=instances_train2017.json", action="append", metavar="[SPLIT=]FILE")
    opt(src, "--images", "DIR alone, or SPLIT=DIR per --ann file", action="append", metavar="[SPLIT=]DIR")
    add_dataset(src)
    add_cache(p)
    opt(p, "--no-extract", action="store_true")
    add_max_patches(p)
    add_runtime(p)
    opt(p, "--batch-size", type=positive_int, default=8)
    opt(p, "--skip-bad", action="store_true")


def add_cache(p) -> None:
    """``--cache``, with one default in every probe command."""
    opt(p, "--cache", type=cache_root, default=CACHE)


def sweep_options(t) -> None:
    """The options of the sweep (also ``dense eval probe``). Options a preset fixes default to None (unset), so
    that one given explicitly, even at its default value, clashes with ``--preset``."""
    opt(t, "--layers", "default: -1", type=layers, metavar="BLOCKS")
    opt(t, "--layer-sets", type=layer_sets, metavar="SETS")
    opt(t, "--lrs", "default: the grid of probes.train.LRS", type=positive_floats)
    opt(t, "--epochs", type=positive_int, default=10)
    opt(t, "--train-batch-size", "images, all of one patch grid", type=positive_int, default=16)
    opt(t, "--label-scale", type=positive_int, default=1)
    opt(t, "--weight-decay", type=non_negative_float, default=0.0)
    opt(t, "--feature-dtype", choices=STORE_DTYPES, default="float32")
    opt(t, "--seed", "head initialisation and batch order", type=int, default=0)
    opt(t, "--protocol", choices=PROTOCOLS)
    opt(t, "--last-k", type=positive_int, default=4)
    opt(t, "--preset", choices=PRESETS)
    opt(t, "--pooled", "default: off", choices=POOLED)
    opt(t, "--store-dtype", choices=STORE_DTYPES, default="float32")
    sharpen_options(t)


def sharpen_options(p) -> None:
    opt(p, "--sharpen", "of the reported split (default: bilinear)", choices=SHARPEN_MODES)
    opt(p, "--upsampler", type=existing("file"))


def open_data(args):
    """The data of ``--ann/--images`` or ``--dataset/--root``, opened (files read and checked) before any model."""
    from dense.eval.data import open_data

    return open_data(args.dataset, ann=args.ann, images=args.images, root=args.root,
                     on_error="skip" if args.skip_bad else "raise")


def training(args):
    """The :class:`dense.eval.settings.ProbeTraining` of the sweep's flags (unset flags: its defaults)."""
    from dense.eval.settings import ProbeTraining

    kw = dict(epochs=args.epochs, train_batch_size=args.train_batch_size, label_scale=args.label_scale,
              weight_decay=args.weight_decay, feature_dtype=args.feature_dtype, seed=args.seed,
              layer_sets=args.layer_sets, pooled=args.pooled, protocol=args.protocol, last_k=args.last_k)
    if args.lrs is not None:
        kw["lrs"] = tuple(args.lrs)
    return ProbeTraining(**kw)


def sharpening(args):
    from dense.eval.settings import Sharpening

    return Sharpening(sharpen=args.sharpen, upsampler=args.upsampler)


def extraction(args):
    """The :class:`dense.eval.settings.Extraction` of a command's flags."""
    from dense.eval.settings import Extraction

    kw = {k: getattr(args, k) for k in ("max_patches", "batch_size", "store_dtype") if getattr(args, k, None)}
    if getattr(args, "layers", None) is not None:
        kw["layers"] = args.layers
    if getattr(args, "no_extract", False):
        kw["extract"] = False
    if getattr(args, "skip_bad", False):
        kw["on_error"] = "skip"
    return Extraction(**kw)


def print_figures(title: str, figs: dict) -> None:
    edges = f"  boundary F {pct(figs['bF'])}%  trimap mIoU {pct(figs['trimap_mIoU'])}%" if "bF" in figs else ""
    print(f"\n{title}: mIoU {pct(figs['mIoU'])}%  pixel acc {pct(figs['pixel_acc'])}%  "
          f"mean acc {pct(figs['mean_acc'])}%{edges}")
    per_class = [(k[4:], v) for k, v in figs.items() if k.startswith("IoU/")]
    if per_class:
        width = max(len(n) for n, _ in per_class)
        print(f"  {'class':<{width}}  IoU %")
        for n, v in per_class:
            print(f"  {n:<{width}}  {pct(v)}")


def print_sweep(res) -> None:
    """The sweep table and the report of :func:`dense.eval.probe.evaluate_linear_probe`'s Result."""
    m = res.meta
    for line in (m.get("preset") or {}).get("lines", []):
        print(line)
    for line in m["skipped"]:
        print(f"skipped {line}")
    heads = plural(len(m["sweep"]), "head")
    print(f"\nsweep ({heads}, {m['train_seconds']:.1f} s), chosen on {m['protocol']['choose']}:")
    print(f"  {'head':<28} {'val mIoU %':>10} {'pix acc %':>10}")
    for key, figs in m["sweep"].items():
        mark = "  <- best" if key == m["best"] else ""
        print(f"  {key:<28} {pct(figs['mIoU']):>10} {pct(figs['pixel_acc']):>10}{mark}")
    if m["protocol"].get("chosen_on_training_split"):
        print(f"  note: chosen on {m['protocol']['choose']}, the split the heads were trained on: these are training "
              f"figures (give --val-split another split, or --holdout)")
    if m["lr_at_grid_edge"]:
        print(f"  note: the best learning rate is the {m['lr_at_grid_edge']} of the grid; the optimum may lie "
              f"beyond it (widen --lrs)")
    report = m["protocol"]["report"]
    if report:
        print_figures(f"test ({report}, {m['splits'][report]} images, reported once)", res.figures)
    else:
        print_figures(f"val ({m['protocol']['choose']}; no --test-split: chosen and reported on one split)",
                      res.figures)


def run_train(args) -> int:
    from dense.eval.probe import evaluate_linear_probe
    from dense.eval.settings import ProbeSplits

    if not args.out:  # said before the work, not after it (stdout: errors stay one line on stderr)
        print("note: no --out: the chosen probe is scored, then discarded (add --out probe.safetensors to keep it)")
    splits = ProbeSplits(train=args.train_split, val=args.val_split, test=args.test_split, holdout=args.holdout,
                         holdout_seed=args.holdout_seed)
    res = evaluate_linear_probe(args.model, open_data(args), cache=args.cache, splits=splits,
                                extraction=extraction(args), training=training(args), sharpening=sharpening(args),
                                preset=args.preset, progress=not args.quiet, **runtime(args))
    report(res, args.out, args.json)
    return 0


def report(res, out, json_path) -> None:
    """Save a probe protocol's probe to ``--out`` and its JSON to ``--json``, then print its Result."""
    finish(lambda: print_sweep(res), lambda: res.artifacts["probe"].save(out) if out else None,
           lambda: write_json(json_path, {**res.to_json(), "probe": str(out) if out else None}))


def run_test(args) -> int:
    from dense.eval.probe import evaluate_saved_probe

    res = evaluate_saved_probe(args.model, open_data(args), probe=args.probe, cache=args.cache, split=args.split,
                               extraction=extraction(args), sharpening=sharpening(args), progress=not args.quiet,
                               **runtime(args))
    return finish(lambda: print_figures(f"{args.split} ({plural(res.meta['images'], 'image')})", res.figures),
                  lambda: write_json(args.json, res.to_json()))


def run_refer(args) -> int:
    from dense.eval.data import open_data
    from dense.eval.refer import evaluate_refer_head_protocol
    from dense.eval.settings import figure_name

    data = open_data(ann=args.ann, images=args.images, refs=args.refs)  # files and splits, before the model
    res = evaluate_refer_head_protocol(args.model, data,
                                       train_split=args.train_split, split=args.split,
                                       test_split=args.test_split, templates=args.templates,
                                       max_patches=args.max_patches, steps=args.steps,
                                       train_batch_size=args.train_batch_size, lr=args.lr, seed=args.seed,
                                       progress=not args.quiet, **runtime(args))
    m = res.meta
    lines = [f"{'split':<8}{'Acc@0.5 %':>10}{'point %':>9}{'expressions':>13}"]
    for split in m["reported"]:
        f = {k: res.figures[figure_name(split, k)] for k in ("acc@0.5", "pointing")}
        lines.append(f"{split:<8}{pct(f['acc@0.5']):>10}{pct(f['pointing']):>9}{m['expressions'][split]:>13}")
    lines.append(f"features {m['seconds_features']:.1f} s, training {m['seconds_train']:.1f} s on "
                 f"{m['expressions'][args.train_split]} expressions")
    return finish("\n".join(lines), lambda: res.artifacts["head"].save(args.out) if args.out else None,
                  lambda: write_json(args.json, res.to_json()))
