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
import time
from pathlib import Path

import numpy as np

from dense._atomic import write_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path.name


class _Page:
    """Sections of figures and figure tables, written as one static ``index.html``."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def section(self, heading: str, text: str = "") -> None:
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, rows: list[tuple[str, str]]) -> None:
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
        self.parts.append(f"<table>{body}</table>")

    def images(self, names: list[str]) -> None:
        self.parts.append("<div class='row'>" + "".join(
            f"<a href='{html.escape(n)}'><img src='{html.escape(n)}'></a>" for n in names) + "</div>")

    def write(self, path: Path) -> None:
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
                 "img{max-height:300px;margin:4px;border:1px solid #ddd}"
                 "table{border-collapse:collapse}td{border:1px solid #ccc;padding:4px 10px}"
                 ".row{display:flex;flex-wrap:wrap}")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>{''.join(self.parts)}"
                f"</body></html>")
        write_text(path, page)


def run_demo(out_dir: str | Path = "dense-demo", *, model: str = "shapes-tiny", images: str | Path | None = None,
             queries: list[str] | None = None, n_images: int = 120, seed: int = 0, max_images: int = 4,
             progress: bool = True) -> dict:
    """Run the demo and return its figures (also written to ``out_dir/summary.json``); see the module docstring."""
    import dense

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    encoder = dense.load_encoder(model)
    if images is None:
        summary = _synthetic(encoder, out, n_images=n_images, seed=seed, max_images=max_images,
                             queries=queries, progress=progress)
    else:
        if not queries:
            raise ValueError("--images needs --queries (what to look for in your photos)")
        paths = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
        summary = _photos(encoder, out, paths[:max_images], queries)
    summary.update(model=model, seconds=round(time.perf_counter() - t0, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _feature_panels(encoder, page: _Page, out: Path, items: list[tuple[str, object]], queries_for) -> None:
    """PCA and heatmap figures for ``(name, image)`` pairs; ``queries_for(name)`` lists each image's queries."""
    from dense import heatmap, viz

    method = encoder.calibration.method
    pca_names, heat_names = [], []
    for name, image in items:
        fmap = encoder.extract(image, layers=heatmap.required_layers(method))
        pca_names.append(_save(viz.pca(fmap, image), out / f"pca_{name}.png"))
        queries = queries_for(name)
        scores = heatmap.upsample(heatmap.patch_scores(encoder, fmap, queries, method=method), fmap)  # [T, H, W]
        heat_names.append(_save(viz.heatmaps(image, scores, queries), out / f"heatmap_{name}.png"))
    page.section("Feature maps (PCA)", "The first three principal components of the patch tokens, at each image's own "
                 "aspect ratio, upsampled to the image.")
    page.images(pca_names)
    page.section("Open-vocabulary heatmaps", f"Per-patch sigmoid probabilities (method '{method}', the checkpoint's "
                 "own logit scale and bias), upsampled to the image.")
    page.images(heat_names)


