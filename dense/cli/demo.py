"""``dense demo``: every part of dense on one page (offline on the bundled model, or on your photos)."""

from __future__ import annotations

from pathlib import Path

from dense.cli._args import add_model, command

DESCRIPTION = ("Draws a small synthetic world of coloured shapes, loads the bundled shapes-tiny-v2 SigLIP and "
               "writes PCA feature images, open-vocabulary heatmaps, a linear-probe segmentation with its test mIoU "
               "and referring-expression boxes with Acc@0.5 to OUT/index.html. With --images and --queries it does "
               "the same on your own photos, without the parts that need labels.")


def add(sub, parent) -> None:
    p = command(sub, "demo", parent, func=run,
                help="run everything on a synthetic world (offline) or on your photos",
                description=DESCRIPTION)
    p.add_argument("--out", default="dense-demo", help="output folder")
    add_model(p, required=False, default="shapes-tiny-v2")
    p.add_argument("--images", help="a folder of your own photos (needs --queries)")
    p.add_argument("--queries", nargs="+", help="text queries, e.g. 'a dog' 'a red car'")
    p.add_argument("--n-images", type=int, default=120, help="synthetic images to draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--max-images", type=int, default=4, help="images (or photos) shown on the page")


def run(args) -> int:
    from dense.demo import format_summary, run_demo

    summary = run_demo(args.out, model=args.model, images=args.images, queries=args.queries, n_images=args.n_images,
                       seed=args.seed, max_images=args.max_images)
    print(format_summary(summary))
    print(f"dense demo: results in {Path(args.out).resolve() / 'index.html'} ({summary['seconds']} s)")
    return 0
