"""Probe training from the on-disk cache at scale: peak RSS and tokens/s, streamed vs in memory (synthetic features).

    python benchmarks/probe_scale.py                         # 5,000 entries x 27 x 27 x 1152 bf16, 2 epochs, 5 lrs
    python benchmarks/probe_scale.py --entries 1000 --ram 500 --dir /tmp/probe-scale
    python benchmarks/probe_scale.py --entries 6 --ram 3 --val 2 --heads 1 --epochs 1 --classes 3 --remove   # smoke

Writes a cache of ``--entries`` entries (So400m-shaped bf16 tokens, 27 x 27 grid, 378 x 378 label maps of
``--classes`` classes as ``.npy`` beside it; kept for the next run), then, each in its own process so that its peak
RSS (``ru_maxrss``) is its own:

- ``stream N``: ``train_probes`` on all entries streamed from the cache (``load_samples``' default);
- ``stream 1k`` and ``in-RAM 1k``: the first ``--ram`` entries streamed, and held in memory (``Sample``s of the same
  bf16 tokens, ``feature_dtype="bfloat16"``): the tokens/s ratio compares the two trainers on the same data.

tokens/s counts training tokens x epochs over the training loop (BN pass and validation excluded; both are timed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dense.device import peak_rss_gib

GH = GW = 27
P, D = 14, 1152
SPEC = dict(fingerprint="synthetic", family="siglip", patch_size=P, hidden_size=D, num_layers=27, max_patches=729,
            layers=[26], dtype="float32", store_dtype="bfloat16")


def write_cache(root: Path, n: int, classes: int) -> None:
    import numpy as np
    import torch

    from dense.cache import FeatureCache
    from dense.features import FeatureMap

    cache = FeatureCache(root / "cache", SPEC)
    cache.init()
    labels = root / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    todo = [k for k in range(n) if not (labels / f"{k}.npy").exists()]
    for k in todo:
        tokens = torch.randn(GH, GW, D, generator=gen).to(torch.bfloat16)  # [gh, gw, D]
        cache.put(str(k), FeatureMap(tokens, (GH * P, GW * P), (GH * P, GW * P), P, (26,), dict(SPEC)))
        grid_label = rng.integers(0, classes, size=(GH, GW), dtype=np.uint8)
        np.save(labels / f"{k}.npy", np.kron(grid_label, np.ones((P, P), np.uint8)))  # [378, 378]


def run_one(args) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from functools import partial

    import probes.train as pt
    from dense.cache import FeatureCache
    from probes.stream import cached_samples
    from probes.train import ProbeConfig, Sample, train_probes

    root = Path(args.dir)
    cache = FeatureCache(root / "cache", SPEC)
    keys = [str(k) for k in range(args.n)]
    val_keys = [str(args.entries - 1 - k) for k in range(args.val)]
    lab = lambda k: np.load(root / "labels" / f"{k}.npy")  # noqa: E731
    train = cached_samples(cache, keys, [partial(lab, k) for k in keys])
    val = cached_samples(cache, val_keys, [partial(lab, k) for k in val_keys])
    if args.mode == "ram":
        train = [Sample(s.key, s.fmap, s.label) for s in train]  # bf16 tokens, as on disk
    data_rss = peak_rss_gib()
    timings = {}
    t0 = time.perf_counter()
    orig_stats, orig_eval = pt._token_stats, pt.score_probes

    def stats(*a, **k):
        out = orig_stats(*a, **k)
        timings["bn"] = time.perf_counter() - t0
        return out

    def evaluate(*a, **k):
        timings["train"] = time.perf_counter() - t0 - timings["bn"]
        t1 = time.perf_counter()
        out = orig_eval(*a, **k)
        timings["val"] = time.perf_counter() - t1
        return out

    pt._token_stats, pt.score_probes = stats, evaluate
    lrs = tuple(float(x) for x in 10.0 ** np.linspace(-4, -2, args.heads))
    cfg = ProbeConfig(lrs=lrs, epochs=args.epochs, batch_size=args.batch_size, feature_dtype="bfloat16")
    train_probes(train, val, [f"c{k}" for k in range(args.classes)], cfg, progress=False)
    tokens = args.n * GH * GW * args.epochs
    return {"mode": args.mode, "n": args.n, "epochs": args.epochs, "heads": args.heads, "classes": args.classes,
            "threads": args.threads, "bn_s": timings["bn"], "train_s": timings["train"], "val_s": timings["val"],
            "tokens_per_s": tokens / timings["train"], "data_rss_gib": data_rss,
            "peak_rss_gib": peak_rss_gib(),
            "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/dense-probe-scale")
    ap.add_argument("--entries", type=int, default=5000)
    ap.add_argument("--ram", type=int, default=1000, help="entries of the in-memory comparison")
    ap.add_argument("--val", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--heads", type=int, default=5, help="learning rates swept in the one pass")
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--remove", action="store_true", help="delete the synthetic cache afterwards")
    ap.add_argument("--json", default=None, help="also write the rows and ratios here")
    ap.add_argument("--mode", choices=("stream", "ram"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_one(args)))
        return
    root = Path(args.dir)
    t0 = time.perf_counter()
    write_cache(root, args.entries, args.classes)
    disk = sum(p.stat().st_size for p in (root / "cache").rglob("*.safetensors"))
    print(f"cache: {args.entries} entries x {GH}x{GW} x {D} bf16, {disk / 1e9:.2f} GB on disk "
          f"({disk / 2**30:.2f} GiB), written/checked in {time.perf_counter() - t0:.0f} s; labels: "
          f"{args.classes} classes at {GH * P}x{GW * P}")
    base = [sys.executable, __file__, "--dir", args.dir, "--entries", str(args.entries), "--val", str(args.val),
            "--epochs", str(args.epochs), "--heads", str(args.heads), "--classes", str(args.classes),
            "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    rows = []
    print(f"{'run':<14}{'entries':>8}{'BN s':>7}{'train s':>9}{'val s':>7}{'tokens/s':>10}{'data GiB':>9}"
          f"{'peak RSS GiB':>13}{'load':>6}", flush=True)
    for mode, n in (("stream", args.ram), ("ram", args.ram), ("stream", args.entries)):
        out = subprocess.run([*base, "--mode", mode, "--n", str(n)], capture_output=True, text=True)
        if out.returncode:
            print(f"{mode} {n} failed: {out.stderr[-800:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{('in-RAM' if mode == 'ram' else 'stream'):<14}{n:>8}{r['bn_s']:>7.1f}{r['train_s']:>9.1f}"
              f"{r['val_s']:>7.1f}{r['tokens_per_s']:>10.0f}{r['data_rss_gib']:>9.2f}{r['peak_rss_gib']:>13.2f}"
              f"{r['load']:>6.1f}", flush=True)
    by = {(r["mode"], r["n"]): r for r in rows}
    s1, r1, sN = by.get(("stream", args.ram)), by.get(("ram", args.ram)), by.get(("stream", args.entries))
    if s1 and r1:
        print(f"tokens/s stream / in-RAM at {args.ram} entries: {s1['tokens_per_s'] / r1['tokens_per_s']:.2f}")
    if sN and r1:
        print(f"tokens/s stream {args.entries} / in-RAM {args.ram}: {sN['tokens_per_s'] / r1['tokens_per_s']:.2f}; "
              f"peak RSS stream {args.entries}: {sN['peak_rss_gib']:.2f} GiB vs in-RAM {args.ram}: "
              f"{r1['peak_rss_gib']:.2f} GiB")
    print(f"{args.heads} lrs x {args.classes} classes, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.threads} torch thread(s), {args.val} val entries; CPU shared (load = 1-min load average)")
    if args.json:
        from dense._atomic import write_json

        ratios = {}
        if s1 and r1:
            ratios["stream_over_ram_tokens_per_s"] = s1["tokens_per_s"] / r1["tokens_per_s"]
        if sN and r1:
            ratios["streamN_over_ram_tokens_per_s"] = sN["tokens_per_s"] / r1["tokens_per_s"]
        write_json(args.json, {"entries": args.entries, "ram": args.ram, "classes": args.classes, "heads": args.heads,
                               "epochs": args.epochs, "threads": args.threads, "cache_gb": disk / 1e9, "rows": rows,
                               "ratios": ratios}, indent=2)
    if args.remove:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
