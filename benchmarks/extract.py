"""Extraction speed and memory: So400m/14 (random weights) at native aspect ratio, dense vs the transformers idiom.

    python benchmarks/extract.py                  # the full table on this CPU (the longest of these)
    python benchmarks/extract.py --quick          # fewer repeats, a 48-JPEG folder
    python benchmarks/extract.py --device cuda    # the same table on a GPU; the folder runs at batch 32
    python benchmarks/extract.py --decide         # only this machine's compile record (dense compile-check)

Rows:
- ``idiom``: what a transformers user writes: ``SiglipVisionModel`` (pooling head included) + its own image processor
  (sized to the same native-aspect grid, per image) + ``model(pixel_values, interpolate_pos_encoding=True)``, one
  image at a time, in float32 (its default) and in bfloat16.
- ``dense``: ``random_encoder("so400m-patch14-384")`` at its default dtype ("auto": bfloat16 on CPUs with AMX or
  AVX512-BF16 and on GPUs of compute capability 8+, else float32) and at the other dtype; ``extract_many`` at batch 1
  and 8 (and 32 on a GPU). Its compiled tower (``compile=True``, :mod:`dense.compiled`) at the default dtype, with
  ``first s`` = the first image's time (tracing and freezing; code generation too if inductor's cache is empty), and
  once more in a second process (``first s``: the generated code reused from inductor's disk cache, tracing and
  freezing paid again), each against its own steady state.
- ``decision``: this machine's record in ``dense_home()/compile.json`` (:func:`dense.compiled.check_compile`, what
  ``dense compile-check`` runs: measured here when there is none, read otherwise; ``--remeasure`` measures again),
  which sets what "default" (``compile="auto"``) means here.
- ``folder``: 200 JPEGs of a COCO-like aspect mix (640x480, 480x640, 640x427, 500x375, 640x640, 640x360, 640x256,
  256x640) written to a temp dir. ``model only`` times the tower on pixels prepared in advance (the same batches
  ``extract_many`` forms); ``end to end`` reads paths from disk (decode, resize, batch, forward, FeatureMaps). The two
  run in one process, model only first, so their ratio is side by side (processes of one run differ by up to ~10%).

Each row runs in its own process, so peak RSS (and CUDA peak memory) is that row's alone (``build GiB``: after
building the model, before the first image; dense builds in its dtype directly); ``mm peak`` is the GFLOP/s of the
MLP's ``F.linear`` in that dtype, measured in the row's own process (the call the tower spends its time in).
Achieved GFLOP/s counts 8ND^2 + 4NDF + 4N^2D per layer (27 layers, D=1152, F=4304) over the real (unpadded) tokens.
Timing does not depend on weight values. ``--rounds R`` runs the synthetic rows R times, in alternating order, and
reports each row's median over rounds (ratios then come from interleaved runs). At the end: the idiom's bf16-vs-fp32
tokens of one photo (per-token cosine, mean and min; same weights, cast), and dense compiled vs eager (max |diff|).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dense.device import peak_rss_gib

D, F, LAYERS, P = 1152, 4304, 27, 14  # So400m; --spec sets them from another RANDOM_SPECS entry
SPEC = "so400m-patch14-384"
ASPECTS_HW = [(480, 640), (640, 480), (427, 640), (375, 500), (640, 640), (360, 640), (256, 640), (640, 256)]


def use_spec(spec: str) -> None:
    """Point the module's architecture constants at ``dense.checkpoint.RANDOM_SPECS[spec]``."""
    global D, F, LAYERS, P, SPEC
    from dense.checkpoint import RANDOM_SPECS

    v = RANDOM_SPECS[spec]["vision"]
    D, F, LAYERS, P, SPEC = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], v["patch_size"], spec


def forward_flops(n_tokens: int) -> float:
    return LAYERS * (8 * n_tokens * D**2 + 4 * n_tokens * D * F + 4 * n_tokens**2 * D)


