"""``dense heatmap`` and ``dense segment``: one image, text queries, a figure."""

from __future__ import annotations

from dense.cli._args import (
    add_max_patches,
    add_method,
    add_model,
    add_runtime,
    add_templates,
    command,
    existing,
    load,
    parse_background,
    parse_templates,
)


def add(sub, parent) -> None:
    p = command(sub, "heatmap", parent, func=run_heatmap,
                help="open-vocabulary heatmaps of text queries over an image (PNG figure)")
    p.add_argument("image", type=existing("file"))
    p.add_argument("queries", nargs="+", help="text queries, e.g. 'red circle' 'a dog'")
    add_model(p)
    add_method(p)
    add_templates(p)
    add_max_patches(p)
    add_runtime(p)
    p.add_argument("--out", default="heatmap.png", help="PNG to write")

    g = command(sub, "segment", parent, func=run_segment,
                help="open-vocabulary segmentation of one image (label-map PNG with legend)")
    g.add_argument("image", type=existing("file"))
    g.add_argument("classes", nargs="+", help="class names, e.g. 'red circle' 'blue star'")
    add_model(g)
    add_method(g)
    add_templates(g)
    g.add_argument("--background", default=None,
                   help="a probability threshold (0: every pixel gets a class), or comma-separated background prompts "
                        "(default: the checkpoint's calibrated threshold)")
    add_max_patches(g)
    add_runtime(g)
    g.add_argument("--out", default="segment.png", help="PNG to write")


def run_heatmap(args) -> int:
    from dense import viz
    from dense.heatmap import patch_scores, to_image_size, with_aligned
    from dense.preprocess import load_image

    enc = load(args)
    fmap = with_aligned(enc, args.image, args.method, max_patches=args.max_patches)
    scores = to_image_size(patch_scores(enc, fmap, args.queries, method=args.method,
                                   templates=parse_templates(args.templates)), fmap)  # [T, H, W]
    fig = viz.heatmaps(load_image(args.image), scores.numpy(), args.queries)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


def run_segment(args) -> int:
    from dense import viz
    from dense.openvocab import segment
    from dense.preprocess import load_image

    enc = load(args)
    labels = segment(enc, args.image, args.classes, background=parse_background(args.background), method=args.method,
                     templates=parse_templates(args.templates), max_patches=args.max_patches)
    viz.label_map(load_image(args.image), labels, args.classes).savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0
