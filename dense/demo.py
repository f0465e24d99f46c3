"""``dense demo``: everything dense does, on one page.

With no arguments it runs offline: it draws a small synthetic shapes world (``dense.datasets.make_shapes``), loads the
bundled ``shapes-tiny`` SigLIP, and writes PCA feature images, open-vocabulary heatmaps, a linear-probe segmentation
with its test mIoU, and referring-expression boxes with Acc@0.5, plus an ``index.html`` that shows them.

With ``--model google/siglip2-so400m-patch14-384 --images DIR --queries "a dog" "a cat"`` it does the same on your own
photos (PCA, heatmaps, open-vocabulary segmentation, localization of each query), without the parts that need labels.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np

from dense._atomic import write_text
from dense.errors import InputError
from dense.preprocess import check_max_patches, image_files, no_images_error

BUNDLED_MODEL = "shapes-tiny-v2"
# make_shapes splits 70/15/15 by floor + remainder to the largest: 7 images is the fewest with an image in each of
# train, val and test
MIN_SYNTHETIC_IMAGES = 7

METRICS_HELP = {
    "mIoU": "mean intersection-over-union: per class, the overlap of predicted and true pixels divided by their "
            "union, averaged over classes (100 = perfect)",
    "pixel accuracy": "the share of pixels given their true class",
    "Acc@0.5": "the share of expressions whose predicted box overlaps the true box with IoU >= 0.5",
    "pointing game": "the share of expressions whose predicted point falls inside the referred object's mask",
}
SHAPES_TINY_NOTE = ("The bundled shapes-tiny models are tiny SigLIPs trained only on synthetic shapes: they know 16 "
                    "phrases, a colour (red, green, blue, yellow) and a shape (circle, square, triangle, star). On "
                    "photos they still answer, but with one of those phrases (an astronaut may come out as \"a red "
                    "car\"): the figures show the pipeline, not what SigLIP 2 sees. For real photos use --model "
                    "google/siglip2-so400m-patch14-384.")


FIGURE_DPI = 90  # figures are saved at this resolution ...
IMAGE_MAX_H_PX = 600  # ... and the page shows them at most this tall: a referring figure (at most about 6.5 in,
# dense.viz.BOX_PANEL_IN) is never scaled down, so its 11 pt labels stay 14 px on the page


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")  # a dense.viz figure: not registered with pyplot
    return path.name


def _output_names(paths: list[Path]) -> list[str]:
    """A file-name-safe name per photo, unique even when stems repeat (``cat.png``, ``cat.jpg`` -> ``cat_png``,
    ``cat_jpg``)."""
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "image"

    stems = [safe(p.stem) for p in paths]
    names = [stem if stems.count(stem) == 1 else f"{stem}_{safe(p.suffix.lstrip('.').lower())}"
             for stem, p in zip(stems, paths, strict=True)]
    seen: dict[str, int] = {}
    for k, n in enumerate(names):  # still equal (e.g. "a b.png" and "a-b.png"): number them
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[k] = f"{n}_{seen[n]}"
    return names


class _Page:
    """Sections of figures and figure tables, written as one static ``index.html``."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def section(self, heading: str, text: str = "") -> None:
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            self.parts.append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str) -> None:
        self.parts.append(f"<p class='note'>{html.escape(text)}</p>")

    def table(self, rows: list[tuple[str, str]]) -> None:
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
        self.parts.append(f"<table>{body}</table>")

    def glossary(self, names: list[str]) -> None:
        self.parts.append("<dl>" + "".join(f"<dt>{html.escape(n)}</dt><dd>{html.escape(METRICS_HELP[n])}</dd>"
                                           for n in names) + "</dl>")

    def images(self, names: list[str]) -> None:
        self.parts.append("<div class='row'>" + "".join(
            f"<a href='{html.escape(n)}'><img src='{html.escape(n)}'></a>" for n in names) + "</div>")

    def error_cards(self, errors: dict[str, str]) -> None:
        """One card per input that could not be used: its name and why (as the explorer shows unreadable files)."""
        self.parts.append("<div class='row'>" + "".join(
            f"<div class='error'><b>{html.escape(name)}</b><br>{html.escape(why)}</div>"
            for name, why in errors.items()) + "</div>")

    def write(self, path: Path) -> None:
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
                 f"img{{max-height:{IMAGE_MAX_H_PX}px;max-width:100%;margin:4px;border:1px solid #ddd}}"
                 "table{border-collapse:collapse}td{border:1px solid #ccc;padding:4px 10px}"
                 "dl{font-size:0.9em;color:#444}dt{font-weight:bold;float:left;clear:left;width:9em}"
                 "dd{margin-left:10em;margin-bottom:0.3em}"
                 ".note{background:#fff6d6;border-left:4px solid #e0b000;padding:6px 10px}"
                 ".error{background:#fde8e8;border-left:4px solid #c02020;padding:6px 10px;margin:4px;"
                 "max-width:360px;overflow-wrap:anywhere}"
                 ".row{display:flex;flex-wrap:wrap;align-items:flex-start}")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>{''.join(self.parts)}"
                f"</body></html>")
        write_text(path, page)


