"""Heatmap scores of a bf16 tower against an fp32 tower with the same weights: per-map correlation, per method.

    python benchmarks/heatmap_dtype.py [--model shapes-tiny-v2] [--images 6] [--seed 7] [--json out.json]

Both encoders are ``dense.load_encoder(model, dtype=...)`` of one checkpoint; the images are the first of a synthetic
world (:func:`dense.datasets.make_shapes` with ``--seed``) and the queries the names of the categories each image
shows, topped up to three. For every method of :mod:`dense.heatmap` (the default and the experimental registry),
each (image, query) map of :func:`dense.heatmap.patch_scores` from the bf16 tower is compared with the fp32 tower's:
Pearson correlation over the map's patches and the largest absolute difference of the probabilities. Prints one row
per method (min / median correlation, max |diff|) and the CPU; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def cpu_name() -> str:
    from dense.device import cpu_model_and_flags  # the one reader of the CPU's description

    return cpu_model_and_flags()[0]


def all_methods() -> list[str]:
    from dense import heatmap

    # trees before the experimental registry have only METHODS
    return [*heatmap.METHODS, *getattr(heatmap, "EXPERIMENTAL_METHODS", {})]


def world_images(n: int, seed: int, work: Path) -> list[tuple[np.ndarray, list[str]]]:
    """The first ``n`` images of a synthetic world with the names of the categories each shows (at least three)."""
    from dense import coco
    from dense.datasets import make_shapes
    from dense.preprocess import load_image

    make_shapes(work, n, seed=seed, splits={"test": 1.0})
    ds = coco.load_coco(work / "annotations.json", work / "images")
    out = []
    for iid in ds.ids()[:n]:
        present = sorted({ds.class_names[k] for k in ds.class_masks(iid) if k > 0})
        extra = [c for c in ds.class_names[1:] if c not in present]
        out.append((load_image(ds.image_path(iid)), (present + extra)[:max(3, len(present))]))
    return out


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps (1.0 when both are constant and equal)."""
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float(torch.allclose(a, b))


def compare(model: str, images, methods) -> list[dict]:
    """One row per method: min / median per-map correlation and max |diff| between the bf16 and fp32 towers."""
    import dense
    from dense.heatmap import patch_scores

    fp32, bf16 = dense.load_encoder(model, dtype="fp32"), dense.load_encoder(model, dtype="bf16")
    rows = []
    for m in methods:
        corr, diff = [], 0.0
        for rgb, queries in images:
            a = patch_scores(fp32, rgb, queries, method=m)  # [T, gh, gw]
            b = patch_scores(bf16, rgb, queries, method=m)
            corr += [correlation(x, y) for x, y in zip(a, b, strict=True)]
            diff = max(diff, float((a - b).abs().max()))
        rows.append({"method": m, "maps": len(corr), "min_corr": min(corr), "median_corr": float(np.median(corr)),
                     "max_abs_diff": diff})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapes-tiny-v2")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        images = world_images(args.images, args.seed, Path(tmp))
    rows = compare(args.model, images, all_methods())
    print(f"{args.model}, {args.images} images (make_shapes seed {args.seed}), {rows[0]['maps']} maps per method; "
          f"CPU {cpu_name()}, torch {torch.__version__}")
    print(f"{'method':<28}{'min corr':>10}{'median corr':>13}{'max |diff|':>12}")
    for r in rows:
        print(f"{r['method']:<28}{r['min_corr']:>10.4f}{r['median_corr']:>13.4f}{r['max_abs_diff']:>12.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "images": args.images, "seed": args.seed,
                                               "cpu": cpu_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
