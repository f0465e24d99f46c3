"""``dense eval openvocab | refer | probe``: the evaluators of :mod:`dense.eval` as tables and JSON.

Each command maps its flags to one evaluator call and prints its Result; ``--json`` writes it.
"""

from __future__ import annotations

from dense.cli import probe as probe_cli
from dense.cli._args import (
    REFINES,
    SCORERS,
    add_dataset,
    add_json,
    add_max_patches,
    add_method,
    add_model,
    add_quiet,
    add_runtime,
    add_templates,
    background,
    command,
    command_line,
    existing,
    finish,
    fraction,
    fractions,
    group,
    load,
    one_of,
    open_fraction,
    opt,
    pct,
    plural,
    positive_int,
    runtime,
    tensors_file,
    write_json,
)
from dense.errors import DenseError


def add(sub, parent) -> None:
    _, tasks = group(sub, "eval", parent, help="evaluate on a dataset (openvocab, refer, probe)")
    e = command(tasks, "openvocab", parent, func=run_openvocab,
                help="open-vocabulary segmentation mIoU, pixel accuracy and pointing on a COCO-style dataset")
    opt(e, "--ann", "or --dataset/--root", type=existing("file"))
    opt(e, "--images", type=existing("folder"))
    add_dataset(e)
    add_model(e)
    add_method(e, many=True)
    opt(e, "--split", "default: every image; 'all' is the same")
    opt(e, "--background", type=background)
    add_templates(e)
    opt(e, "--sweep", "background thresholds in [0, 1]", type=fractions, metavar="THRESHOLDS")
    opt(e, "--refine", type=one_of(REFINES, "refinement", many=True))
    opt(e, "--windows", type=positive_int)
    opt(e, "--choose", "the (method, refinement, background threshold) with the best mIoU among settings whose pixel "
                       "accuracy is within --guard of the best", action="store_true")
    opt(e, "--guard", type=fraction, default=0.02)
    opt(e, "--calibration-out", "method, refinement, windows, threshold, templates and budget, with what they "
                                "measured", needs="--choose")
    add_bootstrap(e)
    opt(e, "--limit", type=positive_int)
    add_max_patches(e)
    add_runtime(e)
    add_json(e)
    add_quiet(e)
    with_layouts(e)

    add_probe(tasks, parent)

    r = command(tasks, "refer", parent, func=run_refer,
                help="referring-expression localization (Acc@0.5, pointing) on RefCOCO-style refs")
    opt(r, "--ann", required=True, type=existing("file"))
    opt(r, "--refs", required=True, type=existing("file"))
    opt(r, "--images", required=True, type=existing("folder"))
    opt(r, "--split", "'all' for every split", default="val")
    add_model(r)
    add_method(r, many=True)
    opt(r, "--scorers", type=one_of(SCORERS, "candidate scorer", many=True), default="map-box,heatmap-mean")
    opt(r, "--box-threshold", type=fraction)
    opt(r, "--sweep", "relative box thresholds in [0, 1]", type=fractions, default="0.2,0.3,0.4,0.5,0.6,0.7,0.8",
        metavar="THRESHOLDS")
    opt(r, "--choose", "the box threshold with the best Acc@0.5 (no candidates) per method", action="store_true")
    opt(r, "--calibration-out", "the first method's box threshold, with what it measured", needs="--choose")
    add_bootstrap(r)
    add_templates(r)
    opt(r, "--limit", type=positive_int)
    add_max_patches(r)
    add_runtime(r)
    add_json(r)
    add_quiet(r)


def add_bootstrap(p) -> None:
    opt(p, "--resamples", type=positive_int, default=1000)
    opt(p, "--seed", "the bootstrap draws", type=int, default=0)


def ci(res, name: str) -> str:
    """``41.2 [38.0, 44.5]``: a figure and its bootstrap interval, in percent."""
    v = res.figures.get(name, float("nan"))
    lo, hi = res.intervals.get(name, (float("nan"), float("nan")))
    return f"{pct(v).strip()} [{pct(lo).strip()}, {pct(hi).strip()}]"


