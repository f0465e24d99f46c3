"""Every figure that README.md and RESULTS.md show, measured by one command into ``results/figures.json``.

    python scripts/readme_figures.py                            # every group, then RESULTS.md and README's block
    python scripts/readme_figures.py --only openvocab,refer     # some groups; the other groups' figures are kept
    python scripts/readme_figures.py --md-only                  # only re-render the Markdown from the JSON
    python scripts/readme_figures.py --quick --work /tmp/figs   # tiny sizes, a smoke run: writes under --work only

Each figure is measured through what a user runs: ``scripts/train_shapes_siglip.py --eval-only``, ``dense eval
openvocab``, ``dense eval refer``, ``dense probe train`` and the benchmarks in ``benchmarks/``, each as a subprocess
whose JSON output is read back. The JSON keeps, per figure, its value, its 95% interval where it has one, the exact
command, the seeds and the split; per group, the CPU (model name and its bf16/AMX flags), torch and
transformers versions, the date, the load average and the seconds it took. ``--write-md`` (the default unless
``--no-md``) renders ``RESULTS.md`` and the block between ``<!-- figures:begin -->`` and ``<!-- figures:end -->`` in
README.md from the JSON; ``tests/test_figures.py`` checks that both agree with it.

Seeds: the synthetic worlds and held-out draws reported here use ``REPORT_SEEDS``, none of which chose anything.
``CHOOSING_SEEDS`` lists the seeds that did (training draws, calibration worlds, recipe checks); a run refuses to
report on any of them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JSON_PATH = ROOT / "results" / "figures.json"
RESULTS_MD = ROOT / "RESULTS.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"
MODELS = ("shapes-tiny", "shapes-tiny-v2")
FORMAT = 1

# Seeds that chose something: reporting on them would flatter the choice.
CHOOSING_SEEDS = {
    0: "training draws of both bundled models (train_shapes_siglip.py --seed; their training.json)",
    12345: "the held-out draw of train_shapes_siglip.py --eval-only read while choosing the recipe and its step count "
           "(training.json eval_seed)",
    9001: "the val world of shapes-tiny-v2's calibration (method, background, box threshold, token budget)",
    1414: "the val/test world of shapes-tiny's calibration (its dense_calibration.json 'measured')",
    7301: "benchmarks/upsample.py's former default world: its val split chose the guided-filter settings shown",
    9002: "the test world of earlier README figures, read while the v2 recipe was being changed",
    9004: "the probe world of earlier README figures, read while the v2 recipe was being changed",
}
REPORT_SEEDS = {"zero-shot": 31001, "world": 31002, "probe": 31003, "upsample": 31004}

# Sizes of each group: full, and --quick (a smoke run of every code path in seconds).
SIZES = {
    False: dict(single=320, pointing=120, budgets="64,144,256", world=320, ov_limit=100, refer_limit=60,
                probe_images=1500, probe_epochs=10, up_images=300, up_epochs=6, resamples=1000),
    True: dict(single=16, pointing=2, budgets="64", world=12, ov_limit=4, refer_limit=3, probe_images=20,
               probe_epochs=1, up_images=20, up_epochs=1, resamples=50),
}


# ---------------------------------------------------------------------------------------------------------------------
# The machine


def machine() -> dict:
    """CPU model name, its bf16/AMX flags (:func:`dense.device.cpu_model_and_flags`), core count, torch /
    transformers / Python versions."""
    import torch
    import transformers

    from dense.device import cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    return {"cpu": model, "cpu_flags": flags, "cores": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------------------------------
# Running one command


class Run:
    """Where a run writes, how big it is, and how it calls commands."""

    def __init__(self, work: Path, quick: bool):
        self.work, self.quick, self.size = work, quick, SIZES[quick]
        work.mkdir(parents=True, exist_ok=True)

    def call(self, argv: list[str]) -> str:
        """Run ``argv`` from the repository root (this checkout's ``dense`` first on the path); its stdout."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        print(f"$ {shown(argv)}", flush=True)
        out = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            tail = "\n".join(out.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"{shown(argv)} exited with {out.returncode}:\n{tail}")
        return out.stdout

    def dense(self, *args: str) -> str:
        return self.call(["-m", "dense.cli", *args])

    def world(self, name: str, seed: int, n: int, splits: dict) -> Path:
        """A synthetic world (``dense.datasets.make_shapes``), written once per work folder."""
        from dense.datasets import make_shapes

        if seed in CHOOSING_SEEDS:
            raise ValueError(f"seed {seed} chose something ({CHOOSING_SEEDS[seed]}): report on another")
        out = self.work / f"{name}-{seed}-{n}"
        if not (out / "annotations.json").exists():
            make_shapes(out, n, seed=seed, splits=splits)
        return out


def shown(argv: list[str]) -> str:
    """The command as a user types it: ``dense ...`` / ``python script.py ...``, paths relative to the repository."""
    words = ["dense", *argv[2:]] if argv[:2] == ["-m", "dense.cli"] else ["python", *argv]
    return shlex.join(str(Path(w).relative_to(ROOT)) if w.startswith(str(ROOT)) else w for w in words)


def figure(fid: str, label: str, value: float, unit: str, command: str, *, dtype: str, interval=None, seeds=None,
           split=None, n=None) -> dict:
    """One figure. ``unit``: ``pct`` (a fraction shown x 100), ``x`` (a ratio), ``s``, ``GiB`` or ``count``.
    ``dtype``: what the model ran in, as the command reported it (``float32``, ``bfloat16``; a ratio or cosine
    between two dtypes names both): the same command on another CPU resolves ``dtype="auto"`` by
    :func:`dense.device.resolve_dtype`, float32 for the bundled toys everywhere."""
    return {"id": fid, "label": label, "value": value, "unit": unit, "dtype": dtype,
            "interval": [float(v) for v in interval] if interval is not None else None, "command": command,
            "seeds": seeds or {}, "split": split, "n": n}


def fmt(value, unit: str) -> str:
    """How a figure of ``unit`` is written in the Markdown (the test parses exactly this)."""
    if value is None or value != value:  # NaN: not measured
        return "n/a"
    if unit == "pct":
        return f"{100 * value:.1f}"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "GiB":
        return f"{value:.3f} GiB"
    if unit == "count":
        return f"{int(value):,}"
    raise ValueError(f"unknown unit {unit!r}")


def fmt_interval(interval, unit: str) -> str:
    if not interval:
        return ""
    return f"[{fmt(interval[0], unit)}, {fmt(interval[1], unit)}]"


# ---------------------------------------------------------------------------------------------------------------------
# Groups: each returns (figures, notes)


def zero_shot(run: Run) -> list[dict]:
    s, seed, figs = run.size, REPORT_SEEDS["zero-shot"], []
    for m in MODELS:
        argv = ["scripts/train_shapes_siglip.py", "--eval-only", m, "--eval-seed", str(seed)]
        if run.quick:
            argv += ["--eval-images", str(s["single"]), "--eval-pointing", str(s["pointing"]),
                     "--eval-budgets", s["budgets"]]
        out = json.loads(run.call(argv))
        cmd, seeds = shown(argv), {"held-out draw": seed, "bootstrap": 0}
        tokens, dtype = out["zero_shot_tokens"], out["dtype"]
        figs.append(figure(f"zero_shot/{m}", f"{m}: zero-shot accuracy, 16 classes, 64-px images at their own "
                           f"{tokens}-token grid", out["zero_shot_acc"], "pct", cmd, dtype=dtype,
                           interval=out["zero_shot_acc_95"], seeds=seeds, n=out["zero_shot_images"]))
        for key in out:
            if key.startswith("zero_shot_acc@") and not key.endswith("_95"):
                budget = key.split("@")[1]
                figs.append(figure(f"zero_shot@{budget}/{m}", f"{m}: the same at the default {budget}-token budget "
                                   "(images upsampled)", out[key], "pct", cmd, dtype=dtype, interval=out[f"{key}_95"],
                                   seeds=seeds, n=out["zero_shot_images"]))
            elif key.startswith("pointing/") and not key.endswith("_95"):
                _, method, budget = key.split("/")
                figs.append(figure(f"pointing/{m}/{method}/{budget}", f"{m}: pointing, {method}, {budget} tokens, "
                                   "multi-object images", out[key], "pct", cmd, dtype=dtype, interval=out[f"{key}_95"],
                                   seeds=seeds, n=out["pointing_queries"]))
    return figs


def openvocab(run: Run) -> list[dict]:
    s, seed = run.size, REPORT_SEEDS["world"]
    world = run.world("world", seed, s["world"], {"test": 1.0})
    figs = []
    for m in MODELS:
        out_json = run.work / f"openvocab-{m}.json"
        args = ["eval", "openvocab", "--model", m, "--ann", str(world / "annotations.json"), "--images",
                str(world / "images"), "--split", "test", "--limit", str(s["ov_limit"]), "--resamples",
                str(s["resamples"]), "--quiet", "--json", str(out_json)]
        run.dense(*args)
        res = json.loads(out_json.read_text())
        meta, f, iv = res["meta"], res["figures"], res["intervals"]
        setting = meta["settings"][0]
        cmd = shown(["-m", "dense.cli", *args])
        seeds = {"world": seed, "bootstrap": meta["bootstrap"]["seed"]}
        what = f"{setting}, background {meta['background']}, {meta['max_patches']} tokens"
        for key, label in (("mIoU", "open-vocabulary mIoU"), ("pixel_acc", "its pixel accuracy"),
                           ("pointing", "its pointing")):
            figs.append(figure(f"openvocab/{m}/{key}", f"{m}: {label} ({what})", f[f"{setting}/{key}"], "pct", cmd,
                               dtype=meta["dtype"], interval=iv.get(f"{setting}/{key}"), seeds=seeds, split="test",
                               n=meta["images"]))
    return figs


def methods(run: Run) -> list[dict]:
    s, seed = run.size, REPORT_SEEDS["world"]
    world = run.world("world", seed, s["world"], {"test": 1.0})
    out_json = run.work / "heatmap_methods.json"
    argv = ["benchmarks/heatmap_methods.py", "--world", str(world), "--limit", str(s["ov_limit"]), "--resamples",
            str(s["resamples"]), "--json", str(out_json)]
    run.call(argv)
    res, cmd, figs = json.loads(out_json.read_text()), shown(argv), []
    for m, r in res["results"].items():
        meta = r["meta"]
        seeds = {"world": seed, "bootstrap": meta["bootstrap"]["seed"]}
        for method, f in r["methods"].items():
            for key, label in (("mIoU", "open-vocabulary mIoU"), ("pointing", "pointing")):
                figs.append(figure(f"methods/{m}/{method}/{key}", f"{m}: {method}, {label}", f[key], "pct", cmd,
                                   dtype=meta["dtype"], interval=f[f"{key}_95"], seeds=seeds, split="test",
                                   n=meta["images"]))
    return figs


def refer(run: Run) -> list[dict]:
    s, seed = run.size, REPORT_SEEDS["world"]
    world = run.world("world", seed, s["world"], {"test": 1.0})
    figs = []
    for m in MODELS:
        out_json = run.work / f"refer-{m}.json"
        args = ["eval", "refer", "--model", m, "--ann", str(world / "annotations.json"), "--refs",
                str(world / "refs.json"), "--images", str(world / "images"), "--split", "test", "--limit",
                str(s["refer_limit"]), "--resamples", str(s["resamples"]), "--quiet", "--json", str(out_json)]
        run.dense(*args)
        res = json.loads(out_json.read_text())
        meta, f, iv = res["meta"], res["figures"], res["intervals"]
        method = meta["methods"][0]
        cmd = shown(["-m", "dense.cli", *args])
        seeds = {"world": seed, "bootstrap": meta["bootstrap"]["seed"]}
        n = meta["expressions"]
        for key, way, label in (
                ("acc", f"none/{method}/-", f"referring Acc@0.5, no candidates ({method}, box threshold "
                                            f"{meta['box_threshold']})"),
                ("pointing", f"none/{method}/-", f"referring pointing, no candidates ({method})"),
                ("gt-map-box", f"gt-boxes/{method}/map-box", "referring Acc@0.5, ground-truth candidates, map-box"),
                ("gt-random", "gt-boxes/-/random", "referring Acc@0.5, ground-truth candidates, a random one")):
            name = "pointing" if key == "pointing" else "acc@0.5"
            figs.append(figure(f"refer/{m}/{key}", f"{m}: {label}", f[f"{way}/{name}"], "pct", cmd,
                               dtype=meta["dtype"], interval=iv.get(f"{way}/{name}"), seeds=seeds, split="test", n=n))
    return figs


def probe(run: Run) -> list[dict]:
    s, seed = run.size, REPORT_SEEDS["probe"]
    world = run.world("probe", seed, s["probe_images"], {"train": 0.6, "val": 0.2, "test": 0.2})
    figs = []
    for m in MODELS:
        out_json = run.work / f"probe-{m}.json"
        args = ["probe", "train", "--model", m, "--ann", str(world / "annotations.json"), "--images",
                str(world / "images"), "--cache", str(run.work / "probe-cache"), "--max-patches", "256",
                "--epochs", str(s["probe_epochs"]), "--test-split", "test", "--quiet", "--json", str(out_json)]
        run.dense(*args)
        res = json.loads(out_json.read_text())
        if "figures" in res:  # a dense.eval.Result: test figures, the sweep in meta
            test, splits, intervals = res["figures"], res["meta"].get("splits", {}), res.get("intervals", {})
        else:  # the older layout: {"test": {...}, "splits": {...}}
            test, splits, intervals = res["test"], res.get("splits", {}), {}
        cmd = shown(["-m", "dense.cli", *args])
        seeds = {"world": seed, "probe": 0}
        n = splits.get("test")
        dtype = res["meta"]["encoder"]["dtype"]  # the encoder spec the features were cached under
        figs.append(figure(f"probe/{m}/mIoU", f"{m}: linear-probe mIoU, 256 tokens (train/val/test "
                           f"{splits.get('train')}/{splits.get('val')}/{n} images)", test["mIoU"], "pct", cmd,
                           dtype=dtype, interval=intervals.get("mIoU"), seeds=seeds, split="test", n=n))
        if "bF" in test:
            figs.append(figure(f"probe/{m}/bF", f"{m}: its boundary F (2 px)", test["bF"], "pct", cmd, dtype=dtype,
                               seeds=seeds, split="test", n=n))
    return figs


def upsample(run: Run) -> list[dict]:
    s, seed = run.size, REPORT_SEEDS["upsample"]
    out_json = run.work / "upsample.json"
    argv = ["benchmarks/upsample.py", "--seed", str(seed), "--images", str(s["up_images"]), "--upsampler-epochs",
            str(s["up_epochs"]), "--out", str(run.work / "upsample"), "--so400m", "--json", str(out_json)]
    if run.quick:
        argv += ["--guided-grid", "1", "--spec", "tiny-siglip"]
    run.call(argv)
    res = json.loads(out_json.read_text())
    cmd, seeds = shown(argv), {"world": seed}
    n = res["images"]["test"]
    figs = []
    for key, r in res["methods"].items():
        for name, label in (("mIoU", "test mIoU"), ("bF", "boundary F (2 px)"), ("trimap_mIoU", "trimap mIoU")):
            figs.append(figure(f"upsample/{key}/{name}", f"shapes-tiny probe, {r['name']}: {label}", r[name], "pct",
                               cmd, dtype=res["dtype"], seeds=seeds, split="test", n=n))
    so = res.get("so400m", {})
    for name, ratio in so.get("x_extract", {}).items():
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        figs.append(figure(f"upsample/cost/{slug}", f"{so['spec']} ({so['dtype']}), 640x480: extraction + {name}, "
                           "relative to one extraction", ratio, "x", cmd, dtype=so["dtype"]))
    return figs


def speed(run: Run) -> list[dict]:
    out_json = run.work / "extract.json"
    argv = ["benchmarks/extract.py", "--json", str(out_json)]
    # the non-default dtype and batch 8 are left out: on a 2-core CPU without bf16 units they cost more than the rest
    argv += (["--quick", "--spec", "tiny-siglip", "--folder-images", "4", "--batches", "1", "--no-other-dtype"]
             if run.quick else
             ["--rounds", "3", "--repeats", "1", "--batches", "1", "--folder-images", "24", "--no-other-dtype"])
    run.call(argv)
    res = json.loads(out_json.read_text())
    cmd, figs = shown(argv), []
    for r in res["rows"]:
        slug = re.sub(r"[^a-z0-9]+", "-", r["label"].lower()).strip("-")
        figs.append(figure(f"speed/{slug}/{r['dtype']}/b{r['batch']}", f"{res['spec']}: {r['label']}, {r['dtype']}, "
                           f"batch {r['batch']}, {r['tokens']} tokens: seconds per image", r["sec_per_img"], "s", cmd,
                           dtype=r["dtype"], n=res["folder_images"] if r["label"].startswith("folder") else None))
    labels = {"first_process_first_image_over_steady": "compiled tower, the run's first process: first image / a "
              "steady-state image (s; code generation included only if inductor's cache was empty)",
              "second_process_first_image_over_steady": "compiled tower, a second process (inductor's disk cache "
              "warm): first image / a steady-state image (s)",
              "folder_e2e_over_model_only": "folder: end to end from disk / model only, one process (img/s)",
              "folder_e2e_over_model_only_cpu_time": "folder: end to end from disk / model only, one process, in "
              "that process's CPU time (images per CPU second)",
              "folder_e2e_vs_idiom": "folder: dense end to end vs the idiom (img/s)"}
    for key, ratio in res["ratios"].items():
        if ratio is None or ratio != ratio:  # a row it needs was not run (--batches, --no-other-dtype)
            continue
        way = re.fullmatch(r"(default|compiled)_b(\d+)_vs_idiom_(\w+)", key)
        label = (f"dense {'default' if way[1] == 'default' else 'compiled tower'} batch {way[2]} vs the transformers "
                 f"idiom in {way[3]} (img/s)" if way else labels[key])
        figs.append(figure(f"speed/ratio/{key}", f"{res['spec']}: {label}", ratio, "x", cmd,
                           dtype=res["default_dtype"]))
    for way, c in res["bf16_vs_fp32_cosine"].items():
        figs.append(figure(f"speed/cosine/{way}", f"{res['spec']}, {way}: bf16 vs fp32 tokens, mean per-token cosine "
                           "(x 100)", c["mean"], "pct", cmd, dtype="bfloat16 vs float32"))
    return figs


# benchmarks/probe_scale.py: no model; synthetic features stored and trained on as bfloat16 (feature_dtype)
PROBE_SCALE_DTYPE = "bfloat16 features"


def scale(run: Run) -> list[dict]:
    figs = []
    seg_json = run.work / "segment_memory.json"
    argv = ["benchmarks/segment_memory.py", "--unchunked", "--json", str(seg_json)]
    if run.quick:
        argv += ["--spec", "tiny-siglip", "--classes", "5", "--height", "96", "--width", "128"]
    run.call(argv)
    res, cmd = json.loads(seg_json.read_text()), shown(argv)
    what = f"{res['spec']}, {res['classes']} names, {res['photo_hw'][1]}x{res['photo_hw'][0]} photo"
    figs.append(figure("scale/segment/chunked_peak", f"segment() peak extra RSS, {what}, chunked argmax",
                       res["chunked"]["peak_extra_gib"], "GiB", cmd, dtype=res["dtype"]))
    if "unchunked" in res:
        figs.append(figure("scale/segment/unchunked_peak", "the same, every class upsampled before the argmax",
                           res["unchunked"]["peak_extra_gib"], "GiB", cmd, dtype=res["dtype"]))
    ps_json = run.work / "probe_scale.json"
    sizes = ["6", "3", "3"] if run.quick else ["1000", "250", "21"]
    argv = ["benchmarks/probe_scale.py", "--entries", sizes[0], "--ram", sizes[1], "--classes", sizes[2], "--dir",
            str(run.work / "probe-scale"), "--remove", "--json", str(ps_json)]
    if run.quick:
        argv += ["--val", "2", "--heads", "1", "--epochs", "1"]
    run.call(argv)
    res, cmd = json.loads(ps_json.read_text()), shown(argv)
    for r in res["rows"]:
        kind = "streamed" if r["mode"] == "stream" else "in RAM"
        figs.append(figure(f"scale/probe/{r['mode']}-{r['n']}/peak_rss", f"probe training, {r['n']} So400m-shaped "
                           f"entries {kind} ({res['heads']} lrs, {res['epochs']} epochs): peak RSS",
                           r["peak_rss_gib"], "GiB", cmd, dtype=PROBE_SCALE_DTYPE))
    for key, ratio in res["ratios"].items():
        label = {"stream_over_ram_tokens_per_s": f"tokens/s streamed / in RAM ({res['ram']} entries each)",
                 "streamN_over_ram_tokens_per_s": f"tokens/s streamed {res['entries']} / in RAM {res['ram']}"}[key]
        figs.append(figure(f"scale/probe/{key}", f"probe training: {label}", ratio, "x", cmd, dtype=PROBE_SCALE_DTYPE))
    return figs


GROUPS = {"zero-shot": zero_shot, "openvocab": openvocab, "methods": methods, "refer": refer, "probe": probe,
          "upsample": upsample, "speed": speed, "scale": scale}
TITLES = {
    "zero-shot": "Zero-shot classification and pointing (the bundled models)",
    "openvocab": "Open-vocabulary segmentation (the bundled models, their calibrated settings)",
    "methods": "Heatmap methods (the bundled models, every method of dense.heatmap)",
    "refer": "Referring expressions (the bundled models, their calibrated settings)",
    "probe": "Linear probe (the bundled models)",
    "upsample": "Sharper than the patch grid",
    "speed": "Extraction speed",
    "scale": "Memory at scale",
}
ABOUT = {
    "zero-shot": "Single-object 64-px images of the synthetic world (classes balanced) classified over the 16 category "
                 "names; pointing: multi-object images of 96..320 px, a hit when the query's best patch centre lies on "
                 "the object. Intervals: bootstrap over images / queries.",
    "openvocab": "The first images of a fresh test world, `make_shapes(dir, 320, seed, splits={'test': 1.0})`, each "
                 "model at its `dense_calibration.json` (method, background threshold, templates, token budget).",
    "methods": "The same test world, each model at its calibration except the method: every method of "
               "`dense.heatmap.METHODS` and `EXPERIMENTAL_METHODS`, scored in one pass over the images by the "
               "open-vocabulary evaluator (`dense.eval.openvocab.evaluate_openvocab`; pointing: the peak patch "
               "centre of each present category on one of its masks). The default registry keeps the method with the "
               "best figure of each column (map-value-mlp: both mIoUs and shapes-tiny-v2's pointing; clear-map-value: "
               "shapes-tiny's pointing), the methods a paper's protocol needs (map-value: MaskCLIP, Zhou et al. 2022; "
               "clear-map-value and clear-map-value-mlp: ClearCLIP, Lan et al. 2024, with SCLIP's correlative "
               "attention, Wang et al. 2024; clear-map-value-mlp is also shapes-tiny's calibrated method) and the raw "
               "tokens as the baseline; attn-value, leave-one-out and every +filter method won no column and are in "
               "`dense.heatmap.EXPERIMENTAL_METHODS` (they run when named).",
    "refer": "The first images of the same test world; expressions from its `refs.json`.",
    "probe": "A fresh world, `make_shapes(dir, 1500, seed, splits={'train': 0.6, 'val': 0.2, 'test': 0.2})`: learning "
             "rates swept in one pass on train, the head chosen on val, test reported once.",
    "upsample": "A fresh world of `benchmarks/upsample.py`, `shapes-tiny` at 256 tokens, one probe chosen on val; "
                "guided-filter settings chosen on val, test reported once. Cost: So400m (random weights), added time "
                "relative to one extraction.",
    "speed": "So400m/14 with random weights (speed does not depend on weight values), a 480x640 photo and a folder "
             "of JPEGs of a COCO-like aspect mix; each row in its own process, the synthetic rows three times in "
             "alternating order (each row's median); the folder's model-only and end-to-end rows in one process. "
             "Ratios compare rows of the same run; processes of one run differ by up to ~10% with the same layers, "
             "so a ratio within 0.9-1.1 is a tie. On a CPU without bf16 units dense runs float32, and compiling is "
             "on only where `dense compile-check` found it pays on that machine (`python benchmarks/extract.py "
             "--decide` runs it where there is no record).",
    "scale": "Peak memory of `dense.segment` with many names on a large photo, and of probe training streamed from "
             "a bf16 feature cache vs held in RAM (synthetic So400m-shaped features).",
}
HEADLINE = ["zero_shot/shapes-tiny", "zero_shot/shapes-tiny-v2", "openvocab/shapes-tiny-v2/mIoU",
            "refer/shapes-tiny-v2/acc", "probe/shapes-tiny-v2/mIoU"]


# ---------------------------------------------------------------------------------------------------------------------
# Markdown


def row(f: dict) -> str:
    return f"| {f['label']} | {fmt(f['value'], f['unit'])} | {fmt_interval(f['interval'], f['unit'])} | `{f['id']}` |"


TABLE_HEAD = "| figure | value | 95% interval | id |\n| --- | --- | --- | --- |"


def machine_line(m: dict) -> str:
    flags = ", ".join(m["cpu_flags"]) or "none of avx2/avx512/amx"
    return (f"CPU {m['cpu']} ({flags}; {m['cores']} cores), torch {m['torch']}, transformers {m['transformers']}, "
            f"Python {m['python']}")


def render_results(data: dict) -> str:
    """RESULTS.md from the figures JSON."""
    lines = ["# Results", "",
             "Generated by `python scripts/readme_figures.py` from `results/figures.json`; do not edit by hand "
             "(`tests/test_figures.py` checks that this page agrees with the JSON). Percentages are shown x 100; "
             "intervals are bootstrap 95% intervals.", "",
             "Seeds reported here chose nothing: " + ", ".join(f"{k} {v}" for k, v in data["seeds"]["report"].items())
             + ". Seeds that chose something and are never reported on: "
             + "; ".join(f"{k} ({v})" for k, v in data["seeds"]["choosing"].items()) + "."]
    by_group: dict[str, list[dict]] = {}
    for f in data["figures"].values():
        by_group.setdefault(f["group"], []).append(f)
    for g in GROUPS:
        if g not in by_group:
            if g in data["groups"]:  # measured but nothing kept: say why instead of dropping the section
                lines += ["", f"## {TITLES[g]}", "", ABOUT[g]]
            continue
        info = data["groups"][g]
        commands = list(dict.fromkeys(f["command"] for f in by_group[g]))
        dtypes = ", ".join(dict.fromkeys(f.get("dtype") or "not recorded" for f in by_group[g]))
        lines += ["", f"## {TITLES[g]}", "", ABOUT[g], "",
                  f"Measured {info['date']} in {info['seconds']:.0f} s; {machine_line(info['machine'])}; load "
                  f"average {info['load_average'][0]:.1f} at the start; the model in {dtypes}. Commands:", ""]
        lines += [f"- `{c}`" for c in commands]
        lines += ["", TABLE_HEAD] + [row(f) for f in by_group[g]]
    return "\n".join(lines) + "\n"


def render_readme_block(data: dict) -> str:
    figs = [data["figures"][k] for k in HEADLINE if k in data["figures"]]
    return "\n".join([BEGIN, TABLE_HEAD, *[row(f) for f in figs], END])


def write_markdown(data: dict, results_md: Path, readme: Path) -> None:
    from dense._atomic import write_text

    write_text(results_md, render_results(data))
    text = readme.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + render_readme_block(data) + rest.split(END, 1)[1]
        write_text(readme, text)
    print(f"wrote {results_md} and the figures block of {readme}")


# ---------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help=f"comma-separated groups: {', '.join(GROUPS)}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run); writes under --work only")
    ap.add_argument("--work", default=None, help="scratch folder (worlds, caches, raw JSON); default a temp dir "
                                                 "under results/ (kept for reruns)")
    ap.add_argument("--json", default=None, help="the figures JSON (default results/figures.json; quick: "
                                                 "WORK/figures.json)")
    ap.add_argument("--md-only", action="store_true", help="only render RESULTS.md and README's block from --json")
    ap.add_argument("--no-md", action="store_true", help="measure only; leave the Markdown alone")
    args = ap.parse_args(argv)
    overlap = set(REPORT_SEEDS.values()) & set(CHOOSING_SEEDS)
    if overlap:
        raise SystemExit(f"report seeds {sorted(overlap)} also chose something")
    groups = list(GROUPS) if args.only is None else [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SystemExit(f"--only: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if args.quick and args.work is None:
        raise SystemExit("--quick needs --work DIR (a smoke run never writes the committed figures)")
    work = Path(args.work or ROOT / "results" / "work")
    json_path = Path(args.json) if args.json else (work / "figures.json" if args.quick else JSON_PATH)
    results_md, readme = (work / "RESULTS.md", work / "README.md") if args.quick else (RESULTS_MD, README)
    if args.md_only:
        write_markdown(json.loads(json_path.read_text()), results_md, readme)
        return 0

    from dense._atomic import write_json

    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    if data.get("quick", args.quick) != args.quick:
        raise SystemExit(f"{json_path} holds {'quick' if data['quick'] else 'full'} figures: not mixing them")
    data.update(format=FORMAT, quick=args.quick,
                seeds={"report": REPORT_SEEDS, "choosing": {str(k): v for k, v in CHOOSING_SEEDS.items()}})
    data.setdefault("groups", {})
    data.setdefault("figures", {})
    run, mach, t_all = Run(work, args.quick), machine(), time.perf_counter()
    for g in groups:
        t0, load, date = time.perf_counter(), os.getloadavg(), dt.datetime.now().astimezone().isoformat("T", "seconds")
        figs = GROUPS[g](run)
        data["figures"] = {k: v for k, v in data["figures"].items() if v["group"] != g}
        for f in figs:
            data["figures"][f["id"]] = {**f, "group": g}
        data["groups"][g] = {"date": date, "seconds": round(time.perf_counter() - t0, 1), "machine": mach,
                             "load_average": [round(x, 2) for x in load], "quick": args.quick}
        write_json(json_path, data, indent=1)  # after every group: a later failure keeps what was measured
        print(f"{g}: {len(figs)} figures in {time.perf_counter() - t0:.0f} s -> {json_path}", flush=True)
    print(f"all groups in {time.perf_counter() - t_all:.0f} s")
    if not args.no_md:
        if args.quick and not readme.exists():
            from dense._atomic import write_text

            write_text(readme, README.read_text())
        write_markdown(data, results_md, readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
