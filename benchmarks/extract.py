"""Extraction speed and memory: So400m (random weights) at native aspect ratio, dense vs the transformers idiom.

    python benchmarks/extract.py                 # 480x640 photos, 729-token budget, fp32/bf16, batch 1/4
    python benchmarks/extract.py --repeats 1     # quicker

Each configuration runs in its own process, so peak RSS is that configuration's alone. "dense" is
``random_encoder("so400m-patch14-384").extract_many`` (vision tower only, native-aspect grid, PIL resize).
"transformers" is the idiomatic way: a full ``SiglipModel`` + ``SiglipImageProcessor`` (sized to the same
native-aspect grid) + ``model.vision_model(..., interpolate_pos_encoding=True)``. Achieved GFLOP/s counts
8ND^2 + 4NDF + 4N^2D per layer (27 layers, D=1152, F=4304), next to a matmul peak measured in the same process.
Timing does not depend on weight values.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

D, F, LAYERS = 1152, 4304, 27


def forward_flops(n_tokens: int) -> float:
    return LAYERS * (8 * n_tokens * D**2 + 4 * n_tokens * D * F + 4 * n_tokens**2 * D)


def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 5, budget_s: float = 5.0) -> float:
    """Best-of GFLOP/s of an n x n matmul; stops early past ``budget_s`` (bf16 crawls on CPUs without bf16 units)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return 2 * n**3 / best / 1e9


def photos(n: int, hw=(480, 640)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8) for _ in range(n)]


def run_one(way: str, dtype_name: str, batch: int, repeats: int, hw: tuple[int, int]) -> dict:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    import dense
    from dense.preprocess import choose_grid

    gh, gw = choose_grid(hw, 14, 729)
    images = photos(batch, hw)
    if way == "dense":
        enc = dense.random_encoder("so400m-patch14-384", dtype=dtype)

        def step():
            return list(enc.extract_many(images, batch_size=batch, progress=False))
    else:
        from PIL import Image
        from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

        spec = dense.encoder.RANDOM_SPECS["so400m-patch14-384"]
        model = SiglipModel(SiglipConfig(text_config=spec["text"], vision_config=spec["vision"])).to(dtype).eval()
        proc = SiglipImageProcessorPil(size={"height": gh * 14, "width": gw * 14}, resample=2,
                                       image_mean=[0.5] * 3, image_std=[0.5] * 3)
        pil = [Image.fromarray(x) for x in images]

        def step():
            with torch.inference_mode():
                px = proc(images=pil, return_tensors="pt")["pixel_values"].to(dtype)
                return model.vision_model(pixel_values=px, interpolate_pos_encoding=True).last_hidden_state

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    peak = matmul_peak(dtype)
    return {"way": way, "dtype": dtype_name, "batch": batch, "tokens": gh * gw, "sec_per_batch": sec,
            "images_per_s": batch / sec, "gflops": batch * forward_flops(gh * gw) / sec / 1e9, "peak_gflops": peak,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hw", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--ways", nargs="+", default=["dense", "transformers"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(**json.loads(args.one))))
        return
    print(f"So400m/14 random weights, {args.hw[0]}x{args.hw[1]} images, 729-token budget, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    header = (f"{'way':<13}{'dtype':<6}{'batch':>6}{'tokens':>8}{'s/batch':>9}{'img/s':>8}{'GFLOP/s':>9}"
              f"{'matmul peak':>13}{'% peak':>8}{'peak RSS GiB':>14}")
    print(header)
    print("-" * len(header))
    for dtype in args.dtypes:
        for batch in args.batches:
            for way in args.ways:
                cfg = {"way": way, "dtype_name": dtype, "batch": batch, "repeats": args.repeats,
                       "hw": list(args.hw)}
                out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True,
                                     text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{r['way']:<13}{r['dtype']:<6}{r['batch']:>6}{r['tokens']:>8}{r['sec_per_batch']:>9.2f}"
                      f"{r['images_per_s']:>8.3f}{r['gflops']:>9.1f}{r['peak_gflops']:>13.1f}"
                      f"{100 * r['gflops'] / r['peak_gflops']:>7.0f}%{r['peak_rss_gib']:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