def _synthetic(encoder, out: Path, *, n_images: int, seed: int, max_images: int, queries, progress: bool) -> dict:
    from dense import datasets, viz
    from dense.cache import FeatureCache, dataset_items, extract_to_cache
    from dense.coco import load_coco, load_refs
    from dense.eval.probe import evaluate_probe
    from dense.localize import Localizer
    from dense.metrics import acc_at_iou, pointing_game
    from probes import ProbeConfig, load_samples, train_probes

    data = out / "data"
    if not (data / "annotations.json").exists():
        datasets.make_shapes(data, n_images, seed=seed)
    ds = load_coco(data / "annotations.json", data / "images")
    page = _Page("dense demo: the synthetic shapes world")
    page.section("What this is", f"{n_images} synthetic images of coloured shapes (seed {seed}), the bundled "
                 "shapes-tiny SigLIP (trained here on such images), and every part of dense run on them.")

    test_ids = ds.ids("test")
    shown = test_ids[:max_images]
    names = {str(i): ds.category_name(a["category_id"]) for i in shown for a in ds.anns(i, crowd=False)[:1]}

    def queries_for(name):
        if queries:
            return list(queries)
        present = sorted({ds.category_name(a["category_id"]) for a in ds.anns(int(name), crowd=False)})
        return present[:3] or [names.get(name, "red circle")]

    _feature_panels(encoder, page, out, [(str(i), ds.image_path(i)) for i in shown], queries_for)

    # linear probe: cache features once, train on train, choose on val, report test once
    # a finer grid than the default budget: shapes-tiny's 8-px patches at 64 tokens are too coarse for masks
    probe_patches = max(256, encoder.pixels.max_patches)
    cache = FeatureCache.for_encoder(out / "cache", encoder, max_patches=probe_patches)
    extract_to_cache(encoder, dataset_items(ds), cache, max_patches=probe_patches, progress=progress)
    samples = {s: load_samples(ds, cache, s) for s in ("train", "val", "test")}
    config = ProbeConfig(epochs=20, lrs=(1e-3, 3e-3, 1e-2, 3e-2))
    result = train_probes(samples["train"], samples["val"], ds.class_names, config, progress=progress)
    test = evaluate_probe(result.best, samples["test"]).figures
    label_names = []
    for sample in samples["test"][:max_images]:
        image = ds.image_path(int(sample.key))
        pred = result.best.predict(sample.fmap)
        fig = viz.label_map(image, pred, ds.class_names[1:])  # class_names[0] is background
        label_names.append(_save(fig, out / f"probe_{sample.key}.png"))
    page.section("Linear probe segmentation", f"BatchNorm + 1x1 conv on frozen patch tokens ({probe_patches}-token "
                 "budget), learning rates swept in one pass, best chosen on val, reported once on test.")
    page.table([("test mIoU", f"{100 * test['mIoU']:.1f}"), ("test pixel accuracy", f"{100 * test['pixel_acc']:.1f}"),
                ("chosen head", result.best.meta.get("key", "")), ("train / val / test images",
                 " / ".join(str(len(samples[s])) for s in ("train", "val", "test")))])
    page.images(label_names)

    # referring expressions: one extraction per image, many expressions
    refs = load_refs(data / "refs.json", ds, split="test")
    pred_boxes, gt_boxes, points, masks, box_names = [], [], [], [], []
    by_image: dict[int, list] = {}
    for ref in refs:
        by_image.setdefault(ref.image_id, []).append(ref)
    for image_id, image_refs in by_image.items():
        loc = Localizer(encoder, ds.image_path(image_id))
        shown_boxes, shown_labels, shown_points = [], [], []
        for ref in image_refs:
            for sentence in ref.sentences:
                where = loc.localize(sentence)
                pred_boxes.append(where.box_xyxy)
                gt_boxes.append(ds.box_xyxy(ref.ann_id))
                points.append(where.point_xy)
                masks.append(ds.mask(ref.ann_id))
            shown_boxes.append(where.box_xyxy)
            shown_labels.append(ref.sentences[-1])
            shown_points.append(where.point_xy)
        if len(box_names) < max_images:
            fig = viz.boxes(ds.image_path(image_id), np.array(shown_boxes), shown_labels,
                            points_xy=np.array(shown_points))
            box_names.append(_save(fig, out / f"refer_{image_id}.png"))
    acc = acc_at_iou(np.array(pred_boxes), np.array(gt_boxes)) if pred_boxes else float("nan")
    pointing = float(np.mean([pointing_game(p[None], m[None]) for p, m in zip(points, masks, strict=True)])) \
        if points else float("nan")
    page.section("Referring expressions", "Text in, box and point out, training-free: the heatmap's peak and the "
                 "connected component around it.")
    page.table([("test expressions", str(len(pred_boxes))), ("Acc@0.5", f"{100 * acc:.1f}"),
                ("pointing game", f"{100 * pointing:.1f}")])
    page.images(box_names)
    page.write(out / "index.html")
    return {"images": n_images, "probe_test_mIoU": test["mIoU"], "probe_test_pixel_acc": test["pixel_acc"],
            "refer_acc@0.5": acc, "refer_pointing": pointing, "refer_expressions": len(pred_boxes)}


def _photos(encoder, out: Path, paths: list[Path], queries: list[str]) -> dict:
    import dense
    from dense import viz
    from dense.localize import Localizer

    page = _Page("dense demo: your photos")
    _feature_panels(encoder, page, out, [(p.stem, p) for p in paths], lambda name: list(queries))
    seg_names, box_names = [], []
    for p in paths:
        labels = dense.segment(encoder, p, queries)
        seg_names.append(_save(viz.label_map(p, labels, queries), out / f"segment_{p.stem}.png"))
        found = Localizer(encoder, p).localize_many(queries)
        fig = viz.boxes(p, np.array([f.box_xyxy for f in found]), list(queries),
                        points_xy=np.array([f.point_xy for f in found]))
        box_names.append(_save(fig, out / f"refer_{p.stem}.png"))
    page.section("Open-vocabulary segmentation", "Each pixel takes the query with the highest probability.")
    page.images(seg_names)
    page.section("Localization", "Each query's box (connected component around the heatmap peak) and point.")
    page.images(box_names)
    page.write(out / "index.html")
    return {"images": len(paths), "queries": list(queries)}