def matmul_peak(dtype: torch.dtype, device: str, repeats: int = 5, budget_s: float = 4.0) -> float:
    """Best-of GFLOP/s of the MLP's first linear (``F.linear`` of [n, D] tokens by a [F, D] weight: the call and the
    kernel the tower spends its time in; a bare ``a @ b`` in bf16 takes a naive kernel on CPUs without bf16 units,
    far slower than the linear's oneDNN path, which made the peak meaningless there). n = 1024 tokens on a CPU,
    8192 on a GPU; stops early past ``budget_s``."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, D, device=device).to(dtype)  # [n, D]
    w = torch.randn(F, D, device=device).to(dtype)  # [F, D]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.nn.functional.linear(a, w)
    sync()
    best, spent = float("inf"), 0.0
    for _ in range(repeats * (20 if device == "cuda" else 1)):
        t0 = time.perf_counter()
        torch.nn.functional.linear(a, w)  # [n, F]
        sync()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return 2 * n * D * F / best / 1e9


def cpu_facts() -> str:
    from dense.device import cpu_model_and_flags  # the one reader of the CPU's description

    model, flags = cpu_model_and_flags()
    return (f"{model}; flags: {' '.join(flags) or 'n/a'}; torch cpu capability "
            f"{torch.backends.cpu.get_cpu_capability()}; {os.cpu_count()} CPUs, "
            f"{torch.get_num_threads()} torch threads")


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
        gh, gw = choose_grid((pil.height, pil.width), P, 729)
        with torch.inference_mode():
            px = proc(images=pil, size={"height": gh * P, "width": gw * P}, return_tensors="pt")["pixel_values"]
            out = model(pixel_values=px.to(device, dtype), interpolate_pos_encoding=True).last_hidden_state
            return out[0].float().cpu()  # [N, D]

    return run


def run_row(way: str, dtype_name: str, batch: int, repeats: int, device: str, folder: str | None, n_folder: int,
            save_dir: str | None, num_workers: int | None = None, compile="auto") -> dict:
    import dense
    from dense.batching import padding_waste, plan_batches, prepared_stream
    from dense.device import resolve_dtype

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
        enc = dense.random_encoder(SPEC, device=device, dtype=dtype, compile=compile)
        row["build_rss_gib"] = peak_rss_gib()
        row["compiled"] = enc.compiled
        if folder is None:  # model + in-memory preprocessing, 480x640 images (713 tokens)
            images = [photo((480, 640), k) for k in range(batch)]
            sync()
            t0 = time.perf_counter()
            first = next(enc.extract_many(images[:1], batch_size=1, progress=False)).tokens.flatten(0, 1)
            sync()
            row["first_s"] = time.perf_counter() - t0
            list(enc.extract_many(images, batch_size=batch, progress=False))  # warm-up at this batch size
            times = []
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                list(enc.extract_many(images, batch_size=batch, progress=False, num_workers=0))
                times.append(time.perf_counter() - t0)
            sec = float(np.median(times)) / batch
            n_tokens = [713]
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
            if way == "dense-folder":  # model only, then end to end, in this one process: their ratio side by side
                sync()
                t0 = time.perf_counter()
                for b in batches:
                    enc.forward_batch([it.pixels for it in b])
                sync()
                row["model_only_s"] = (time.perf_counter() - t0) / len(items)
            if way in ("dense-folder", "dense-e2e"):  # end to end from disk
                t0 = time.perf_counter()
                for _ in enc.extract_many(paths, batch_size=batch, progress=False, num_workers=num_workers):
                    pass
                sec = (time.perf_counter() - t0) / len(items)
                from dense.batching import default_num_workers

                row["num_workers"] = default_num_workers(enc.device, len(paths)) if num_workers is None else num_workers
            n_tokens = tokens
    if save_dir and first is not None:
        tag = "-compiled" if compile is True else ""
        torch.save(first, Path(save_dir) / f"{way}{tag}-{row['dtype']}.pt")
    row.update(sec_per_img=sec, images_per_s=1.0 / sec, tokens=int(np.mean(n_tokens)),
               gflops=float(np.mean([forward_flops(n) for n in n_tokens])) / sec / 1e9,
               peak_gflops=matmul_peak(dtype, device),
               peak_rss_gib=peak_rss_gib(),
               cuda_peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0)
    return row


# ---------------------------------------------------------------------------------------------------------------------


def decision(device: str, remeasure: bool) -> dict:
    """This machine's compile record for So400m at the default dtype (measured now if missing or ``remeasure``)."""
    import dense
    from dense.compiled import check_compile, decision_path, machine_key, stored_decision

    enc = dense.random_encoder(SPEC, device=device, compile=False)
    record = None if remeasure else stored_decision(enc.vision, device=enc.device, dtype=enc.dtype)
    if record is None:
        record = check_compile(enc.vision, device=enc.device, dtype=enc.dtype, budget=enc.pixels.max_patches)
    return {**record, "key": machine_key(enc.device, enc.dtype, enc.hidden_size), "path": str(decision_path())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quick", action="store_true", help="1 repeat, a 48-JPEG folder, idiom on 4 folder images")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per synthetic row (default 3; quick 1)")
    ap.add_argument("--rounds", type=int, default=1, help="run the synthetic rows this many times, interleaved; "
                    "each row reports its median over rounds")
    ap.add_argument("--batches", default=None, help="synthetic batch sizes, comma-separated (default 1,8; GPU 1,8,32)")
    ap.add_argument("--no-folder", action="store_true", help="skip the 200-JPEG folder rows")
    ap.add_argument("--no-other-dtype", action="store_true", help="skip the non-default dtype rows")
    ap.add_argument("--folder-images", type=int, default=None, help="JPEGs in the folder (default 200; quick 48)")
    ap.add_argument("--folder", default=None, help="reuse (or create) the JPEG folder here instead of a temp dir")
    ap.add_argument("--decide", action="store_true", help="only print this machine's compile decision")
    ap.add_argument("--remeasure", action="store_true", help="measure this machine's compile decision again")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one row, print JSON
    ap.add_argument("--decision-json", action="store_true", help=argparse.SUPPRESS)  # internal
    ap.add_argument("--spec", default=SPEC, help="random architecture (dense.checkpoint.RANDOM_SPECS); tiny-siglip "
                    "for a smoke run of every code path")
    ap.add_argument("--json", default=None, help="also write the rows, ratios and CPU facts here")
    args = ap.parse_args()
    use_spec(args.spec)
    if args.one:
        print(json.dumps(run_row(**json.loads(args.one))))
        return
    if args.decision_json:
        print(json.dumps(decision(args.device, args.remeasure)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    repeats = args.repeats or (1 if args.quick else 3)
    n_folder = args.folder_images or (48 if args.quick else 200)
    folder_batch = 32 if args.device == "cuda" else 8
    n_idiom_folder = 4 if args.quick else (n_folder if args.device == "cuda" else 16)
    batches = [int(b) for b in (args.batches or ("1,8,32" if args.device == "cuda" else "1,8")).split(",")]
    from dense.device import resolve_dtype

    auto = str(resolve_dtype("auto", args.device)).removeprefix("torch.")
    other = "float32" if auto == "bfloat16" else "bfloat16"
    idiom_dtypes = [auto] + ([] if args.no_other_dtype else [other])
    synthetic = [("idiom", "idiom", d, 1, False, None, "auto") for d in idiom_dtypes]  # (label, way, dtype, batch,
    synthetic += [("dense (default)", "dense", "auto", b, False, None, "auto") for b in batches]  # folder?, workers,
    synthetic += [("dense compiled", "dense", "auto", b, False, None, True) for b in batches]  # compile)
    synthetic += [("dense compiled, 2nd process", "dense", "auto", 1, False, None, True)]
    if not args.no_other_dtype:
        synthetic += [(f"dense {other}", "dense", other, b, False, None, "auto") for b in batches if b <= 8]
    folder_rows = [
        ("folder: idiom", "idiom", "fp32" if auto == "float32" else "bf16", 1, True, None, "auto"),
        ("folder: dense end to end", "dense-folder", "auto", folder_batch, True, None, "auto"),  # + model only
    ]
    if args.device == "cpu":
        folder_rows.append(("folder: dense e2e, 1 worker", "dense-e2e", "auto", folder_batch, True, 1, "auto"))
    if args.no_folder:
        folder_rows = []

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or Path(tmp) / "jpegs")
        load1 = os.getloadavg()
        print(f"{SPEC} random weights, device {args.device}, torch {torch.__version__}")
        print(f"CPU: {cpu_facts()}")
        if args.device == "cuda":
            print(f"GPU: {torch.cuda.get_device_name()}")
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--decision-json", "--device", args.device, "--spec", SPEC]
                             + (["--remeasure"] if args.remeasure else []), capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"compile decision failed: {out.stderr.strip().splitlines()[-1:]}")
        d = json.loads(out.stdout.strip().splitlines()[-1])
        from dense.compiled import PAYS

        print(f"compile decision ({d['path']}, {time.perf_counter() - t0:.0f} s now): compile "
              f"{'ON' if d.get('compile') else 'OFF'} by default for [{d['key']}]")
        if "speedup" in d:
            print(f"  measured {d.get('measured_at')}: {d['blocks']} blocks at {d['tokens']} tokens, batch "
                  f"{d.get('batch_size', 1)}, eager {d['eager_s']:.3f} s, compiled {d['compiled_s']:.3f} s "
                  f"(x{d['speedup']:.2f}; on from x{PAYS}), first compiled call {d['first_call_s']:.1f} s"
                  + (f"; CUDA graphs {d['cudagraphs_s']:.3f} s" if "cudagraphs_s" in d else ""))
        elif "error" in d:
            print(f"  {d['error']}")
        if args.decide:
            return
        if folder_rows:
            t0 = time.perf_counter()
            write_folder(folder, n_folder)
            print(f"folder: {n_folder} JPEGs (written in {time.perf_counter() - t0:.1f} s), idiom on the first "
                  f"{n_idiom_folder}")
        print(f"load average at start {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}; synthetic rows: 480x640 "
              f"(713 tokens), {repeats} timed repeat(s) x {args.rounds} round(s)")
        header = (f"{'row':<36}{'dtype':<10}{'batch':>6}{'tokens':>7}{'s/img':>8}{'img/s':>8}{'GFLOP/s':>9}"
                  f"{'mm peak':>9}{'%peak':>6}{'RSS GiB':>8}{'build GiB':>10}{'first s':>9}{'pad %':>7}")
        if args.device == "cuda":
            header += "  CUDA GiB"
        print(header)
        print("-" * len(header), flush=True)
        results: dict = {}
        plan = []
        for r in range(args.rounds):
            plan += synthetic if r % 2 == 0 else synthetic[::-1]
        plan += folder_rows
        runs: dict = {}
        for label, way, dtype, batch, in_folder, workers, compile in plan:
            cfg = {"way": way, "dtype_name": dtype, "batch": batch, "repeats": repeats, "device": args.device,
                   "folder": str(folder) if in_folder else None,
                   "n_folder": n_idiom_folder if way == "idiom" else n_folder,
                   "save_dir": tmp if not in_folder and batch == 1 else None, "num_workers": workers,
                   "compile": compile}
            out = subprocess.run([sys.executable, __file__, "--spec", SPEC, "--one", json.dumps(cfg)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{label:<36}FAILED: {out.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs.setdefault((label, r["dtype"], batch), []).append(r)
            n_runs = len(runs[(label, r["dtype"], batch)])
            if n_runs < (1 if in_folder else args.rounds):
                continue
            r = median_row(runs[(label, r["dtype"], batch)])
            shown = [(label, r)]
            if "model_only_s" in r:  # the same process timed the model alone first: its own row, shown first
                sec = r["model_only_s"]
                m = {**r, "sec_per_img": sec, "images_per_s": 1 / sec, "gflops": r["gflops"] * r["sec_per_img"] / sec}
                m.pop("num_workers", None)
                shown.insert(0, ("folder: dense model only", m))
            for label, r in shown:
                print_row(results, label, r, batch, workers, args.device)
        ratios = summary(results, auto, batches, folder_batch, bool(folder_rows))
        a, b = (Path(tmp) / f"idiom-{d}.pt" for d in ("float32", "bfloat16"))
        if a.exists() and b.exists():
            c = torch.nn.functional.cosine_similarity(torch.load(a), torch.load(b), dim=-1)  # [N]
            print(f"idiom: bfloat16 vs float32 tokens of one 480x640 photo, per-token cosine mean {c.mean():.5f}, "
                  f"min {c.min():.5f}")
        a, b = (Path(tmp) / f"dense{t}-{auto}.pt" for t in ("", "-compiled"))
        if a.exists() and b.exists():
            ta, tb = torch.load(a), torch.load(b)
            c = torch.nn.functional.cosine_similarity(ta, tb, dim=-1)  # [N]
            print(f"dense compiled vs eager ({auto}), one 480x640 photo: max |diff| {(ta - tb).abs().max():.2e}, "
                  f"per-token cosine min {c.min():.6f}")
        load2 = os.getloadavg()
        print(f"load average at end {load2[0]:.2f} / {load2[1]:.2f} / {load2[2]:.2f}")
        if args.json:
            from dense._atomic import write_json

            write_json(args.json, {"spec": SPEC, "device": args.device, "cpu": cpu_facts(), "torch": torch.__version__,
                                   "repeats": repeats, "rounds": args.rounds, "folder_images": n_folder,
                                   "default_dtype": auto, "compile_decision": d, "load_average": [load1[0], load2[0]],
                                   "rows": [{"label": k[0], **r} for k, r in results.items()], "ratios": ratios,
                                   "bf16_vs_fp32_cosine": {}}, indent=2)


def print_row(results: dict, label: str, r: dict, batch: int, workers, device: str) -> None:
    """Keep ``r`` under ``(label, dtype, batch)`` and print its line of the table."""
    results[(label, r["dtype"], batch)] = r
    name = label + (f", {r['num_workers']} workers" if "num_workers" in r and workers is None else "")
    pad = f"{100 * r['padding_waste']:.2f}" if "padding_waste" in r else ""
    build = f"{r['build_rss_gib']:.2f}" if "build_rss_gib" in r else ""
    first = f"{r['first_s']:.1f}" if "first_s" in r else ""
    line = (f"{name:<36}{r['dtype']:<10}{batch:>6}{r['tokens']:>7}{r['sec_per_img']:>8.3f}"
            f"{r['images_per_s']:>8.2f}{r['gflops']:>9.0f}{r['peak_gflops']:>9.0f}"
            f"{100 * r['gflops'] / r['peak_gflops']:>5.0f}%{r['peak_rss_gib']:>8.2f}{build:>10}{first:>9}"
            f"{pad:>7}")
    if device == "cuda":
        line += f"  {r['cuda_peak_gib']:.2f}"
    print(line, flush=True)


def median_row(rows: list[dict]) -> dict:
    """One row from several rounds: the round with the median seconds per image (its other figures with it), but the
    first round's first-image time (the only one that can include a cold compile)."""
    first = rows[0].get("first_s")
    row = dict(sorted(rows, key=lambda r: r["sec_per_img"])[(len(rows) - 1) // 2])
    if first is not None:
        row["first_s"] = first
    return row


def summary(results: dict, auto: str, batches: list[int], folder_batch: int, folder: bool) -> dict:
    """Print the ratios under the table; returns them by name (None where a row they need was not run)."""
    ratios: dict = {}

    def keep(name: str, value: float) -> float:
        ratios[name] = None if value != value else value  # NaN: a row was not run
        return value

    def ips(label, dtype, batch):
        r = results.get((label, dtype, batch))
        return r["images_per_s"] if r else float("nan")

    for label in ("dense (default)", "dense compiled"):
        for batch in batches:
            dense_ips = ips(label, auto, batch)
            slug = "default" if label == "dense (default)" else "compiled"
            f32 = keep(f"{slug}_b{batch}_vs_idiom_float32", dense_ips / ips("idiom", "float32", 1))
            b16 = keep(f"{slug}_b{batch}_vs_idiom_bfloat16", dense_ips / ips("idiom", "bfloat16", 1))
            print(f"{label} ({auto}) batch {batch} vs idiom float32: {f32:.2f}x; vs idiom bfloat16: {b16:.2f}x")
    for key in (("dense compiled", auto, 1), ("dense compiled, 2nd process", auto, 1)):
        r = results.get(key)
        if r:
            x = keep(("second_process" if "2nd" in key[0] else "first_process") + "_first_image_over_steady",
                     r["first_s"] / r["sec_per_img"])
            print(f"{key[0]}: first image {r['first_s']:.1f} s = {x:.1f}x its steady state ({r['sec_per_img']:.2f} s)")
    if folder:
        e2e = ips("folder: dense end to end", auto, folder_batch)
        model = ips("folder: dense model only", auto, folder_batch)
        idiom = next((r["images_per_s"] for k, r in results.items() if k[0] == "folder: idiom"), float("nan"))
        print(f"folder: dense end to end / model only = {keep('folder_e2e_over_model_only', e2e / model):.3f}; "
              f"dense end to end vs idiom: {keep('folder_e2e_vs_idiom', e2e / idiom):.2f}x")
    return ratios


if __name__ == "__main__":
    main()