def run_demo(out_dir: str | Path = "dense-demo", *, model: str = BUNDLED_MODEL, images: str | Path | None = None,
             queries: list[str] | None = None, n_images: int = 120, seed: int = 0, max_images: int = 4,
             device: str | None = None, dtype: str | None = None, max_patches: int | None = None,
             progress: bool = True) -> dict:
    """Run the demo and return its figures (also written to ``out_dir/summary.json``); see the module docstring.

    ``max_images``: how many images the figures show (of your photos: how many are used at all; the page and
    :func:`format_summary` say how many were left out). A synthetic world from an earlier run in ``out_dir`` is
    reused only when it was drawn with the same ``n_images`` and ``seed``; otherwise it is drawn again. ``device``,
    ``dtype``: as :func:`dense.load_encoder`; ``max_patches``: the token budget of every extraction (None: the
    checkpoint's, and at least 256 for the linear probe)."""
    import dense

    if max_images < 1:
        raise InputError(f"max_images must be at least 1, got {max_images}")
    check_max_patches(max_patches)
    if images is None and n_images < MIN_SYNTHETIC_IMAGES:
        raise InputError(f"n_images must be at least {MIN_SYNTHETIC_IMAGES} (the synthetic world is split 70/15/15 "
                         f"into train, val and test, and each needs an image), got {n_images}")
    if images is not None and not queries:
        raise InputError("images= needs queries= (what to look for in your photos)")
    if queries is not None and any(not str(q).strip() for q in queries):
        raise InputError("a query of queries= is empty; give some text")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; the demo writes a folder (index.html and its figures)")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    encoder = dense.load_encoder(model, **{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
    if images is None:
        summary = _synthetic(encoder, out, n_images=n_images, seed=seed, max_images=max_images,
                             queries=queries, max_patches=max_patches, progress=progress)
    else:
        if not queries:
            raise InputError("images= needs queries= (what to look for in your photos)")
        paths = list(image_files(images).values())  # the one rule of every command
        if not paths:
            raise no_images_error(images)
        bundled = str(model).startswith("shapes-tiny")
        summary = _photos(encoder, out, paths, queries, max_images=max_images, bundled=bundled,
                          max_patches=max_patches)
    summary.update(model=model, seconds=round(time.perf_counter() - t0, 1))
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    """The terminal table for a :func:`run_demo` summary: a header, percentages (as on the page) and counts."""
    def pct(v) -> str:
        return "n/a" if v is None or v != v else f"{100 * v:5.1f} %"

    lines = []
    if "probe_test_mIoU" in summary:
        lines.append(f"dense demo: {summary['images']} synthetic images (seed {summary.get('seed', 0)}), "
                     f"model {summary.get('model', BUNDLED_MODEL)}")
        rows = [("linear probe, test mIoU", pct(summary["probe_test_mIoU"]),
                 f"{summary.get('probe_test_images', '?')} test images"),
                ("linear probe, test pixel accuracy", pct(summary["probe_test_pixel_acc"]), ""),
                ("referring, Acc@0.5", pct(summary["refer_acc@0.5"]),
                 f"{summary['refer_expressions']} test expressions"),
                ("referring, pointing game", pct(summary["refer_pointing"]), "")]
        lines.append(f"  {'figure':<34} {'value':>8}   count")
        lines += [f"  {name:<34} {value:>8}   {count}".rstrip() for name, value, count in rows]
    else:
        n_queries = len(summary.get("queries", []))
        lines.append(f"dense demo: {summary['images']} of {summary.get('photos_found', summary['images'])} photos, "
                     f"{n_queries} {'query' if n_queries == 1 else 'queries'}, model {summary.get('model', '?')}")
        for why in summary.get("unreadable", {}).values():  # each message names its file
            lines.append(f"  unreadable, left out: {why}")
        if summary.get("left_out"):
            lines.append(f"  left out ({len(summary['left_out'])}, raise --max-images to include them): "
                         + ", ".join(summary["left_out"][:8]) + (" ..." if len(summary["left_out"]) > 8 else ""))
        if str(summary.get("model", BUNDLED_MODEL)).startswith("shapes-tiny"):
            lines.append("  note: shapes-tiny knows only 16 colour+shape phrases; use --model "
                         "google/siglip2-so400m-patch14-384 for photos")
    return "\n".join(lines)


