"""Choose a checkpoint's ``found_threshold`` on val of one synthetic world, report it on test of another.

    python scripts/measure_found_threshold.py --model shapes-tiny-v2 --choose-seed 1414 --report-seed 2026 \
        --calibration-out dense/checkpoints/shapes-tiny-v2/dense_calibration.json

Draws ``make_shapes(dir, --images, seed, splits={"val": 0.5, "test": 0.5})`` twice: the threshold with the best
balanced rate (:func:`dense.eval.found.choose_found_threshold`) on the val split of the ``--choose-seed`` world, then
the found rate on present expressions and the not-found rate on absent ones at that threshold on the test split of the
``--report-seed`` world (a seed that chose nothing), also per kind of absence (what of the absent expression the image
holds: its colour, its shape, both on different objects, or neither; ``dense.eval.found.ABSENCE_KINDS``). Prints two
tables; ``--calibration-out`` writes ``found_threshold`` and a ``measured.found_threshold`` entry (command, seeds,
splits, figures) into that calibration file.

``--threshold T`` chooses nothing: it reports the rates at T (say, the calibration's own ``found_threshold``) on the
``--report-seed`` world's test split, per kind of absence too; ``--calibration-out`` then adds them as
``measured.found_threshold.at_threshold`` (its own command and figures) and changes nothing else in the file:

    python scripts/measure_found_threshold.py --model shapes-tiny-v2 --threshold 0.09 --report-seed 2026 \
        --calibration-out dense/checkpoints/shapes-tiny-v2/dense_calibration.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _world(folder: Path, n_images: int, seed: int):
    """A fresh world, opened (dense.eval.data.open_data) with its referring expressions."""
    from dense import datasets
    from dense.eval.data import open_data

    datasets.make_shapes(folder, n_images, seed=seed, splits={"val": 0.5, "test": 0.5})
    return open_data(ann=folder / "annotations.json", images=folder / "images", refs=folder / "refs.json")


def _entry(res, seed, split, figures) -> dict:
    out = {"seed": seed, "split": split, "images": res.meta["images"], "present": res.meta["present"],
           "absent": res.meta["absent"], "absent_by_kind": res.meta["absent_by_kind"],
           **{k: round(v, 3) for k, v in figures.items()}}
    if figures is res.figures:
        out["intervals"] = {k: [round(x, 3) for x in v] for k, v in res.intervals.items()}
    return out


def _print_kinds(named_entries) -> None:
    from dense.eval.found import ABSENCE_KINDS

    print("not found, per kind of absence (what of the absent expression the image holds):")
    print(f"  {'world':<26} " + " ".join(f"{k:>18}" for k in ABSENCE_KINDS))
    for name, e in named_entries:
        cells = [f"{100 * e[f'not_found|absent/{k}']:5.1f}% of {e['absent_by_kind'][k]:>5}"
                 if k in e["absent_by_kind"] else "-" for k in ABSENCE_KINDS]
        print(f"  {name:<26} " + " ".join(f"{c:>18}" for c in cells))


def _at_threshold(enc, args, command: str) -> dict:
    """``--threshold``: the rates at it on the report world, nothing chosen; the calibration gains only this entry."""
    from dense.eval.found import evaluate_found

    with tempfile.TemporaryDirectory(prefix="dense-found-") as tmp:
        report = evaluate_found(enc, _world(Path(tmp) / "report", args.images, args.report_seed), split="test",
                                threshold=args.threshold, progress=True)
    measured = {"command": command, "model": args.model, "max_patches": report.meta["max_patches"],
                "threshold": args.threshold,
                "world": f"make_shapes(dir, {args.images}, seed, splits={{'val': 0.5, 'test': 0.5}})",
                "reported_on": _entry(report, args.report_seed, "test", report.figures)}
    e = measured["reported_on"]
    print(f"at threshold {args.threshold} ({args.model}; nothing chosen)")
    print(f"  {'world':<26} {'present':>8} {'found':>8} {'absent':>8} {'not found':>10}")
    print(f"  {f'test, seed {args.report_seed}':<26} {e['present']:>8} {100 * e['found|present']:>7.1f}% "
          f"{e['absent']:>8} {100 * e['not_found|absent']:>9.1f}%")
    _print_kinds([(f"test, seed {args.report_seed}", e)])
    if args.calibration_out is not None:
        from dense._atomic import write_json

        data = json.loads(args.calibration_out.read_text()) if args.calibration_out.exists() else {}
        data.setdefault("measured", {}).setdefault("found_threshold", {})["at_threshold"] = measured
        print(f"wrote {write_json(args.calibration_out, data, indent=2)}")
    return measured


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-tiny-v2", help="checkpoint name, folder or hub id")
    parser.add_argument("--images", type=int, default=400, help="images per synthetic world (half val, half test)")
    parser.add_argument("--choose-seed", type=int, help="seed of the world whose val split chooses")
    parser.add_argument("--threshold", type=float, help="report at this threshold; choose none (no --choose-seed)")
    parser.add_argument("--report-seed", type=int, required=True, help="seed of the world whose test split reports")
    parser.add_argument("--calibration-out", type=Path, help="calibration JSON to write found_threshold into")
    args = parser.parse_args(argv)
    if (args.threshold is None) == (args.choose_seed is None):
        parser.error("give --choose-seed (choose a threshold, then report it) or --threshold (report at it)")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold is a probability in [0, 1], got {args.threshold}")
    if args.choose_seed == args.report_seed:
        parser.error("--report-seed must differ from --choose-seed: a figure is never reported on the seed that "
                     "chose it")
    if args.images < 2:
        parser.error(f"--images must be at least 2 (one val and one test image), got {args.images}")

    import dense
    from dense.eval.found import choose_found_threshold, evaluate_found, rates_at

    enc = dense.load_encoder(args.model)
    command = "python scripts/measure_found_threshold.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]) if a)
    if args.threshold is not None:
        return _at_threshold(enc, args, command)
    with tempfile.TemporaryDirectory(prefix="dense-found-") as tmp:
        chooser = evaluate_found(enc, _world(Path(tmp) / "choose", args.images, args.choose_seed), split="val",
                                 threshold=0.0, progress=True)
        threshold = choose_found_threshold(chooser)
        report = evaluate_found(enc, _world(Path(tmp) / "report", args.images, args.report_seed), split="test",
                                threshold=threshold, progress=True)

    measured = {"command": command, "model": args.model, "max_patches": report.meta["max_patches"],
                "world": f"make_shapes(dir, {args.images}, seed, splits={{'val': 0.5, 'test': 0.5}})",
                "rule": "best balanced rate (mean of found|present and not_found|absent) on the chooser's val, "
                        "thresholds 0.01..0.99",
                "chosen_on": _entry(chooser, args.choose_seed, "val", rates_at(chooser, threshold)),
                "reported_on": _entry(report, args.report_seed, "test", report.figures)}
    print(f"found_threshold for {args.model}: {threshold}  (chosen on val, seed {args.choose_seed})")
    print(f"  {'world':<26} {'present':>8} {'found':>8} {'absent':>8} {'not found':>10}")
    for name, e in ((f"val, seed {args.choose_seed} (chose)", measured["chosen_on"]),
                    (f"test, seed {args.report_seed} (report)", measured["reported_on"])):
        print(f"  {name:<26} {e['present']:>8} {100 * e['found|present']:>7.1f}% {e['absent']:>8} "
              f"{100 * e['not_found|absent']:>9.1f}%")
    _print_kinds([(f"val, seed {args.choose_seed} (chose)", measured["chosen_on"]),
                  (f"test, seed {args.report_seed} (report)", measured["reported_on"])])
    if args.calibration_out is not None:
        from dense._atomic import write_json

        data = json.loads(args.calibration_out.read_text()) if args.calibration_out.exists() else {}
        data["found_threshold"] = threshold
        data.setdefault("measured", {})["found_threshold"] = measured
        print(f"wrote {write_json(args.calibration_out, data, indent=2)}")
    return {"found_threshold": threshold, **measured}


if __name__ == "__main__":
    main()