def _methods(args) -> list[str] | None:
    """``--methods``: None (calibrated), 'all' (every method of dense.heatmap.METHODS); each checked before the
    model loads."""
    from dense.heatmap import METHODS, get_method

    if args.methods is None:
        return None
    if args.methods == ["all"]:
        return list(METHODS)
    return [get_method(m).name for m in args.methods]  # an unknown name raises naming the choices


def _note_from_image(methods, enc) -> None:
    from dense.heatmap import supported_methods

    skipped = sorted(set(methods or ()) - set(supported_methods(enc, experimental=True)))
    if skipped:
        print(f"note: {', '.join(skipped)} need the input of the last block, which a {enc.num_layers}-block "
              f"tower's FeatureMaps do not hold: computed from each image instead")


def _check_choose(args) -> None:
    """A calibration holds a threshold, not background prompts (``--calibration-out`` needs ``--choose``: the
    parser checks that)."""
    if args.calibration_out and isinstance(getattr(args, "background", None), list):
        raise DenseError("--calibration-out: a calibration holds a background threshold, not prompts "
                         f"{args.background}: give --background as a number")


def bootstrap(args):
    from dense.eval.settings import Bootstrap

    return Bootstrap(resamples=args.resamples, seed=args.seed)


def run_openvocab(args) -> int:
    from dense.eval.data import open_data
    from dense.eval.openvocab import evaluate_openvocab
    from dense.eval.settings import OpenVocabScoring

    _check_choose(args)
    if (args.dataset is None) == (args.ann is None):
        raise DenseError("give --ann FILE --images DIR, or --dataset NAME --root DIR")
    # the data, its split and label files, and every setting are checked before the model loads
    data = open_data(args.dataset, ann=args.ann, images=args.images, root=args.root, splits=[args.split],
                     progress=not args.quiet)
    bg = tuple(args.background) if isinstance(args.background, list) else args.background
    scoring = OpenVocabScoring(methods=_methods(args), refines=args.refine, windows=args.windows, background=bg,
                               templates=args.templates, thresholds=args.sweep or ())
    enc = load(args)
    _note_from_image(scoring.methods, enc)
    res = evaluate_openvocab(enc, data, split=args.split, scoring=scoring, extraction=probe_cli.extraction(args),
                             limit=args.limit, bootstrap=bootstrap(args), choose=args.choose, guard=args.guard,
                             progress=not args.quiet)

    def show() -> None:
        print(format_openvocab(res))
        if args.choose:
            print(format_choice(res.meta["chosen"], res))

    def calibration():
        if not args.calibration_out:
            return None
        from dense.eval import update_calibration
        from dense.eval.openvocab import calibration_from_choice

        entries = calibration_from_choice(res, res.meta["chosen"], command=command_line())
        return update_calibration(args.calibration_out, entries)

    return finish(show, calibration, lambda: write_json(args.json, res.to_json()))


def _edge_note(edge: str | None, what: str, flag: str) -> str:
    return (f"\n  note: the chosen {what} is the {edge} of the grid; the optimum may lie beyond it (widen {flag})"
            if edge else "")


def format_choice(c: dict, res) -> str:
    """A chosen open-vocabulary setting, whole (method, refinement, windows, background, templates), its figures
    and, where it lies there, the note that it is at the edge of the swept grid."""
    iv = c["mIoU_interval"] or (float("nan"),) * 2
    pv = c["pixel_acc_interval"] or (float("nan"),) * 2
    return (f"chosen on split {res.meta['split']} ({res.meta['max_patches']} tokens): {c['text']}: "
            f"mIoU {pct(c['mIoU']).strip()} [{pct(iv[0]).strip()}, "
            f"{pct(iv[1]).strip()}], pixel accuracy {pct(c['pixel_acc']).strip()} [{pct(pv[0]).strip()}, "
            f"{pct(pv[1]).strip()}] (best pixel accuracy {pct(c['best_pixel_acc']).strip()}, guard "
            f"{100 * c['guard']:g} points, {c['eligible']} settings eligible)"
            + _edge_note(c.get("threshold_at_grid_edge"), "background threshold", "--sweep"))


