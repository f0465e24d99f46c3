"""Extraction speed and memory: So400m/14 (random weights) at native aspect ratio, dense vs the transformers idiom.

    python benchmarks/extract.py                  # the full table on this CPU (~10 min on 2 quiet AMX cores)
    python benchmarks/extract.py --quick          # a few minutes: fewer repeats, a 48-JPEG folder
    python benchmarks/extract.py --device cuda    # the same table on a GPU; the folder runs at batch 32
    python benchmarks/extract.py --json out.json  # also write every row and ratio as JSON
    python benchmarks/extract.py --quick --spec tiny-siglip --folder-images 4   # a smoke run of every code path

Rows:
- ``idiom``: what a transformers user writes: ``SiglipVisionModel`` (pooling head included) + its own image processor
  (sized to the same native-aspect grid, per image) + ``model(pixel_values, interpolate_pos_encoding=True)``, one
  image at a time, in float32 (its default) and in bfloat16.
- ``dense``: ``random_encoder("so400m-patch14-384")`` at its default dtype ("auto": bfloat16 on CPUs with AMX or
  AVX512-BF16 and on GPUs of compute capability 8+, else float32) and at the other dtype; ``extract_many`` at batch 1
  and 8 (and 32 on a GPU).
- ``folder``: 200 JPEGs of a COCO-like aspect mix (640x480, 480x640, 640x427, 500x375, 640x640, 640x360, 640x256,
  256x640) written to a temp dir. ``model only`` times the tower on pixels prepared in advance (the same batches
  ``extract_many`` forms); ``end to end`` reads paths from disk (decode, resize, batch, forward, FeatureMaps).

Each row runs in its own process, so peak RSS (and CUDA peak memory) is that row's alone; the matmul peak of each dtype
is measured in the same run. Achieved GFLOP/s counts 8ND^2 + 4NDF + 4N^2D per layer (27 layers, D=1152, F=4304) over
the real (unpadded) tokens. Timing does not depend on weight values. The bf16-vs-fp32 cosines at the end compare
the tokens of one photo between the float32 and bfloat16 rows (per-token cosine, mean and min).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

D, F, LAYERS, P = 1152, 4304, 27, 14  # So400m; --spec sets them from another RANDOM_SPECS entry
SPEC = "so400m-patch14-384"
BUDGET = 729
ASPECTS_HW = [(480, 640), (640, 480), (427, 640), (375, 500), (640, 640), (360, 640), (256, 640), (640, 256)]


def use_spec(spec: str) -> None:
    """Point the module's architecture constants at ``dense.checkpoint.RANDOM_SPECS[spec]``."""
    global D, F, LAYERS, P, SPEC, BUDGET
    from dense.checkpoint import RANDOM_SPECS

    v = RANDOM_SPECS[spec]["vision"]
    D, F, LAYERS, P, SPEC = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], v["patch_size"], spec
    BUDGET = (v["image_size"] // P) ** 2


def photo_tokens() -> int:
    """Tokens of the 480x640 photo of the synthetic rows (713 for So400m/14 at 729)."""
    from dense.preprocess import choose_grid

    gh, gw = choose_grid((480, 640), P, BUDGET)
    return gh * gw


def forward_flops(n_tokens: int) -> float:
    return LAYERS * (8 * n_tokens * D**2 + 4 * n_tokens * D * F + 4 * n_tokens**2 * D)


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, repeats: int = 5, budget_s: float = 4.0) -> float:
    """Best-of GFLOP/s of an n x n matmul; stops early past ``budget_s`` (bf16 crawls on CPUs without bf16 units)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    best, spent = float("inf"), 0.0
    for _ in range(repeats * (20 if device == "cuda" else 1)):
        t0 = time.perf_counter()
        a @ b
        sync()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return 2 * n**3 / best / 1e9


def cpu_facts() -> str:
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "avx2"]
    have = " ".join(f for f in wanted if f in flags) or "n/a"
    return (f"{model}; flags: {have}; torch cpu capability {torch.backends.cpu.get_cpu_capability()}; "
            f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")


def photo(hw: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random 'photo' (JPEG-compressible like a real one, unlike white noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)).resize(hw[::-1], Image.BICUBIC)
    noise = rng.normal(0, 8, size=(*hw, 3))
    return np.clip(np.asarray(small, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


def write_folder(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"{k:04d}.jpg"
        if not path.exists():
            Image.fromarray(photo(ASPECTS_HW[k % len(ASPECTS_HW)], k)).save(path, quality=90)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# One row, in its own process


def _idiom(dtype: torch.dtype, device: str):
    """transformers' own way: SiglipVisionModel + its image processor, one image at a time at native aspect."""
    from PIL import Image
    from transformers import SiglipVisionConfig, SiglipVisionModel

    try:  # what AutoImageProcessor picks: the torchvision backend when installed, else PIL
        import torchvision  # noqa: F401
        from transformers import SiglipImageProcessor as Processor
    except ImportError:
        from transformers import SiglipImageProcessorPil as Processor

    import dense
    from dense.preprocess import choose_grid

    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(**dense.checkpoint.RANDOM_SPECS[SPEC]["vision"]))
    model = model.to(device, dtype).eval()
    proc = Processor(resample=Image.BILINEAR, image_mean=[0.5] * 3, image_std=[0.5] * 3)

    def run(image) -> torch.Tensor:
        pil = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else Image.fromarray(image)
        gh, gw = choose_grid((pil.height, pil.width), P, BUDGET)
        with torch.inference_mode():
            px = proc(images=pil, size={"height": gh * P, "width": gw * P}, return_tensors="pt")["pixel_values"]
            out = model(pixel_values=px.to(device, dtype), interpolate_pos_encoding=True).last_hidden_state
            return out[0].float().cpu()  # [N, D]

    return run


