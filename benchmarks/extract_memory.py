"""Peak host memory of ``dense extract`` with every block of So400m/14 (random weights) kept, at batch 32.

    python benchmarks/extract_memory.py                 # 64 JPEGs, --layers 0..26, --batch-size 32, eager
    python benchmarks/extract_memory.py --images 16 --batch-size 8 --layers -1   # a smaller case

The random tower is saved as a vision-only checkpoint folder (in its default dtype: bfloat16 where the CPU has
AMX/AVX512-BF16) and ``dense extract`` runs on it as a child process; its peak RSS is the kernel's high-water mark
of that process (``ru_maxrss`` of the waited-for child), so everything ``dense extract`` held counts: weights, the
batch of tokens, the entries waiting for the writer threads, the reader's pixels. The JPEGs are
``benchmarks/extract.py``'s aspect mix (what one image's 27 blocks weigh depends on its grid).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layers", default="all", help="comma-separated blocks, or 'all' (0..26)")
    ap.add_argument("--spec", default="so400m-patch14-384")
    ap.add_argument("--work", help="keep the checkpoint, JPEGs and cache here (default: a temp dir)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    from extract import cpu_facts, write_folder

    import dense
    from dense.device import peak_rss_gib

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        enc = dense.random_encoder(args.spec, compile=False)
        layers = ",".join(map(str, range(enc.num_layers))) if args.layers == "all" else args.layers
        ckpt = work / f"{args.spec}-random"
        if not (ckpt / "config.json").exists():
            enc.vision.save_pretrained(ckpt)
        dtype = str(enc.dtype).removeprefix("torch.")
        del enc
        images = work / f"jpegs{args.images}"
        write_folder(images, args.images)
        cache = work / "cache"
        cmd = [sys.executable, "-m", "dense.cli", "extract", "--model", str(ckpt), "--images", str(images),
               "--cache", str(cache), "--layers", layers, "--batch-size", str(args.batch_size), "--no-compile",
               "--quiet"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"dense extract failed: {out.stderr.strip()[-2000:]}")
        peak = peak_rss_gib(children=True)  # the child's high-water mark
        print(f"CPU: {cpu_facts()}")
        print(f"dense extract, {args.spec} random weights ({dtype}), {args.images} JPEGs, --layers {args.layers}, "
              f"--batch-size {args.batch_size}: peak RSS {peak:.2f} GiB, {wall:.0f} s")
        print(out.stdout.strip())
        if args.json:
            from dense._atomic import write_json

            write_json(args.json, {"spec": args.spec, "dtype": dtype, "images": args.images, "layers": args.layers,
                                   "batch_size": args.batch_size, "peak_rss_gib": peak, "wall_s": wall,
                                   "cpu": cpu_facts(), "command": cmd[1:]})


if __name__ == "__main__":
    main()
