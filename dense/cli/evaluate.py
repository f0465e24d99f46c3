"""``dense eval openvocab | refer``: the evaluators of :mod:`dense.eval` as tables and JSON."""

from __future__ import annotations

from dense.cli._args import (
    DATASETS,
    DenseError,
    add_max_patches,
    add_method,
    add_model,
    add_runtime,
    add_templates,
    command,
    existing,
    group,
    load,
    parse_background,
    parse_floats,
    parse_methods,
    parse_templates,
    pct,
    write_json,
)


def add(sub, parent) -> None:
    _, tasks = group(sub, "eval", parent, help="evaluate on a dataset (openvocab, refer, probe)")
    e = command(tasks, "openvocab", parent, func=run_openvocab,
                help="open-vocabulary segmentation mIoU, pixel accuracy and pointing on a COCO-style dataset")
    e.add_argument("--ann", type=existing("file"), help="COCO instances JSON (or --dataset/--root)")
    e.add_argument("--images", type=existing("folder"), help="image folder")
    e.add_argument("--dataset", choices=DATASETS, help="a dataset by name (dense.segdata); class names are the queries")
    e.add_argument("--root", type=existing("folder"), help="the --dataset's root folder")
    add_model(e)
    add_method(e, many=True)
    e.add_argument("--split", default=None, help="only images of this split (the images' 'split' field), e.g. val")
    e.add_argument("--background", default=None,
                   help="a probability threshold, or comma-separated background prompts "
                        "(default: the checkpoint's calibrated threshold)")
    add_templates(e)
    e.add_argument("--sweep", default="", help="comma-separated background thresholds to sweep too (mIoU each)")
    e.add_argument("--refine", default="none",
                   help="comma-separated refinements to score each method with too: none, pamr (dense.refine)")
    e.add_argument("--windows", type=int, default=1,
                   help="sliding windows: n x n overlapping crops, each at the token budget, scores averaged")
    e.add_argument("--choose", type=float, default=None, metavar="GUARD",
                   help="print the (method, threshold) with the best mIoU among settings whose pixel accuracy is "
                        "within GUARD (a fraction, e.g. 0.02) of the best; choose on val, report test")
    e.add_argument("--calibration-out", default=None,
                   help="with --choose: write the choice as a dense_calibration.json (an existing file's other "
                        "keys, e.g. box_threshold, are kept)")
    add_bootstrap(e)
    e.add_argument("--limit", type=int, default=None, help="first N images only")
    add_max_patches(e)
    add_runtime(e)
    e.add_argument("--out", default=None, help="JSON to write (atomically)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    add_probe(tasks, parent)

    r = command(tasks, "refer", parent, func=run_refer,
                help="referring-expression localization (Acc@0.5, pointing) on RefCOCO-style refs")
    r.add_argument("--ann", required=True, type=existing("file"), help="COCO instances JSON")
    r.add_argument("--refs", required=True, type=existing("file"),
                   help="refs in the RefCOCO layout (JSON, or the official refs(unc).p)")
    r.add_argument("--images", required=True, type=existing("folder"), help="image folder")
    r.add_argument("--split", default="val", help="the refs' split to evaluate ('all' for every split)")
    add_model(r)
    add_method(r, many=True)
    r.add_argument("--scorers", default="map-box,heatmap-mean",
                   help="comma-separated candidate scorers (map-box, heatmap-mean, crop)")
    r.add_argument("--box-threshold", type=float, default=None,
                   help="relative threshold in [0, 1] for the box without candidates (default: the checkpoint's "
                        "calibrated one)")
    r.add_argument("--thresholds", default="0.2,0.3,0.4,0.5,0.6,0.7,0.8", help="box thresholds to sweep")
    r.add_argument("--choose", action="store_true",
                   help="print the box threshold with the best Acc@0.5 (no candidates) per method")
    r.add_argument("--calibration-out", default=None,
                   help="with --choose: write the first method's box threshold into this dense_calibration.json "
                        "(its other keys are kept)")
    add_bootstrap(r)
    add_templates(r)
    r.add_argument("--limit", type=int, default=None, help="first N images only")
    add_max_patches(r)
    add_runtime(r)
    r.add_argument("--out", default=None, help="JSON to write (atomically)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def add_bootstrap(p) -> None:
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap draws for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")


def ci(res, name: str) -> str:
    """``41.2 [38.0, 44.5]``: a figure and its bootstrap interval, in percent."""
    v = res.figures.get(name, float("nan"))
    lo, hi = res.intervals.get(name, (float("nan"), float("nan")))
    return f"{pct(v).strip()} [{pct(lo).strip()}, {pct(hi).strip()}]"


def _write_calibration(path, updates: dict) -> None:
    import json
    from pathlib import Path

    from dense._atomic import write_json as _write

    data = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    data.update(updates)
    print(f"wrote {_write(path, data, indent=2)}")


def _methods(args, enc) -> list[str] | None:
    from dense.heatmap import METHODS, supported_methods

    methods = parse_methods(args.methods, enc)
    if args.methods == "all":
        skipped = sorted(set(METHODS) - set(supported_methods(enc)))
        if skipped:
            print(f"note: {', '.join(skipped)} need the input of the last block, which a {enc.num_layers}-block "
                  f"tower's FeatureMaps do not hold: computed from each image instead")
    return methods


def run_openvocab(args) -> int:
    from dense.eval.openvocab import evaluate_openvocab

    ann = _named_dataset(args) or args.ann
    enc = load(args)
    res = evaluate_openvocab(enc, ann, args.images, methods=_methods(args, enc),
                             background=parse_background(args.background), templates=parse_templates(args.templates),
                             split=args.split, limit=args.limit, max_patches=args.max_patches,
                             background_thresholds=parse_floats(args.sweep, "--sweep"),
                             refines=[r.strip() for r in args.refine.split(",") if r.strip()], windows=args.windows,
                             resamples=args.resamples, seed=args.seed, progress=not args.quiet)
    print(format_openvocab(res))
    if args.choose is not None:
        from dense.eval.openvocab import choose_setting

        c = choose_setting(res, guard=args.choose)
        res.meta["chosen"] = c
        print(format_choice(c, res))
        if args.calibration_out:
            refine = "pamr" if c["method"].endswith("+pamr") else "none"
            if refine != "none":
                print("note: the choice refines with PAMR, which a calibration file cannot say; writing its method")
            _write_calibration(args.calibration_out, {
                "method": c["method"].removesuffix("+pamr"), "background": c["background"],
                "templates": res.meta["templates"], "max_patches": res.meta["max_patches"],
                "measured": {"split": res.meta["split"], "images": res.meta["images"], "ann": res.meta["ann"],
                             "mIoU": c["mIoU"], "mIoU_interval": c["mIoU_interval"], "pixel_acc": c["pixel_acc"],
                             "pixel_acc_interval": c["pixel_acc_interval"], "guard": c["guard"],
                             "windows": res.meta["windows"], "refine": refine}})
    write_json(args.out, res.to_json())
    return 0


def format_choice(c: dict, res) -> str:
    iv = c["mIoU_interval"] or (float("nan"),) * 2
    pv = c["pixel_acc_interval"] or (float("nan"),) * 2
    return (f"chosen on split {res.meta['split']} ({res.meta['max_patches']} tokens): method {c['method']}, "
            f"background {c['background']}: mIoU {pct(c['mIoU']).strip()} [{pct(iv[0]).strip()}, "
            f"{pct(iv[1]).strip()}], pixel accuracy {pct(c['pixel_acc']).strip()} [{pct(pv[0]).strip()}, "
            f"{pct(pv[1]).strip()}] (best pixel accuracy {pct(c['best_pixel_acc']).strip()}, guard "
            f"{100 * c['guard']:g} points, {c['eligible']} settings eligible)")


def format_openvocab(res) -> str:
    m = res.meta
    settings = m.get("settings", m["methods"])
    lines = [f"open-vocabulary segmentation: {m['images']} images of split {m['split']}, {m['max_patches']} tokens, "
             f"windows {m.get('windows', 1)}, background {m['background']}, templates {m['templates']}",
             f"{'method':<32}{'mIoU % [95% CI]':>20}{'pixAcc % [95% CI]':>20}{'pointing % [95% CI]':>22}{'points':>8}"]
    for s in settings:
        lines.append(f"{s:<32}{ci(res, f'{s}/mIoU'):>20}{ci(res, f'{s}/pixel_acc'):>20}"
                     f"{ci(res, f'{s}/pointing'):>22}{m['points'][s]:>8}")
    if m["thresholds"]:
        lines += ["", "by background threshold: mIoU % [95% CI] / pixel accuracy %"]
        for s in settings:
            lines.append(f"{s:<32}" + "  ".join(f"{t}: {ci(res, f'{s}/mIoU@thr={t}')} / "
                                                f"{pct(res.figures[f'{s}/pixel_acc@thr={t}']).strip()}"
                                                for t in m["thresholds"]))
    lines.append("mIoU: mean over classes of intersection / union, pixels of the whole split; pointing: the share of "
                 "(image, class present) pairs whose peak patch lies inside that class's mask. Intervals: "
                 f"percentile bootstrap over images ({m['bootstrap']['resamples']} draws, seed "
                 f"{m['bootstrap']['seed']}), the same draws for every setting.")
    return "\n".join(lines)


def run_refer(args) -> int:
    from dense.eval.refer import evaluate_refer

    enc = load(args)
    res = evaluate_refer(enc, args.ann, args.refs, args.images, split=None if args.split == "all" else args.split,
                         methods=_methods(args, enc), scorers=[s.strip() for s in args.scorers.split(",") if s.strip()],
                         box_thresholds=parse_floats(args.thresholds, "--thresholds"), box_threshold=args.box_threshold,
                         templates=parse_templates(args.templates), limit=args.limit, max_patches=args.max_patches,
                         resamples=args.resamples, seed=args.seed, progress=not args.quiet)
    print(format_refer(res))
    if args.choose:
        from dense.eval.refer import choose_box_threshold

        for i, meth in enumerate(res.meta["methods"]):
            t = choose_box_threshold(res, meth)
            res.meta.setdefault("chosen", {})[meth] = t
            print(f"chosen box threshold for {meth} on split {res.meta['split']}: {t} (Acc@0.5 "
                  f"{ci(res, f'none/{meth}/-/acc@0.5@thr={t}')})")
            if i == 0 and args.calibration_out:
                _write_calibration(args.calibration_out, {"box_threshold": t})
    write_json(args.out, res.to_json())
    return 0


def format_refer(res) -> str:
    """The figures of :func:`dense.eval.refer.evaluate_refer` as a plain-text table (percentages)."""
    from dense.eval.refer import config_key

    m, f = res.meta, res.figures
    ways = [config_key("none", "centre-prior")]
    ways += [config_key("none", meth) for meth in m["methods"]]
    ways += [config_key("none", meth, "components+map-box") for meth in m["methods"]]
    ways += [config_key("gt-boxes", meth, s) for meth in m["methods"] for s in m["scorers"]]
    ways.append(config_key("gt-boxes", "-", "random"))
    head = f"{'Acc@0.5':>8}{'point':>7}{'ctr-pt':>8}"
    lines = [f"referring expressions: {m['expressions']} expressions ({m['refs_count']} refs) on {m['images']} images "
             f"of split {m['split']}; {m['expressions_multi']} on images with >= 2 objects; {m['max_patches']} tokens",
             f"{'':<53}{'all expressions':>23}{'images with >= 2 objects':>26}",
             f"{'candidates':<11}{'method':<22}{'scorer':<20}{head}  {head}   "
             f"{'Acc@0.5 [95% CI]':>18}{'point [95% CI]':>20}   (%)"]
    for way in ways:
        setting, meth, scorer = way.split("/")
        cols = (("acc@0.5", 8), ("pointing", 7), ("pointing_box_centre", 8))
        cells = "  ".join("".join(pct(f.get(f"{p}{way}/{k}", float("nan"))).rjust(w) for k, w in cols)
                          for p in ("", "multi/"))
        cells += f"   {ci(res, f'{way}/acc@0.5'):>18}{ci(res, f'{way}/pointing'):>20}"
        thr = setting == "none" and scorer == "-" and meth != "centre-prior"
        note = f"  (box threshold {m['box_threshold']})" if thr else ""
        lines.append(f"{setting:<11}{meth:<22}{scorer:<20}{cells}{note}")
    lines.append("Acc@0.5: the box overlaps the target's box with IoU >= 0.5; point: the answer's point lies in the "
                 "target's mask (the pointing game); ctr-pt: the centre of the answer's box does. Intervals: "
                 f"percentile bootstrap over expressions ({m['bootstrap']['resamples']} draws, seed "
                 f"{m['bootstrap']['seed']}).")
    if m["thresholds"]:
        lines += ["", "Acc@0.5 % without candidates, by relative box threshold:",
                  f"{'method':<22}" + "".join(f"{t:>7}" for t in m["thresholds"])]
        for meth in m["methods"]:
            lines.append(f"{meth:<22}" + "".join(
                pct(f[f"{config_key('none', meth)}/acc@0.5@thr={t}"]).rjust(7) for t in m["thresholds"]))
    sec = m["seconds"]
    lines.append(f"\nextraction {sec['extract']:.1f} s, localization {sec['localize']:.1f} s (all methods, scorers, "
                 f"thresholds)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# dense eval probe


def _named_dataset(args):
    """The ``--dataset/--root`` dataset, or None when ``--ann/--images`` are given instead."""
    if args.dataset is None:
        if args.ann is None or args.images is None:
            raise DenseError("give --ann FILE --images DIR, or --dataset NAME --root DIR")
        return None
    if args.root is None or args.ann is not None:
        raise DenseError("--dataset takes --root DIR (and no --ann)")
    from dense.segdata import load_dataset

    return load_dataset(args.dataset, args.root)


def add_probe(tasks, parent) -> None:
    from dense.cli import probe

    p = command(tasks, "probe", parent, func=run_probe,
                help="linear-probe segmentation on a dataset by name: extract (cached), sweep, choose on a seeded "
                     "holdout of the training split, report the test split once (mIoU, pixel accuracy, per class)")
    add_model(p)
    p.add_argument("--dataset", required=True, choices=DATASETS, help="the dataset (dense.segdata)")
    p.add_argument("--root", required=True, type=existing("folder"), help="its root folder")
    p.add_argument("--cache", default="dense-cache", help="feature cache root (resumable)")
    p.add_argument("--holdout", type=float, default=0.1, metavar="FRACTION",
                   help="share of the training split held out to choose the head on")
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--train-split", default=None, help="default: the dataset's training split")
    p.add_argument("--test-split", default=None, help="default: the dataset's reported split (val/validation)")
    probe.sweep_options(p)
    add_max_patches(p)
    add_runtime(p)
    p.add_argument("--batch-size-extract", type=int, default=8)
    p.add_argument("--no-extract", action="store_true", help="fail on features missing from the cache")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a report")
    p.add_argument("--out", default=None, help="save the chosen probe (.safetensors)")
    p.add_argument("--json", default=None, help="write the figures here (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_probe(args) -> int:
    from dense.cli.probe import sweep_and_report
    from dense.segdata import PROTOCOLS

    train, test = PROTOCOLS[args.dataset]
    args.train_split = args.train_split or train
    args.test_split = args.test_split or test
    args.ann = args.images = args.voc = args.ade20k = None
    sweep_and_report(args, "fit", "holdout", args.test_split,
                     meta={"task": "probe", "dataset": args.dataset, "root": str(args.root)})
    return 0
