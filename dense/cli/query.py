"""``dense heatmap``, ``dense segment`` and ``dense localize``: one image and text queries -> a figure (``--out``), a
table, and the same figures as JSON (``--json``)."""

from __future__ import annotations

from dense.cli._args import (
    add_json,
    add_max_patches,
    add_method,
    add_model,
    add_runtime,
    add_templates,
    background,
    command,
    existing,
    figure_file,
    finish,
    fraction,
    load,
    opt,
    pct,
    plural,
    query,
    save_figure,
    write_json,
)

FIGURE = "a figure; its extension names the format (.png, .pdf, .svg, .jpg, ...)"


def _image_and_queries(p, what: str, example: str) -> None:
    p.add_argument("image", type=existing("file"), help="the image (any format PIL reads)")
    p.add_argument("queries", nargs="+", type=query, metavar=what.upper(), help=f"{what}, e.g. {example}")
    add_model(p)
    add_method(p)
    add_templates(p)


def add(sub, parent) -> None:
    p = command(sub, "heatmap", parent, func=run_heatmap,
                help="open-vocabulary heatmaps of text queries over an image (PNG figure, peak table)")
    _image_and_queries(p, "queries", "'red circle' 'a dog'")
    add_max_patches(p)
    add_runtime(p)
    opt(p, "--out", FIGURE, default="heatmap.png", type=figure_file)
    add_json(p, "each query's peak probability and where it lies")

    g = command(sub, "segment", parent, func=run_segment,
                help="open-vocabulary segmentation of one image (label-map PNG with legend, area table)")
    _image_and_queries(g, "classes", "'red circle' 'blue star'")
    opt(g, "--background", type=background)
    add_max_patches(g)
    add_runtime(g)
    opt(g, "--out", FIGURE, default="segment.png", type=figure_file)
    add_json(g, "each class's share of the image's pixels")

    loc = command(sub, "localize", parent, func=run_localize,
                  help="referring-expression localization in one image: a box and a point per expression (PNG "
                       "figure, table)")
    _image_and_queries(loc, "expressions", "'the dog on the left'")
    opt(loc, "--box-threshold", type=fraction)
    add_max_patches(loc)
    add_runtime(loc)
    opt(loc, "--out", FIGURE, default="localize.png", type=figure_file)
    add_json(loc, "each expression's box_xyxy, point_xy, score and whether it was found")


def run_heatmap(args) -> int:
    import numpy as np

    from dense import viz
    from dense.heatmap import patch_scores, to_image, with_aligned
    from dense.preprocess import load_image

    image = load_image(args.image)  # a file that is not an image fails here, before the model is built
    enc = load(args)
    fmap = with_aligned(enc, image, args.method, max_patches=args.max_patches)
    scores = to_image(patch_scores(enc, fmap, args.queries, method=args.method, templates=args.templates),
                      fmap).numpy()  # [T, H, W]
    rows = []
    for q, s in zip(args.queries, scores, strict=True):
        y, x = np.unravel_index(int(s.argmax()), s.shape)  # the peak pixel
        rows.append({"query": q, "peak": float(s.max()), "peak_xy": [x + 0.5, y + 0.5], "mean": float(s.mean())})
    width = max(len(r["query"]) for r in rows)
    lines = [f"{plural(len(rows), 'query')} on {args.image} ({fmap.grid_hw[0]}x{fmap.grid_hw[1]} patches)",
             f"  {'query':<{width}}  {'peak %':>6}  {'mean %':>6}  peak at (x, y)"]
    lines += [f"  {r['query']:<{width}}  {pct(r['peak']):>6}  {pct(r['mean']):>6}  "
              f"({r['peak_xy'][0]:.0f}, {r['peak_xy'][1]:.0f})" for r in rows]
    fig = viz.heatmaps(image, scores, args.queries)
    data = {"image": str(args.image), "grid_hw": list(fmap.grid_hw), "image_hw": list(fmap.image_hw),
            "method": args.method or enc.calibration.method, "queries": rows}
    return finish("\n".join(lines), lambda: save_figure(fig, args.out), lambda: write_json(args.json, data))


def run_segment(args) -> int:
    import numpy as np

    from dense import viz
    from dense.openvocab import segment
    from dense.preprocess import load_image

    image = load_image(args.image)  # a file that is not an image fails here, before the model is built
    enc = load(args)
    labels = segment(enc, image, args.queries, background=args.background, method=args.method,
                     templates=args.templates, max_patches=args.max_patches)  # [H, W], 0 = background
    counts = np.bincount(labels.ravel(), minlength=len(args.queries) + 1) / labels.size
    names = ["(background)", *args.queries]
    width = max(len(n) for n in names)
    lines = [f"{plural(len(args.queries), 'class')} on {args.image} ({labels.shape[0]}x{labels.shape[1]} pixels)",
             f"  {'class':<{width}}  {'area %':>6}"]
    lines += [f"  {n:<{width}}  {pct(c):>6}" for n, c in zip(names, counts, strict=True)]
    fig = viz.label_map(image, labels, args.queries)
    data = {"image": str(args.image), "image_hw": list(labels.shape),
            "background": args.background if args.background is not None else enc.calibration.background,
            "classes": [{"class": n, "label": k, "area": float(c)}
                        for k, (n, c) in enumerate(zip(names, counts, strict=True))]}
    return finish("\n".join(lines), lambda: save_figure(fig, args.out), lambda: write_json(args.json, data))


def run_localize(args) -> int:
    from dense import viz
    from dense.preprocess import load_image
    from dense.refer import Localizer

    image = load_image(args.image)  # a file that is not an image fails here, before the model is built
    enc = load(args)
    found = Localizer(enc, image, method=args.method, templates=args.templates,
                      max_patches=args.max_patches).localize_many(args.queries, box_threshold=args.box_threshold)
    rows = [{"expression": q, "found": bool(f.found), "score": f.score,
             "box_xyxy": [round(float(v), 2) for v in f.box_xyxy], "point_xy": [round(float(v), 2) for v in f.point_xy]}
            for q, f in zip(args.queries, found, strict=True)]
    width = max(len(r["expression"]) for r in rows)
    lines = [f"{plural(len(rows), 'expression')} on {args.image}",
             f"  {'expression':<{width}}  {'score %':>7}  {'box_xyxy':<26}  point_xy"]
    for r in rows:
        box = "not found" if not r["found"] else "[" + ", ".join(f"{v:.0f}" for v in r["box_xyxy"]) + "]"
        lines.append(f"  {r['expression']:<{width}}  {pct(r['score']):>7}  {box:<26}  "
                     f"({r['point_xy'][0]:.0f}, {r['point_xy'][1]:.0f})")
    fig = viz.localizations(image, found, found_threshold=enc.calibration.found_threshold)
    data = {"image": str(args.image), "method": args.method or enc.calibration.method,
            "box_threshold": args.box_threshold if args.box_threshold is not None else enc.calibration.box_threshold,
            "expressions": rows}
    return finish("\n".join(lines), lambda: save_figure(fig, args.out), lambda: write_json(args.json, data))
