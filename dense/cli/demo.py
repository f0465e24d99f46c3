"""``dense demo``: every part of dense on one page (offline on the bundled model, or on your photos)."""

from __future__ import annotations

from pathlib import Path

from dense.cli._args import (
    MIN_SYNTHETIC_IMAGES,
    add_max_patches,
    add_model,
    add_runtime,
    at_least,
    command,
    existing,
    finish,
    opt,
    out_folder,
    positive_int,
    query,
    runtime,
)

DESCRIPTION = ("Draws a small synthetic world of coloured shapes, loads the bundled shapes-tiny-v2 SigLIP and "
               "writes PCA feature images, open-vocabulary heatmaps, a linear-probe segmentation with its test mIoU "
               "and referring-expression boxes with Acc@0.5 to OUT/index.html. With --images and --queries it does "
               "the same on your own photos, without the parts that need labels.")


def add(sub, parent) -> None:
    p = command(sub, "demo", parent, func=run,
                help="run everything on a synthetic world (offline) or on your photos",
                description=DESCRIPTION)
    opt(p, "--out", "a folder (index.html and its figures)", default="dense-demo", type=out_folder)
    add_model(p, required=False, default="shapes-tiny-v2")
    opt(p, "--images", "your own photos", type=existing("folder"), needs="--queries")
    opt(p, "--queries", "what to look for in your photos", nargs="+", type=query, needs="--images")
    opt(p, "--n-images", type=at_least(MIN_SYNTHETIC_IMAGES), default=120)
    opt(p, "--seed", "the synthetic world", type=int, default=0)
    opt(p, "--max-images", type=positive_int, default=4)
    add_max_patches(p, "default: the checkpoint's, at least 256 for the linear probe")
    add_runtime(p)


def run(args) -> int:
    from dense.demo import format_summary, run_demo

    summary = run_demo(args.out, model=args.model, images=args.images, queries=args.queries, n_images=args.n_images,
                       seed=args.seed, max_images=args.max_images, max_patches=args.max_patches,
                       **runtime(args))
    return finish(f"{format_summary(summary)}\ndense demo: results in {Path(args.out).resolve() / 'index.html'} "
                  f"({summary['seconds']} s)")
