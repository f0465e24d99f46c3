"""Write the notebooks in notebooks/ from the cells below (outputs stripped): python scripts/make_notebooks.py

Open them with ``pip install -e ".[notebook]"`` then ``jupyter lab notebooks/``. Every ``dense.viz`` figure shows inline
(it has a ``_repr_png_``), so a cell that ends in a ``viz`` call displays its figure.

Each notebook runs top to bottom on the bundled ``shapes-tiny-v2`` model (the one ``dense demo`` uses) in well under a
minute; tests/test_notebooks.py executes them. Set DENSE_MODEL to run them on another checkpoint (e.g.
google/siglip2-so400m-patch14-384).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SETUP = '''import os
import tempfile
from pathlib import Path

import numpy as np

import dense
from dense import datasets, viz

MODEL = os.environ.get("DENSE_MODEL", "shapes-tiny-v2")  # or "google/siglip2-so400m-patch14-384"
enc = dense.load_encoder(MODEL)
work = Path(tempfile.mkdtemp(prefix="dense-notebook-"))
enc'''

NOTEBOOKS = {
    "01_quickstart.ipynb": [
        "# Quickstart: feature maps at native aspect ratio\n\n"
        "`dense` runs a SigLIP / SigLIP 2 vision tower on each image at its own aspect ratio (no square squash, no "
        "crop) and returns a `FeatureMap`: patch tokens `[gh, gw, D]` that know their geometry. This notebook uses "
        "the bundled `shapes-tiny-v2` model (a tiny SigLIP trained only on synthetic shapes, the model `dense demo` "
        "uses) so it runs offline; set `DENSE_MODEL=google/siglip2-so400m-patch14-384` for the real thing.",
        SETUP,
        "## Some images\n`make_shapes` draws a small COCO-style world of coloured shapes: images of varied size and "
        "aspect ratio, with masks and referring expressions.",
        '''info = datasets.make_shapes(work, 12, seed=1)
paths = sorted((work / "images").iterdir())
print(info["images"], "images,", info["annotations"], "annotations")
image = paths[0]''',
        "## One image -> one FeatureMap",
        '''fmap = enc.extract(image)
print(fmap)
print("tokens", tuple(fmap.tokens.shape), "| grid", fmap.grid_hw, "| image", fmap.image_hw,
      "| resized", fmap.resized_hw)''',
        "## Token budget\nThe grid keeps the aspect ratio within the token budget (`max_patches`, by default the "
        "checkpoint's own count). A larger budget gives a finer grid:",
        '''for budget in (16, 64, 256):
    print(budget, enc.extract(image, max_patches=budget).grid_hw)''',
        "## Looking at features\nThe first three principal components of the tokens, as colours:",
        "viz.pca(fmap, image)",
        "## Geometry\nOne pair of functions maps between original pixels and patches. Patch `(i, j)` covers resized "
        "pixels `[j*p, (j+1)*p) x [i*p, (i+1)*p)`; its centre maps back by the per-axis scale.",
        '''point_xy = (60.0, 40.0)
ij = fmap.pixel_to_grid(point_xy)
centre_xy = fmap.grid_to_pixel_xy(ij)
print(f"pixel {point_xy} -> patch {ij.tolist()} -> patch centre {centre_xy.round(1).tolist()}")
dense_features = fmap.to_image()  # [D, H, W], bilinear
print(tuple(dense_features.shape))''',
        "## Many images\n`extract_many` batches images whose grids are equal and yields results in input order; "
        "`on_error=\"skip\"` yields `None` for unreadable files and goes on.",
        '''(work / "broken.png").write_text("not an image")
fmaps = list(enc.extract_many([*paths[:6], work / "broken.png"], batch_size=4, on_error="skip", progress=False))
[(None if f is None else f.grid_hw) for f in fmaps]''',
        "## Save and load",
        '''path = fmap.save(work / "features" / "first.safetensors")
back = dense.FeatureMap.load(path)
assert (back.tokens == fmap.tokens).all() and back.image_hw == fmap.image_hw
back''',
    ],
    "02_open_vocabulary.ipynb": [
        "# Open-vocabulary heatmaps and segmentation\n\n"
        "SigLIP has no CLS token: its image embedding comes from a multi-head attention-pooling (MAP) head. "
        "`dense.heatmap` turns each patch token into a text-comparable vector through that head and scores it "
        "against text queries with the checkpoint's own `logit_scale` / `logit_bias`, so the heatmaps are sigmoid "
        "probabilities. The bundled `shapes-tiny-v2` knows 16 phrases (a colour and a shape); it is small, and "
        "it misses some objects: the printouts below say where.",
        SETUP,
        '''from dense import heatmap
from dense.coco import load_coco

datasets.make_shapes(work, 12, seed=2)
ds = load_coco(work / "annotations.json", work / "images")
image_id = max(ds.ids(), key=lambda i: len(ds.anns(i, crowd=False)))  # the busiest image, whatever the model says
image = ds.image_path(image_id)
present = sorted({ds.category_name(a["category_id"]) for a in ds.anns(image_id, crowd=False)})
# an absent query: a class whose colour and shape are both missing from the image (crowd regions included)
there = [ds.category_name(a["category_id"]).split() for a in ds.anns(image_id, crowd=True)]
absent = next(n for n in ds.class_names[1:]
              if all(n.split()[0] != c and n.split()[1] != s for c, s in there))
queries = [*present, absent]
print("present:", present, "| absent:", absent)''',
        "## Heatmaps\nOne extraction serves any number of queries; text embeddings are cached. The image is drawn "
        "in grey and each query's probability in colour over it, more opaque where it is higher, on one 0-1 scale "
        "for all panels: the colour bar shows exactly the colours drawn. The last panel is the absent query. Each "
        "title gives the panel's peak; the next cell says whether each peak lands on its object.",
        '''fmap = enc.extract(image, layers=heatmap.required_layers(enc.calibration.method))
scores = heatmap.to_image(heatmap.patch_scores(enc, fmap, queries), fmap)  # [T, gh, gw] -> [T, H, W] probabilities
viz.heatmaps(image, scores, queries)''',
        '''for name, probs in zip(queries, scores.numpy()):
    y, x = np.unravel_index(probs.argmax(), probs.shape)
    masks = [ds.mask(a["id"]) for a in ds.anns(image_id, crowd=False) if ds.category_name(a["category_id"]) == name]
    where = ("absent" if not masks else "on the object" if any(m[y, x] for m in masks) else "off the object")
    print(f"{name:<16} peak {probs.max():.2f}  {where}")''',
        "## Methods\nEach method is a few lines in `dense/heatmap/methods.py` (`heatmap.METHODS`; the ones that won "
        "nowhere are in `heatmap.EXPERIMENTAL_METHODS`); `raw` (the tokens as they are) is the baseline. How many "
        "present classes have their heatmap's peak on their object, per method, on this one image (`dense eval "
        "openvocab` measures it over a split):",
        '''for method in heatmap.supported_methods(enc):
    aligned = heatmap.with_aligned(enc, image, method)  # extracts the layers this method needs
    up = heatmap.to_image(heatmap.patch_scores(enc, aligned, present, method=method), aligned).numpy()  # [T, H, W]
    hits = []
    for name, probs in zip(present, up):
        y, x = np.unravel_index(probs.argmax(), probs.shape)
        masks = [ds.mask(a["id"]) for a in ds.anns(image_id, crowd=False) if ds.category_name(a["category_id"]) == name]
        hits.append(any(m[y, x] for m in masks))
    print(f"{method:<22} peak on the object: {sum(hits)}/{len(hits)}")''',
        "## Zero-shot classification\nThe pooled image embedding against labels, as SigLIP was trained:",
        '''labels = [c for c in ds.class_names[1:]]
probs = dense.classify(enc, image, labels)
sorted(zip(probs.tolist(), labels), reverse=True)[:5]''',
        "## Training-free segmentation\nEach pixel takes its most probable class; pixels where no class reaches the "
        "checkpoint's calibrated background threshold (`enc.calibration`, measured on the synthetic val split) are "
        "background.",
        '''labels_hw = dense.segment(enc, image, present)
viz.label_map(image, labels_hw, present)''',
        "## Any language\nQueries are canonicalized by the checkpoint's own rule before tokenizing "
        "(`dense.text.canonicalize`; for SigLIP 2, big_vision's: ASCII punctuation removed, lower-cased, whitespace "
        "collapsed), never translated, so a multilingual checkpoint such as So400m takes prompts in any language "
        "(`dense.segment(enc, photo, [\"chien\", \"Katze\", \"猫\"])`); the tiny model here only knows its own "
        "English words.",
    ],
    "03_linear_probe.ipynb": [
        "# Linear-probe segmentation on cached features\n\n"
        "DINOv2's protocol on SigLIP tokens: features are extracted once into an on-disk cache (keyed by model, "
        "layers, token budget and dtype), then BatchNorm + 1x1 conv heads for several learning rates train together "
        "in one pass over them; the best on val is reported once on test. The same runs from the shell as "
        "`dense probe train`; both are one call of `dense.eval.probe.evaluate_linear_probe`.",
        SETUP,
        '''from dense.coco import load_coco
from dense.eval.probe import evaluate_linear_probe
from dense.eval.settings import ProbeSplits, ProbeTraining

datasets.make_shapes(work, 60, seed=3)
ds = load_coco(work / "annotations.json", work / "images")
{split: len(ds.ids(split)) for split in ("train", "val", "test")}''',
        "## Cache the features, train the sweep, choose on val, report test once\nOne call: missing features are "
        "extracted into the cache (a second run reads them from it), every head trains in one pass, the best on val "
        "is scored once on test.",
        '''res = evaluate_linear_probe(enc, ds, cache=work / "cache", splits=ProbeSplits(test="test"),
                            training=ProbeTraining(epochs=10))
{key: round(figs["mIoU"], 3) for key, figs in res.meta["sweep"].items()}''',
        "## The test report\nmIoU: per class, the overlap of predicted and true pixels over their union, averaged "
        "over classes. The figure shows the ground truth beside the prediction; background is left unpainted.",
        '''print(f"chosen {res.meta['best']}: test mIoU {100 * res.figures['mIoU']:.1f}  "
      f"pixel accuracy {100 * res.figures['pixel_acc']:.1f}")''',
        '''probe = res.artifacts["probe"]
image_id = ds.ids("test")[0]
fmap = enc.extract(ds.image_path(image_id))
viz.label_map(ds.image_path(image_id), probe.predict(fmap), ds.class_names[1:], gt=ds.label_map(image_id))''',
        "## Save it with the encoder it belongs to\nLoading a probe against features of another encoder is an error.",
        '''from probes import LinearProbe

path = probe.save(work / "probe.safetensors")
LinearProbe.load(path, encoder=enc)''',
    ],
    "04_referring_expressions.ipynb": [
        "# Referring expressions: text in, box and point out\n\n"
        "Training-free: the expression's heatmap gives a point (its peak, refined below a patch) and a box (the "
        "connected component around the peak). With candidate boxes, each box is scored by the MAP head's "
        "attention restricted to it, all boxes in one pass. Every answer has a score; below the checkpoint's "
        "measured `found_threshold` it is \"not found\".",
        SETUP,
        '''from dense.coco import load_coco, load_refs
from dense.refer import Localizer

datasets.make_shapes(work, 30, seed=4)
ds = load_coco(work / "annotations.json", work / "images")
refs = load_refs(work / "refs.json", ds)
[(r.ref_id, r.sentences) for r in refs[:4]]''',
        "## One image, many expressions, one extraction\nThe figure draws each expression's box (solid: a hit, "
        "IoU >= 0.5 with the ground truth; dashed: a miss) labelled with its score, its ground-truth box (dotted) "
        "and its point (the star). An expression scoring below the found threshold gets no box, only a note under "
        "the figure.",
        '''ref = refs[0]
image = ds.image_path(ref.image_id)
loc = Localizer(enc, image)
pairs = [(s, ds.box_xyxy(r.ann_id)) for r in refs if r.image_id == ref.image_id for s in r.sentences]
sentences = [s for s, _ in pairs]
found = loc.localize_many(sentences)
for where in found:
    print(where)
viz.localizations(image, found, gt_boxes_xyxy=np.array([g for _, g in pairs]),
                  found_threshold=enc.calibration.found_threshold)''',
        "## Not found\nAn expression naming something the image does not hold should score low. Here, next to the "
        "first expression above: a colour and shape that are both absent from the image (crowd regions included), "
        "and one whose colour IS in the image on another shape, the hard case. `found_threshold` was chosen on "
        "validation images of the synthetic world (`enc.calibration`); the checkpoint's `dense_calibration.json` "
        "gives how it was measured and its not-found rate per kind of absence (`measured.found_threshold`).",
        '''from dense.datasets import CATEGORIES
from dense.eval.found import absence_kind

there = {(c["colour"], c["shape"]) for a in ds.anns(ref.image_id, crowd=True) for c in CATEGORIES
         if c["id"] == a["category_id"]}
kind = {c["name"]: absence_kind(c["colour"], c["shape"], there) for c in CATEGORIES
        if (c["colour"], c["shape"]) not in there}
absent = [next(f"the {n}" for n, k in kind.items() if k == want) for want in ("neither", "colour")
          if want in kind.values()]
answers = loc.localize_many([sentences[0], *absent])
print(f"found_threshold {enc.calibration.found_threshold}")
for where in answers:
    print(where, kind.get(where.expression[4:], "present"))
viz.localizations(image, answers, found_threshold=enc.calibration.found_threshold)''',
        "## Scoring a split\nAcc@0.5 (box IoU >= 0.5) and the pointing game (point inside the mask), without and with "
        "the image's ground-truth boxes as candidates: the evaluator behind `dense eval refer`.",
        '''from dense.cli.evaluate import format_refer
from dense.eval.data import open_data
from dense.eval.refer import evaluate_refer

data = open_data(ann=work / "annotations.json", images=work / "images", refs=work / "refs.json")
result = evaluate_refer(enc, data, split=None)
print(format_refer(result))''',
    ],
}


def build(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cells in NOTEBOOKS.items():
        # text cells start with a Markdown heading; everything else is code
        nb = new_notebook(cells=[new_markdown_cell(c) if c.startswith("#") else new_code_cell(c) for c in cells])
        for k, cell in enumerate(nb.cells):  # stable ids: regenerating an unchanged notebook changes nothing
            cell.id = f"cell-{k:02d}"
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = out_dir / name
        nbformat.write(nb, path)
        written.append(path)
    return written


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write the notebooks (without outputs)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "notebooks"), help="folder")
    for p in build(Path(ap.parse_args().out)):
        print(p)