def _feature_panels(encoder, page: _Page, out: Path, items: list[tuple[str, object]], queries_for,
                    max_patches: int | None = None) -> None:
    """PCA and heatmap figures for ``(name, image)`` pairs; ``queries_for(name)`` lists each image's queries."""
    from dense import heatmap, viz

    method = encoder.calibration.method
    pca_names, heat_names = [], []
    for name, image in items:
        fmap = encoder.extract(image, layers=heatmap.required_layers(method), max_patches=max_patches)
        pca_names.append(_save(viz.pca(fmap, image), out / f"pca_{name}.png"))
        queries = queries_for(name)
        scores = heatmap.to_image(heatmap.patch_scores(encoder, fmap, queries, method=method), fmap)  # [T, H, W]
        heat_names.append(_save(viz.heatmaps(image, scores, queries), out / f"heatmap_{name}.png"))
    page.section("Feature maps (PCA)", "The first three principal components of the patch tokens, at each image's own "
                 "aspect ratio, upsampled to the image: parts with similar features get similar colours.")
    page.images(pca_names)
    page.section("Open-vocabulary heatmaps", f"Per-patch sigmoid probabilities that the query is there (method "
                 f"'{method}', the checkpoint's own logit scale and bias), upsampled to the image, all on one 0-1 "
                 "scale. The image is drawn in grey and the colour over it grows more opaque with the probability: "
                 "plain grey is 0, blue-green is low, orange about 0.75, dark red 1; the colour bar shows exactly "
                 "these colours.")
    page.images(heat_names)


def _synthetic_data(data: Path, cache: Path, *, n_images: int, seed: int) -> None:
    """Draw the shapes world into ``data`` unless an earlier run drew it with the same parameters; a redrawn world
    also drops the feature cache (its keys are image ids, which the new world reuses for other images)."""
    from dense import datasets

    params = {"n_images": n_images, "seed": seed}
    stamp = data / "demo_params.json"
    if (data / "annotations.json").exists() and stamp.exists():
        try:
            if json.loads(stamp.read_text()) == params:
                return
        except ValueError:
            pass  # unreadable: draw again
    for folder in (data, cache):
        if folder.exists():
            shutil.rmtree(folder)
    datasets.make_shapes(data, n_images, seed=seed)
    write_text(stamp, json.dumps(params))  # last: a run cut short leaves no stamp, so the next one draws again