def format_openvocab(res) -> str:
    from dense.eval.settings import figure_name

    m = res.meta
    settings = m.get("settings", m["methods"])
    lines = [f"open-vocabulary segmentation: {plural(m['images'], 'image')} of split {m['split']}, "
             f"{m['max_patches']} tokens, windows {m.get('windows', 1)}, background {m['background']}, templates "
             f"{m['templates']}",
             f"{'method':<32}{'mIoU % [95% CI]':>20}{'pixAcc % [95% CI]':>20}{'pointing % [95% CI]':>22}{'points':>8}"]
    for s in settings:
        lines.append(f"{s:<32}{ci(res, figure_name(s, 'mIoU')):>20}{ci(res, figure_name(s, 'pixel_acc')):>20}"
                     f"{ci(res, figure_name(s, 'pointing')):>22}{m['points'][s]:>8}")
    if m["thresholds"]:
        lines += ["", "by background threshold: mIoU % [95% CI] / pixel accuracy %"]
        for s in settings:
            lines.append(f"{s:<32}" + "  ".join(f"{t}: {ci(res, figure_name(s, 'mIoU', t))} / "
                                                f"{pct(res.figures[figure_name(s, 'pixel_acc', t)]).strip()}"
                                                for t in m["thresholds"]))
    lines.append("mIoU: mean over classes of intersection / union, pixels of the whole split; pointing: the share of "
                 "(image, class present) pairs whose peak patch lies inside that class's mask. Intervals: "
                 f"percentile bootstrap over images ({m['bootstrap']['resamples']} draws, seed "
                 f"{m['bootstrap']['seed']}), the same draws for every setting.")
    return "\n".join(lines)


def run_refer(args) -> int:
    from dense.eval.data import open_data
    from dense.eval.refer import evaluate_refer
    from dense.eval.settings import ReferScoring

    _check_choose(args)
    # the files, the split's expressions and every setting are checked before the model loads
    data = open_data(ann=args.ann, images=args.images, refs=args.refs)
    data.load_refs(args.split)
    scoring = ReferScoring(methods=_methods(args), scorers=args.scorers, box_threshold=args.box_threshold,
                           thresholds=args.sweep, templates=args.templates)
    enc = load(args)
    _note_from_image(scoring.methods, enc)
    res = evaluate_refer(enc, data, split=args.split, scoring=scoring, extraction=probe_cli.extraction(args),
                         limit=args.limit, bootstrap=bootstrap(args), choose=args.choose, progress=not args.quiet)

    def show() -> None:
        print(format_refer(res))
        for c in res.meta.get("chosen", {}).values():
            iv = c["acc@0.5_interval"] or [float("nan")] * 2
            print(f"chosen on split {res.meta['split']}: {c['text']}: Acc@0.5 {pct(c['acc@0.5']).strip()} "
                  f"[{pct(iv[0]).strip()}, {pct(iv[1]).strip()}]"
                  + _edge_note(c["threshold_at_grid_edge"], "box threshold", "--sweep"))

    def calibration():
        if not args.calibration_out:
            return None
        from dense.eval import update_calibration
        from dense.eval.refer import box_threshold_calibration

        entries = box_threshold_calibration(res, res.meta["methods"][0], command=command_line())
        return update_calibration(args.calibration_out, entries)

    return finish(show, calibration, lambda: write_json(args.json, res.to_json()))