def run_row(way: str, dtype_name: str, batch: int, repeats: int, device: str, folder: str | None, n_folder: int,
            save_dir: str | None, num_workers: int | None = None, spec: str = SPEC) -> dict:
    import dense
    from dense.batching import padding_waste, plan_batches, prepared_stream
    from dense.device import resolve_dtype

    use_spec(spec)
    dtype = resolve_dtype("auto" if dtype_name == "auto" else dtype_name, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    row: dict = {"way": way, "dtype": str(dtype).removeprefix("torch."), "batch": batch}
    first = None
    if way.startswith("idiom"):
        run = _idiom(dtype, device)
        if folder is None:
            images = [photo((480, 640), k) for k in range(max(repeats, 1))]
        else:
            images = sorted(Path(folder).glob("*.jpg"))[:n_folder]
        first = run(images[0])  # warm-up
        sync()
        t0 = time.perf_counter()
        n_tokens = [run(image).shape[0] for image in images]
        sync()
        sec = (time.perf_counter() - t0) / len(images)
    else:
        enc = dense.random_encoder(SPEC, device=device, dtype=dtype)
        if folder is None:  # model + in-memory preprocessing, 480x640 images (713 tokens at So400m/14)
            images = [photo((480, 640), k) for k in range(batch)]
            first = next(enc.extract_many(images[:1], batch_size=1, progress=False)).tokens.flatten(0, 1)
            list(enc.extract_many(images, batch_size=batch, progress=False))  # warm-up at this batch size
            times = []
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                list(enc.extract_many(images, batch_size=batch, progress=False, num_workers=0))
                times.append(time.perf_counter() - t0)
            sec = float(np.median(times)) / batch
            n_tokens = [photo_tokens()]
        else:
            paths = sorted(Path(folder).glob("*.jpg"))[:n_folder]
            items = list(prepared_stream(paths, enc.pixels, enc.pixels.max_patches))
            window = 8 * batch  # as extract_many
            batches = []
            for s in range(0, len(items), window):
                chunk = items[s:s + window]
                batches += [[chunk[k] for k in b] for b in plan_batches([it.n_tokens for it in chunk], batch,
                                                                        keys=[it.grid_hw for it in chunk])]
            tokens = [it.n_tokens for it in items]
            row["padding_waste"] = padding_waste(tokens, [[it.index for it in b] for b in batches])
            enc.forward_batch([it.pixels for it in batches[0]])  # warm-up
            if way == "dense-model":
                sync()
                t0 = time.perf_counter()
                for b in batches:
                    enc.forward_batch([it.pixels for it in b])
                sec = (time.perf_counter() - t0) / len(items)
            else:  # end to end from disk
                t0 = time.perf_counter()
                for _ in enc.extract_many(paths, batch_size=batch, progress=False, num_workers=num_workers):
                    pass
                sec = (time.perf_counter() - t0) / len(items)
                from dense.batching import default_num_workers

                row["num_workers"] = default_num_workers(enc.device, len(paths)) if num_workers is None else num_workers
            n_tokens = tokens
    if save_dir and first is not None:
        torch.save(first, Path(save_dir) / f"{way}-{row['dtype']}.pt")
    row.update(sec_per_img=sec, images_per_s=1.0 / sec, tokens=int(np.mean(n_tokens)),
               gflops=float(np.mean([forward_flops(n) for n in n_tokens])) / sec / 1e9,
               peak_gflops=matmul_peak(dtype, device, n=2048 if D >= 1024 else 256),
               peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               cuda_peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0)
    return row


# ---------------------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quick", action="store_true", help="1 repeat, a 48-JPEG folder, idiom on 4 folder images")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per synthetic row (default 3; quick 1)")
    ap.add_argument("--folder-images", type=int, default=None, help="JPEGs in the folder (default 200; quick 48)")
    ap.add_argument("--folder", default=None, help="reuse (or create) the JPEG folder here instead of a temp dir")
    ap.add_argument("--batches", default=None, help="synthetic batch sizes, comma-separated (default 1,8; GPU 1,8,32)")
    ap.add_argument("--no-other-dtype", action="store_true", help="skip the non-default dtype rows")
    ap.add_argument("--spec", default=SPEC, help="random architecture (dense.checkpoint.RANDOM_SPECS); tiny-siglip "
                                                 "for a smoke run")
    ap.add_argument("--json", default=None, help="also write the rows, ratios and CPU facts here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one row, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_row(**json.loads(args.one))))
        return
    use_spec(args.spec)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    repeats = args.repeats or (1 if args.quick else 3)
    n_folder = args.folder_images or (48 if args.quick else 200)
    folder_batch = 32 if args.device == "cuda" else 8
    n_idiom_folder = 4 if args.quick else (n_folder if args.device == "cuda" else 16)
    from dense.device import resolve_dtype

    auto = str(resolve_dtype("auto", args.device)).removeprefix("torch.")
    other = "float32" if auto == "bfloat16" else "bfloat16"
    rows = [  # (label, way, dtype, batch, folder?, num_workers)
        ("idiom", "idiom", "fp32", 1, False, None),
        ("idiom", "idiom", "bf16", 1, False, None),
        ("dense (default)", "dense", "auto", 1, False, None),
        ("dense (default)", "dense", "auto", 8, False, None),
        (f"dense {other}", "dense", other, 1, False, None),
        (f"dense {other}", "dense", other, 8, False, None),
        ("folder: idiom", "idiom", "fp32" if auto == "float32" else "bf16", 1, True, None),
        ("folder: dense model only", "dense-model", "auto", folder_batch, True, None),
        ("folder: dense end to end", "dense-e2e", "auto", folder_batch, True, None),
    ]
    if args.device == "cpu":
        rows.append(("folder: dense e2e, 1 worker", "dense-e2e", "auto", folder_batch, True, 1))
    if args.device == "cuda":
        rows.insert(4, ("dense (default)", "dense", "auto", 32, False, None))
    batches = [int(b) for b in (args.batches or ("1,8,32" if args.device == "cuda" else "1,8")).split(",")]
    rows = [r for r in rows if r[4] or (r[3] in batches and not (args.no_other_dtype and r[0] == f"dense {other}"))]
    if args.no_other_dtype:  # the idiom keeps float32, its own default, beside dense's default
        rows = [r for r in rows if r[0] != "idiom" or r[2] in ("fp32", "bf16" if auto == "bfloat16" else "fp32")]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or Path(tmp) / "jpegs")
        t0 = time.perf_counter()
        write_folder(folder, n_folder)
        load1 = os.getloadavg()
        print(f"{SPEC} random weights, {BUDGET}-token budget, device {args.device}, torch {torch.__version__}")
        print(f"CPU: {cpu_facts()}")
        if args.device == "cuda":
            print(f"GPU: {torch.cuda.get_device_name()}")
        print(f"load average at start {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}; synthetic rows: 480x640 "
              f"({photo_tokens()} tokens), {repeats} timed repeat(s); folder: {n_folder} JPEGs (written in "
              f"{time.perf_counter() - t0:.1f} s), idiom on the first {n_idiom_folder}")
        header = (f"{'row':<36}{'dtype':<10}{'batch':>6}{'tokens':>7}{'s/img':>8}{'img/s':>8}{'GFLOP/s':>9}"
                  f"{'mm peak':>9}{'%peak':>6}{'RSS GiB':>8}{'pad %':>7}")
        if args.device == "cuda":
            header += "  CUDA GiB"
        print(header)
        print("-" * len(header), flush=True)
        results = {}
        for label, way, dtype, batch, in_folder, workers in rows:
            cfg = {"way": way, "dtype_name": dtype, "batch": batch, "repeats": repeats, "device": args.device,
                   "folder": str(folder) if in_folder else None,
                   "n_folder": n_idiom_folder if way == "idiom" else n_folder,
                   "save_dir": tmp if not in_folder and batch == 1 else None, "num_workers": workers,
                   "spec": args.spec}
            out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{label:<36}FAILED: {out.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["label"] = label
            results[(label, r["dtype"], batch)] = r
            name = label + (f", {r['num_workers']} workers" if "num_workers" in r and workers is None else "")
            pad = f"{100 * r['padding_waste']:.2f}" if "padding_waste" in r else ""
            line = (f"{name:<36}{r['dtype']:<10}{batch:>6}{r['tokens']:>7}{r['sec_per_img']:>8.3f}"
                    f"{r['images_per_s']:>8.2f}{r['gflops']:>9.0f}{r['peak_gflops']:>9.0f}"
                    f"{100 * r['gflops'] / r['peak_gflops']:>5.0f}%{r['peak_rss_gib']:>8.2f}"
                    f"{pad:>7}")
            if args.device == "cuda":
                line += f"  {r['cuda_peak_gib']:.2f}"
            print(line, flush=True)
        ratios = summary(results, auto, other, folder_batch)
        cosines = {}
        for way in ("idiom", "dense"):
            a, b = (Path(tmp) / f"{way}-{d}.pt" for d in ("float32", "bfloat16"))
            if a.exists() and b.exists():
                c = torch.nn.functional.cosine_similarity(torch.load(a), torch.load(b), dim=-1)  # [N]
                cosines[way] = {"mean": float(c.mean()), "min": float(c.min())}
                print(f"{way}: bfloat16 vs float32 tokens of one 480x640 photo, per-token cosine mean {c.mean():.5f}, "
                      f"min {c.min():.5f}")
        load2 = os.getloadavg()
        print(f"load average at end {load2[0]:.2f} / {load2[1]:.2f} / {load2[2]:.2f}")
    if args.json:
        from dense._atomic import write_json

        write_json(args.json, {"spec": SPEC, "device": args.device, "cpu": cpu_facts(), "torch": torch.__version__,
                               "repeats": repeats, "folder_images": n_folder, "default_dtype": auto,
                               "load_average": [load1[0], load2[0]], "rows": list(results.values()),
                               "ratios": ratios, "bf16_vs_fp32_cosine": cosines}, indent=2)


def summary(results: dict, auto: str, other: str, folder_batch: int) -> dict:
    """Print the ratios under the table; returns them by name."""
    def ips(label, dtype, batch):
        r = results.get((label, dtype, batch))
        return r["images_per_s"] if r else float("nan")

    out = {}
    for batch in (1, 8):
        dense_ips = ips("dense (default)", auto, batch)
        out[f"default_b{batch}_vs_idiom_float32"] = dense_ips / ips("idiom", "float32", 1)
        out[f"default_b{batch}_vs_idiom_bfloat16"] = dense_ips / ips("idiom", "bfloat16", 1)
        print(f"dense default ({auto}) batch {batch} vs idiom float32: "
              f"{out[f'default_b{batch}_vs_idiom_float32']:.2f}x; vs idiom bfloat16: "
              f"{out[f'default_b{batch}_vs_idiom_bfloat16']:.2f}x")
    for label, dtype in (("dense (default)", auto), (f"dense {other}", other)):
        out[f"{dtype}_b8_over_b1_s_per_img"] = ips(label, dtype, 1) / ips(label, dtype, 8)
        print(f"{dtype}: batch-8 s/img / batch-1 s/img = {out[f'{dtype}_b8_over_b1_s_per_img']:.3f}")
    e2e = ips("folder: dense end to end", auto, folder_batch)
    model = ips("folder: dense model only", auto, folder_batch)
    idiom = next((r["images_per_s"] for k, r in results.items() if k[0] == "folder: idiom"), float("nan"))
    out["folder_e2e_over_model_only"], out["folder_e2e_vs_idiom"] = e2e / model, e2e / idiom
    print(f"folder: dense end to end / model only = {e2e / model:.3f}; dense end to end vs idiom: {e2e / idiom:.2f}x")
    return out


if __name__ == "__main__":
    main()