def _synthetic(encoder, out: Path, *, n_images: int, seed: int, max_images: int, queries, progress: bool,
               max_patches: int | None = None) -> dict:
    from dense import viz
    from dense.eval.data import open_data
    from dense.eval.probe import evaluate_linear_probe
    from dense.eval.refer import evaluate_refer
    from dense.eval.settings import Extraction, ProbeSplits, ProbeTraining, ReferScoring, Way
    from dense.refer import Localizer

    data = out / "data"
    _synthetic_data(data, out / "cache", n_images=n_images, seed=seed)
    source = open_data(ann=data / "annotations.json", images=data / "images", refs=data / "refs.json")
    ds = source.dataset(None)
    page = _Page("dense demo: the synthetic shapes world")
    page.section("What this is", f"{n_images} synthetic images of coloured shapes (seed {seed}), the model "
                 f"{encoder.name} (with its calibration: method {encoder.calibration.method}, "
                 f"{encoder.pixels.max_patches} tokens), and every part of dense run on them. Figures show the first "
                 f"{max_images} test images.")
    page.note(SHAPES_TINY_NOTE.split(" On photos")[0])

    test_ids = ds.ids("test")
    shown = test_ids[:max_images]
    names = {str(i): ds.category_name(a["category_id"]) for i in shown for a in ds.anns(i, crowd=False)[:1]}

    def queries_for(name):
        if queries:
            return list(queries)
        present = sorted({ds.category_name(a["category_id"]) for a in ds.anns(int(name), crowd=False)})
        return present[:3] or [names.get(name, "red circle")]

    _feature_panels(encoder, page, out, [(str(i), ds.image_path(i)) for i in shown], queries_for, max_patches)

    # linear probe: dense.eval's protocol (cache features once, train on train, choose on val, report test once)
    # at a finer grid than the default budget: shapes-tiny's 8-px patches at 64 tokens are too coarse for masks
    probe_patches = max_patches or max(256, encoder.pixels.max_patches)
    res = evaluate_linear_probe(encoder, source, cache=out / "cache", splits=ProbeSplits(test="test"),
                                extraction=Extraction(max_patches=probe_patches),
                                training=ProbeTraining(epochs=20, lrs=(1e-3, 3e-3, 1e-2, 3e-2)), progress=progress)
    test, probe = res.figures, res.artifacts["probe"]
    label_names = []
    for image_id in test_ids[:max_images]:
        image = ds.image_path(image_id)
        pred = probe.predict(encoder.extract(image, max_patches=probe_patches))
        fig = viz.label_map(image, pred, ds.class_names[1:], gt=ds.label_map(image_id))  # [0] is background
        label_names.append(_save(fig, out / f"probe_{image_id}.png"))
    page.section("Linear probe segmentation", f"BatchNorm + 1x1 conv on frozen patch tokens ({probe_patches}-token "
                 "budget), learning rates swept in one pass, best chosen on val, reported once on test "
                 "(dense.eval.probe.evaluate_linear_probe). Each figure shows the image, its ground truth and the "
                 "probe's prediction.")
    page.table([("test mIoU", f"{100 * test['mIoU']:.1f} %"),
                ("test pixel accuracy", f"{100 * test['pixel_acc']:.1f} %"),
                ("chosen head", res.meta["best"]), ("train / val / test images",
                 " / ".join(str(res.meta["splits"][s]) for s in ("train", "val", "test")))])
    page.glossary(["mIoU", "pixel accuracy"])
    page.images(label_names)

    # referring expressions: dense.eval's protocol, the calibrated way without candidates
    ref = evaluate_refer(encoder, source, split="test", scoring=ReferScoring(scorers=(), thresholds=()),
                         extraction=Extraction(max_patches=max_patches), progress=progress)
    way = Way("none", ref.meta["methods"][0])
    acc, pointing = ref.figures[way.name("acc@0.5")], ref.figures[way.name("pointing")]
    by_image: dict[int, list] = {}
    for r in source.load_refs("test"):
        by_image.setdefault(r.image_id, []).append(r)
    box_names = []
    for image_id in list(by_image)[:max_images]:  # the figures: one expression per ref of the first images
        loc = Localizer(encoder, ds.image_path(image_id), max_patches=max_patches)
        image_refs = by_image[image_id]
        fig = viz.localizations(ds.image_path(image_id), [loc.localize(r.sentences[-1]) for r in image_refs],
                                gt_boxes_xyxy=np.array([ds.box_xyxy(r.ann_id) for r in image_refs]),
                                found_threshold=encoder.calibration.found_threshold)
        box_names.append(_save(fig, out / f"refer_{image_id}.png"))
    page.section("Referring expressions", "Text in, box and point out, training-free: the heatmap's peak (the star) "
                 "and the connected component around it (the box), labelled with the expression and its score (the "
                 "peak probability). Dotted boxes are the ground truth; a dashed predicted box is a miss. An "
                 f"expression scoring below the checkpoint's found threshold "
                 f"({encoder.calibration.found_threshold:.2f}) is 'not found': it gets no box, only a note under "
                 "the figure (it counts as a miss there; the table scores its best-guess box all the same).")
    page.table([("test expressions", str(ref.meta["expressions"])), ("test images", str(ref.meta["images"])),
                ("Acc@0.5", f"{100 * acc:.1f} %"), ("pointing game", f"{100 * pointing:.1f} %")])
    page.glossary(["Acc@0.5", "pointing game"])
    page.images(box_names)
    page.write(out / "index.html")
    return {"images": n_images, "seed": seed, "probe_test_mIoU": test["mIoU"],
            "probe_test_pixel_acc": test["pixel_acc"], "probe_test_images": res.meta["splits"]["test"],
            "refer_acc@0.5": acc, "refer_pointing": pointing, "refer_expressions": ref.meta["expressions"]}