def format_refer(res) -> str:
    """The figures of :func:`dense.eval.refer.evaluate_refer` as a plain-text table (percentages)."""
    from dense.eval.refer import ways as ways_of
    from dense.eval.settings import Way, figure_name

    m, f = res.meta, res.figures
    ways = ways_of(m)
    head = f"{'Acc@0.5':>8}{'point':>7}{'ctr-pt':>8}"
    lines = [f"referring expressions: {plural(m['expressions'], 'expression')} ({plural(m['refs_count'], 'ref')}) on "
             f"{plural(m['images'], 'image')} of split {m['split']}; {m['expressions_multi']} on images with >= 2 "
             f"objects; {m['max_patches']} tokens",
             f"{'':<53}{'all expressions':>23}{'images with >= 2 objects':>26}",
             f"{'candidates':<11}{'method':<22}{'scorer':<20}{head}  {head}   "
             f"{'Acc@0.5 [95% CI]':>18}{'point [95% CI]':>20}   (%)"]
    for way in ways:
        setting, meth, scorer = way.candidates, way.method, way.scorer
        cols = (("acc@0.5", 8), ("pointing", 7), ("pointing_box_centre", 8))
        cells = "  ".join("".join(pct(f.get(figure_name(p, way.name(k)), float("nan"))).rjust(w) for k, w in cols)
                          for p in ("", "multi"))
        cells += f"   {ci(res, way.name('acc@0.5')):>18}{ci(res, way.name('pointing')):>20}"
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
                pct(f[Way("none", meth, threshold=t).name("acc@0.5")]).rjust(7) for t in m["thresholds"]))
    sec = m["seconds"]
    lines.append(f"\nextraction {sec['extract']:.1f} s, localization {sec['localize']:.1f} s (all methods, scorers, "
                 f"thresholds)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# dense eval probe


def with_layouts(p) -> None:
    """``--help`` of ``p`` ends with the dataset layouts of :mod:`dense.segdata` (imported only when asked)."""
    plain = p.format_help

    def format_help() -> str:
        from dense.segdata import LAYOUTS_HELP

        return plain() + "\n" + LAYOUTS_HELP + "\n"

    p.format_help = format_help


def add_probe(tasks, parent) -> None:
    from dense.cli import probe

    p = command(tasks, "probe", parent, func=run_probe,
                help="linear-probe segmentation on a dataset by name: extract (cached), sweep, choose on a seeded "
                     "holdout of the training split, report the test split once (mIoU, pixel accuracy, per class)")
    add_model(p)
    add_dataset(p, required=True)
    probe.add_cache(p)
    opt(p, "--holdout", type=open_fraction, default=0.1, metavar="FRACTION")
    opt(p, "--holdout-seed", type=int, default=0)
    opt(p, "--train-split", "default: the dataset's training split")
    opt(p, "--test-split", "default: the dataset's reported split (val/validation)")
    probe.sweep_options(p)
    add_max_patches(p)
    add_runtime(p)
    opt(p, "--batch-size", type=positive_int, default=8)
    opt(p, "--no-extract", action="store_true")
    opt(p, "--skip-bad", action="store_true")
    opt(p, "--out", "the chosen probe (.safetensors)", type=tensors_file)
    add_json(p)
    add_quiet(p)
    with_layouts(p)


def run_probe(args) -> int:
    from dense.cli import probe
    from dense.eval.data import open_data
    from dense.eval.probe import evaluate_linear_probe
    from dense.eval.settings import ProbeSplits
    from dense.segdata import PROTOCOLS

    data = open_data(args.dataset, root=args.root, on_error="skip" if args.skip_bad else "raise")
    splits = ProbeSplits(train=args.train_split, test=args.test_split or PROTOCOLS[args.dataset][1],
                         holdout=args.holdout, holdout_seed=args.holdout_seed)
    res = evaluate_linear_probe(args.model, data, cache=args.cache, splits=splits, extraction=probe.extraction(args),
                                training=probe.training(args), sharpening=probe.sharpening(args), preset=args.preset,
                                progress=not args.quiet, **runtime(args))
    probe.report(res, args.out, args.json)
    return 0
