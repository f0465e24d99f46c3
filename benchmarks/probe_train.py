"""Linear-probe training speed and memory on So400m-shaped features (random values; speed does not depend on them).

    python benchmarks/probe_train.py                      # 1,000 images x 27 x 27 tokens x 1152, 10 epochs, 5 heads
    python benchmarks/probe_train.py --heads 1 --feature-dtype bfloat16 --threads 2 --label-scale 2
    python benchmarks/probe_train.py --matrix              # a few settings, each in its own process, one table

Each setting runs in a fresh process so that its peak RSS (``ru_maxrss``) is its own. Timed: the training loop of
``probes.train.train_probes`` (``train s``) and the validation of every head at original resolution (``val s``, on
``--val`` images of 378 x 378); feature generation is not timed. The CPU may be shared: the table prints the 1-minute
load average before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from dense.device import peak_rss_gib, rss_gib


def run_one(args) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from dense.features import FeatureMap
    from probes.train import ProbeConfig, Sample, train_probes

    gh = gw = 27
    p, D, K = 14, 1152, args.classes
    spec = dict(name="random:so400m-patch14-384", family="siglip", patch_size=p, hidden_size=D, num_layers=27,
                max_patches=729, layers=[26], dtype="float32")
    store = getattr(torch, args.feature_dtype)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def samples(n):
        out = []
        for k in range(n):
            tokens = torch.randn(gh, gw, D, generator=gen).to(store)  # [gh, gw, D]
            grid_label = rng.integers(0, K, size=(gh, gw), dtype=np.uint8)
            label = np.kron(grid_label, np.ones((p, p), np.uint8))  # [378, 378]
            out.append(Sample(str(k), FeatureMap(tokens, (gh * p, gw * p), (gh * p, gw * p), p, (26,), spec), label))
        return out

    train, val = samples(args.images), samples(args.val)
    lrs = tuple(10.0 ** np.linspace(-4, -2, args.heads)) if args.heads > 1 else (1e-3,)
    cfg = ProbeConfig(lrs=lrs, epochs=args.epochs, batch_size=args.batch_size, label_scale=args.label_scale,
                      feature_dtype=args.feature_dtype)
    data_rss = rss_gib()  # what the samples themselves hold, before training
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    timings = {}
    # time the training loop and the validation separately: wrap the evaluator the sweep calls at its end
    import probes.train as pt

    orig = pt.score_probes

    def timed(*a, **k):
        timings["train"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        out = orig(*a, **k)
        timings["val"] = time.perf_counter() - t1
        return out

    pt.score_probes = timed
    res = train_probes(train, val, [f"c{k}" for k in range(K)], cfg, progress=False)
    return {"images": args.images, "epochs": args.epochs, "heads": len(lrs), "classes": K,
            "feature_dtype": args.feature_dtype, "threads": args.threads, "label_scale": args.label_scale,
            "batch_size": args.batch_size, "train_s": timings["train"], "val_s": timings["val"],
            "total_s": res.seconds, "data_rss_gib": data_rss,
            "peak_rss_gib": peak_rss_gib(),
            "load_before": load0, "load_after": os.getloadavg()[0]}


HEADER = (f"{'images':>6} {'epochs':>6} {'heads':>5} {'K':>3} {'features':>9} {'thr':>3} {'s':>2} {'train s':>8} "
          f"{'val s':>6} {'data GiB':>8} {'peak RSS GiB':>12} {'load before/after':>17}")


def row(r: dict) -> str:
    return (f"{r['images']:>6} {r['epochs']:>6} {r['heads']:>5} {r['classes']:>3} {r['feature_dtype']:>9} "
            f"{r['threads']:>3} {r['label_scale']:>2} {r['train_s']:>8.1f} {r['val_s']:>6.1f} "
            f"{r['data_rss_gib']:>8.2f} {r['peak_rss_gib']:>12.2f} {r['load_before']:>8.1f}/{r['load_after']:<8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--val", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--heads", type=int, default=5, help="learning rates swept in the one pass")
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--label-scale", type=int, default=1)
    ap.add_argument("--feature-dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (2 spin-wait badly on a loaded CPU)")
    ap.add_argument("--matrix", action="store_true", help="run several settings, each in its own process")
    ap.add_argument("--json", action="store_true", help="print one JSON line (used by --matrix)")
    args = ap.parse_args()
    if not args.matrix:
        r = run_one(args)
        print(json.dumps(r) if args.json else f"{HEADER}\n{row(r)}")
        return
    settings = [
        ["--heads", "5", "--threads", "1"],
        ["--heads", "1", "--threads", "1"],
        ["--heads", "5", "--threads", "1", "--feature-dtype", "bfloat16"],
        ["--heads", "5", "--threads", "1", "--label-scale", "2"],
        ["--heads", "5", "--threads", "2"],
    ]
    base = ["--images", str(args.images), "--epochs", str(args.epochs), "--val", str(args.val),
            "--classes", str(args.classes)]
    print(HEADER, flush=True)
    for extra in settings:
        out = subprocess.run([sys.executable, __file__, *base, *extra, "--json"], capture_output=True, text=True)
        if out.returncode:
            print(f"failed {extra}: {out.stderr[-500:]}")
            continue
        print(row(json.loads(out.stdout.strip().splitlines()[-1])), flush=True)


if __name__ == "__main__":
    main()