def _photos(encoder, out: Path, all_paths: list[Path], queries: list[str], *, max_images: int,
            bundled: bool, max_patches: int | None = None) -> dict:
    import dense
    from dense import viz
    from dense.preprocess import ImageError, load_image
    from dense.refer import Localizer

    paths, left_out = all_paths[:max_images], all_paths[max_images:]
    page = _Page("dense demo: your photos")
    readable, unreadable = [], {}
    for name, p in zip(_output_names(paths), paths, strict=True):
        try:
            readable.append((name, p, load_image(p)))  # read once, upright; every figure below reuses the pixels
        except ImageError as e:  # reported on the page and in the summary; the other photos go on
            unreadable[p.name] = str(e)
    page.section("What this is", f"{len(paths)} of your photos, queries: " + ", ".join(repr(q) for q in queries)
                 + ".")
    if left_out:
        page.note(f"{len(left_out)} of {len(all_paths)} photos were left out (the demo uses the first {max_images} "
                  "in name order; raise --max-images to include more): "
                  + ", ".join(p.name for p in left_out[:20]) + (" ..." if len(left_out) > 20 else ""))
    if unreadable:
        page.note(f"{len(unreadable)} of these photos could not be read and are left out of every figure:")
        page.error_cards(unreadable)
    if bundled:
        page.note(SHAPES_TINY_NOTE)
    _feature_panels(encoder, page, out, [(name, rgb) for name, _, rgb in readable], lambda name: list(queries),
                    max_patches)
    seg_names, box_names = [], []
    for name, _, rgb in readable:
        labels = dense.segment(encoder, rgb, queries, max_patches=max_patches)
        seg_names.append(_save(viz.label_map(rgb, labels, queries), out / f"segment_{name}.png"))
        found = Localizer(encoder, rgb, max_patches=max_patches).localize_many(queries)
        fig = viz.localizations(rgb, found, found_threshold=encoder.calibration.found_threshold)
        box_names.append(_save(fig, out / f"refer_{name}.png"))
    page.section("Open-vocabulary segmentation", "Each pixel takes the query with the highest probability; pixels "
                 "where no query is probable enough stay unpainted (background).")
    page.images(seg_names)
    page.section("Localization", "Each query's box (connected component around the heatmap peak) and point (the "
                 "star, the peak itself), labelled with its score. A query scoring below the checkpoint's found "
                 f"threshold ({encoder.calibration.found_threshold:.2f}) is 'not found': no box, a note instead.")
    page.images(box_names)
    page.write(out / "index.html")
    return {"images": len(readable), "photos_found": len(all_paths), "left_out": [p.name for p in left_out],
            "unreadable": unreadable, "queries": list(queries)}
