"""Every heatmap method (the default and the experimental registry) on the report world: open-vocabulary mIoU and
pointing of both bundled models, through the open-vocabulary evaluator that ``dense eval openvocab`` runs.

    python benchmarks/heatmap_methods.py --world DIR [--limit 100] [--resamples 1000] [--json out.json]
    python benchmarks/heatmap_methods.py --world DIR --dtype fp32 --against bf16.json [--against ...]

``--against``: another run's ``--json`` (repeatable); per method, the largest difference from its figures is printed
too (a bf16 against an fp32 run: how much the tower's dtype moves each method's figures).

``--world``: a synthetic world of :func:`dense.datasets.make_shapes` (made there with ``--seed`` and ``--images`` if
it holds no ``annotations.json``); its ``test`` split is scored, first ``--limit`` images. Each model runs at its
calibration (background threshold, templates, token budget; dtype ``--dtype``), every method in one pass over the
images. Prints one row per method (mIoU and pointing per model, bootstrap 95% intervals; ``*`` marks the best of a
column) and writes the figures to ``--json``. ``scripts/readme_figures.py --only methods`` runs it for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODELS = ("shapes-tiny", "shapes-tiny-v2")
METRICS = ("mIoU", "pointing")


def all_methods() -> list[str]:
    from dense import heatmap

    return [*heatmap.METHODS, *getattr(heatmap, "EXPERIMENTAL_METHODS", {})]  # older trees: METHODS only


def measure(model: str, world: Path, *, limit: int, resamples: int, dtype: str = "auto") -> dict:
    """``{method: {metric: value, metric_95: [lo, hi]}}`` and the run's meta for one model."""
    import dense
    from dense.eval.data import open_data
    from dense.eval.openvocab import evaluate_openvocab
    from dense.eval.settings import Bootstrap, OpenVocabScoring, figure_name

    enc = dense.load_encoder(model, dtype=dtype)
    methods = all_methods()
    res = evaluate_openvocab(enc, open_data(ann=world / "annotations.json", images=world / "images"), split="test",
                             scoring=OpenVocabScoring(methods=methods, refines=["none"], windows=1), limit=limit,
                             bootstrap=Bootstrap(resamples=resamples))
    out = {m: {k: res.figures[figure_name(m, k)] for k in METRICS}
           | {f"{k}_95": list(res.intervals[figure_name(m, k)]) for k in METRICS} for m in methods}
    meta = {k: res.meta[k] for k in ("images", "background", "templates", "max_patches", "bootstrap", "seconds")}
    return {"methods": out, "meta": {**meta, "dtype": str(enc.dtype).removeprefix("torch.")}}


def table(results: dict) -> str:
    cols = [(m, k) for m in results for k in METRICS]
    best = {c: max(r[c[1]] for r in results[c[0]]["methods"].values()) for c in cols}
    head = f"{'method':<28}" + "".join(f"{m + ' ' + k:>34}" for m, k in cols)
    lines = [head]
    for method in all_methods():
        cells = []
        for m, k in cols:
            r = results[m]["methods"][method]
            lo, hi = r[f"{k}_95"]
            mark = "*" if r[k] == best[(m, k)] else " "
            cells.append(f"{100 * r[k]:>17.1f}{mark} [{100 * lo:5.1f}, {100 * hi:5.1f}]")
        lines.append(f"{method:<28}" + "".join(f"{c:>34}" for c in cells))
    return "\n".join(lines)


def differences(results: dict, other: dict) -> str:
    """Per method, the largest absolute difference (percentage points) of its figures from ``other``'s."""
    lines = [f"{'method':<28}{'max |diff| mIoU':>17}{'max |diff| pointing':>21}"]
    for method in all_methods():
        cells = [max(abs(r["methods"][method][k] - other[m]["methods"][method][k]) for m, r in results.items())
                 for k in METRICS]
        lines.append(f"{method:<28}" + "".join(f"{100 * c:>{w}.1f}" for c, w in zip(cells, (17, 21), strict=True)))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", required=True, help="a make_shapes folder (made here when it has no annotations)")
    ap.add_argument("--seed", type=int, default=31002, help="the world's seed when it is made here")
    ap.add_argument("--images", type=int, default=320, help="the world's size when it is made here")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--dtype", default="auto", help="the towers' dtype (auto: bf16 where the CPU runs it natively)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--against", action="append", default=[], help="another run's --json: print the differences "
                                                                    "from its figures (repeatable)")
    args = ap.parse_args(argv)
    world = Path(args.world)
    if not (world / "annotations.json").exists():
        from dense.datasets import make_shapes

        make_shapes(world, args.images, seed=args.seed, splits={"test": 1.0})
    results = {m: measure(m, world, limit=args.limit, resamples=args.resamples, dtype=args.dtype)
               for m in args.models.split(",")}
    print(table(results))
    for other in args.against:
        print(f"\ndifferences from {other}:")
        print(differences(results, json.loads(Path(other).read_text())["results"]))
    if args.json:
        from dense._atomic import write_json

        write_json(args.json, {"world": str(world), "limit": args.limit, "results": results}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
