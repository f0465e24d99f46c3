"""Linear-probe quality on the synthetic shapes world: ``shapes-tiny`` vs the same architecture with random weights.

    python benchmarks/probe_shapes.py --images 300 --epochs 10 --out /tmp/probe_shapes

Generates the world (``dense.datasets.make_shapes``, train/val/test from the images' ``split``), saves a randomly
initialised copy of ``shapes-tiny`` (same config, same tokenizer and pixel settings), then runs the very commands a
user would (``dense probe train ... --test-split test``) for both, and prints test mIoU / pixel accuracy side by side.
The probe predicts 17 classes (background + 16 colour-shape categories), so it needs both colour and shape.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch


def random_copy(src: Path, dst: Path, seed: int = 0) -> Path:
    """``save_pretrained`` a model of ``src``'s config with fresh random weights, plus its tokenizer/processor files."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(src)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(dst)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-tiny", help="the trained checkpoint (bundled name or folder)")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-patches", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/probe_shapes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dense.checkpoint import resolve_checkpoint
    from dense.cli import main as dense_main
    from dense.datasets import make_shapes

    out = Path(args.out)
    world = out / "world"
    if not (world / "annotations.json").exists():
        make_shapes(world, args.images, seed=args.seed)
    trained = Path(resolve_checkpoint(args.model))
    rand = out / "random-shapes-tiny"
    if not (rand / "config.json").exists():
        random_copy(trained, rand, seed=args.seed + 1000)
    rows = []
    for tag, model in (("trained", args.model), ("random init", str(rand))):
        t0 = time.perf_counter()
        argv = ["probe", "train", "--model", model, "--ann", str(world / "annotations.json"), "--images",
                str(world / "images"), "--cache", str(out / "cache"), "--epochs", str(args.epochs), "--test-split",
                "test", "--json", str(out / f"{tag.replace(' ', '_')}.json"), "--out",
                str(out / f"{tag.replace(' ', '_')}.safetensors"), "--quiet", "--seed", str(args.seed)]
        if args.max_patches:
            argv += ["--max-patches", str(args.max_patches)]
        print("$ dense " + " ".join(argv), flush=True)
        if dense_main(argv):
            raise SystemExit(f"dense probe train failed for {tag}")
        res = json.loads((out / f"{tag.replace(' ', '_')}.json").read_text())
        rows.append((tag, res, time.perf_counter() - t0))
    print(f"\ntrained = {args.model}; random init = the same config with fresh random weights")
    print(f"{'encoder':<12} {'train/val/test':>15} {'best head':<22} {'val mIoU':>8} {'test mIoU':>9} "
          f"{'test pix acc':>12} {'seconds':>8}")
    for tag, res, sec in rows:
        m, test = res["meta"], res["figures"]  # dense.eval.Result.to_json()
        sp = m["splits"]
        print(f"{tag:<12} {sp['train']:>5}/{sp['val']:>4}/{sp['test']:>4} {m['best']:<22} "
              f"{100 * m['sweep'][m['best']]['mIoU']:>8.2f} {100 * test['mIoU']:>9.2f} "
              f"{100 * test['pixel_acc']:>12.2f} {sec:>8.1f}")


if __name__ == "__main__":
    main()
