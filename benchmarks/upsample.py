"""Sharper label maps than the patch grid: bilinear vs guided filter vs learned upsampler vs tiled extraction.

    python benchmarks/upsample.py                       # synthetic world, shapes-tiny at 256 tokens, one probe
    python benchmarks/upsample.py --so400m              # + cost ratios for So400m (random weights) on 640x480
    python benchmarks/upsample.py --images 24 --upsampler-epochs 1 --guided-grid 1   # a smoke run

A fresh synthetic world (``make_shapes``, ``--seed`` never used elsewhere), features of ``shapes-tiny`` at the
``--max-patches`` budget, ONE linear probe (sweep chosen on val). Every method turns the same probe's patch-grid
logits into a label map at the original resolution; guided-filter radius / eps are chosen on val, test is reported
once. Figures: mIoU, boundary F (tolerance 2 px, per class averaged) and trimap mIoU (pixels within 4 px of a
ground-truth boundary). Cost: seconds per image of extraction + the method, relative to one plain extraction.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def evaluate(preds_fn, items, class_names):
    """``preds_fn(item) -> (label map [H, W], seconds)``; returns figures and mean seconds per image."""
    from dense.metrics import BoundaryMeter, SegmentationMeter

    seg, bnd = SegmentationMeter(class_names), BoundaryMeter(class_names, tolerance_px=2, trimap_px=4)
    secs = []
    for it in items:
        pred, s = preds_fn(it)
        seg.update(pred, it["label"])
        bnd.update(pred, it["label"])
        secs.append(s)
    return {**seg.figures(), **bnd.figures(), "sec": float(np.mean(secs))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/upsample_bench")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7301)
    ap.add_argument("--max-patches", type=int, default=256)
    ap.add_argument("--upsampler-epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--so400m", action="store_true", help="also time So400m (random weights) on a 640x480 image")
    ap.add_argument("--spec", default="so400m-patch14-384", help="the random architecture --so400m times")
    ap.add_argument("--guided-grid", type=int, default=18, help="guided-filter settings tried on val (at most 18)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import dense
    from dense.coco import load_coco
    from dense.datasets import make_shapes
    from dense.features import FeatureMap
    from dense.preprocess import load_image
    from dense.tiling import extract_tiled
    from dense.upsample import UpsamplerConfig, guided_upsample, train_upsampler
    from probes.train import ProbeConfig, Sample, train_probes

    out = Path(args.out)
    world = out / f"world-{args.seed}"
    if not (world / "annotations.json").exists():
        make_shapes(world, args.images, seed=args.seed)
    ds = load_coco(world / "annotations.json", world / "images")
    enc = dense.load_encoder("shapes-tiny")
    mp = args.max_patches
    enc.extract(ds.image_path(ds.ids()[0]), max_patches=mp)  # warm-up

    items = {}
    for split in ("train", "val", "test"):
        items[split] = []
        for i in ds.ids(split):
            path = ds.image_path(i)
            fmap, sec = _timed(enc.extract, path, max_patches=mp)
            fmap = FeatureMap(fmap.tokens.clone(), fmap.image_hw, fmap.resized_hw, fmap.patch_size, fmap.layers,
                              fmap.encoder_spec)  # an inference-mode tensor cannot enter the probe's autograd
            items[split].append({"key": str(i), "path": path, "rgb": load_image(path), "fmap": fmap,
                                 "label": ds.label_map(i), "extract_sec": sec})
    print(f"world {world}: " + ", ".join(f"{k} {len(v)}" for k, v in items.items()), flush=True)
    samples = {k: [Sample(it["key"], it["fmap"], it["label"]) for it in v] for k, v in items.items()}
    res = train_probes(samples["train"], samples["val"], ds.class_names, ProbeConfig(epochs=10), progress=False)
    probe = res.best
    print(f"probe {res.best_key}: val mIoU {res.val[res.best_key]['mIoU']:.4f}", flush=True)

    up, up_sec = _timed(train_upsampler, enc, [it["path"] for it in items["train"]],
                        UpsamplerConfig(max_patches=mp, epochs=args.upsampler_epochs), progress=False)
    n_params = sum(p.numel() for p in up.parameters())
    print(f"upsampler: {n_params} parameters, trained in {up_sec:.0f} s on {len(items['train'])} images; "
          f"target loss {up.meta['loss'][-1]:.4f} vs bilinear {up.meta['bilinear_loss']:.4f}", flush=True)

    for split in ("val", "test"):
        for it in items[split]:
            it["tiled"], it["tiled_sec"] = _timed(extract_tiled, enc, it["path"], scale=2, overlap=2, max_patches=mp)

    def grid_logits(fmap):
        with torch.inference_mode():
            return probe(probe.select(fmap)[None].float())[0]  # [K, gh, gw]

    def bilinear(it, tiled=False):
        fmap = it["tiled"] if tiled else it["fmap"]
        t0 = time.perf_counter()
        lab = probe.logits(fmap).argmax(0)
        return lab, time.perf_counter() - t0 + (it["tiled_sec"] if tiled else it["extract_sec"])

    def guided(r, eps, sub, learned=False, tiled=False):
        def run(it):
            fmap = it["tiled"] if tiled else it["fmap"]
            t0 = time.perf_counter()
            lg = grid_logits(fmap)
            if learned:
                lg = up.to_image(fmap, it["rgb"], values=lg)  # [K, H, W]
            probs = guided_upsample(lg.softmax(0), it["rgb"], radius=r, eps=eps, subsample=sub)
            return probs.argmax(0), time.perf_counter() - t0 + (it["tiled_sec"] if tiled else it["extract_sec"])
        return run

    def learned(it):
        t0 = time.perf_counter()
        lab = up.to_image(it["fmap"], it["rgb"], values=grid_logits(it["fmap"])).argmax(0)
        return lab, time.perf_counter() - t0 + it["extract_sec"]

    # guided filter: choose radius / eps / subsample on val
    grid = [(r, eps, sub) for r in (8, 4, 16) for eps in (1e-3, 1e-4, 1e-2) for sub in (2, 1)][:args.guided_grid]
    val_scores = {}
    for cfg in grid:
        val_scores[cfg] = evaluate(guided(*cfg), items["val"], ds.class_names)["mIoU"]
    best = max(grid, key=lambda c: val_scores[c])
    best_fast = max([c for c in grid if c[2] == 2] or grid, key=lambda c: val_scores[c])
    print("guided on val: " + ", ".join(f"r{r} eps{e:g} sub{s}: {100 * v:.2f}" for (r, e, s), v in
                                         val_scores.items()), flush=True)
    methods = {
        "bilinear": bilinear,
        f"guided r{best[0]} eps{best[1]:g} sub{best[2]}": guided(*best),
        f"guided r{best_fast[0]} eps{best_fast[1]:g} sub2 (fast)": guided(*best_fast),
        "learned upsampler": learned,
        "learned + guided (fast)": guided(*best_fast, learned=True),
        "tiled x2 (bilinear)": lambda it: bilinear(it, tiled=True),
        "tiled x2 + guided (fast)": guided(*best_fast, tiled=True),
    }
    ext = float(np.mean([it["extract_sec"] for it in items["test"]]))
    print(f"\nshapes-tiny, {mp}-token budget, test split ({len(items['test'])} images), one probe; "
          f"one extraction = {1e3 * ext:.1f} ms/img")
    print(f"{'method':<34} {'mIoU':>6} {'dmIoU':>6} {'bF@2':>6} {'trimap':>6} {'ms/img':>7} {'x extract':>9}")
    base = None
    record = {"seed": args.seed, "dtype": str(enc.dtype).removeprefix("torch."),
              "images": {k: len(v) for k, v in items.items()}, "max_patches": mp,
              "probe": res.best_key, "upsampler_params": n_params, "extract_ms": 1e3 * ext,
              "guided_val": {f"r{r} eps{e:g} sub{s}": v for (r, e, s), v in val_scores.items()},
              "guided": f"r{best[0]} eps{best[1]:g} sub{best[2]}",
              "guided_fast": f"r{best_fast[0]} eps{best_fast[1]:g} sub{best_fast[2]}", "methods": {}}
    keys = ["bilinear", "guided", "guided_fast", "learned", "learned+guided", "tiled", "tiled+guided"]
    for key, (name, fn) in zip(keys, methods.items(), strict=True):
        f = evaluate(fn, items["test"], ds.class_names)
        base = f["mIoU"] if base is None else base
        record["methods"][key] = {"name": name, "mIoU": f["mIoU"], "bF": f["bF"], "trimap_mIoU": f["trimap_mIoU"],
                                  "ms_per_img": 1e3 * f["sec"], "x_extract": f["sec"] / ext}
        print(f"{name:<34} {100 * f['mIoU']:>6.2f} {100 * (f['mIoU'] - base):>+6.2f} {100 * f['bF']:>6.2f} "
              f"{100 * f['trimap_mIoU']:>6.2f} {1e3 * f['sec']:>7.1f} {f['sec'] / ext:>9.2f}", flush=True)

    if args.so400m:
        record["so400m"] = so400m_costs(args)
    if args.json:
        from dense._atomic import write_json

        write_json(args.json, record, indent=2)


def so400m_costs(args) -> dict:
    """Cost ratios on So400m (random weights: timing does not depend on weight values), 640x480, 17 classes."""
    import dense
    from dense.tiling import extract_tiled
    from dense.upsample import Upsampler, UpsamplerConfig, guided_upsample

    enc = dense.random_encoder(args.spec)
    rgb = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    enc.extract(rgb)  # warm-up
    fmap, ext = _timed(enc.extract, rgb)
    gh, gw = fmap.grid_hw
    logits = torch.randn(17, gh, gw)
    up = Upsampler(fmap.dim, UpsamplerConfig(), encoder_spec=fmap.encoder_spec)
    rows = [("bilinear", _timed(lambda: F.interpolate(logits[None], size=(480, 640), mode="bilinear"))[1])]
    for sub in (1, 2, 4):
        sec = _timed(guided_upsample, logits.softmax(0), rgb, radius=8, subsample=sub)[1]
        rows.append((f"guided r8 sub{sub}", sec))
    rows.append(("learned upsampler (17 logits)", _timed(up.to_image, fmap, rgb, values=logits)[1]))
    _, tiled = _timed(extract_tiled, enc, rgb, scale=2, overlap=2)
    rows.append(("tiled x2 (windows incl.)", tiled - ext))
    print(f"\n{args.spec} random weights, 640x480, {gh}x{gw} grid, {enc.dtype}, {torch.get_num_threads()} thread(s): "
          f"one extraction {ext:.2f} s")
    print(f"{'method':<34} {'added s':>8} {'x extract':>9}")
    for name, sec in rows:
        print(f"{name:<34} {sec:>8.3f} {(ext + sec) / ext:>9.2f}")
    return {"spec": args.spec, "dtype": str(enc.dtype).removeprefix("torch."), "extract_s": ext,
            "x_extract": {name: (ext + sec) / ext for name, sec in rows}}


if __name__ == "__main__":
    main()
