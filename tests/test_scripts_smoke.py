"""Every script in scripts/ and benchmark in benchmarks/ runs end to end in its quick mode, so that none can rot.

Nothing here asserts on time: these check that each command runs and that what it writes holds together.
``scripts/readme_figures.py --quick`` runs every group, and with them ``benchmarks/extract.py``, ``upsample.py``,
``segment_memory.py`` and ``probe_scale.py``; the other benchmarks and scripts run on their own below.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each starts Python, torch and transformers afresh: minutes on a loaded machine


def run(*argv: str, cwd: Path = ROOT) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}"
    return out.stdout


def test_readme_figures_quick_runs_every_group(tmp_path):
    run("scripts/readme_figures.py", "--quick", "--work", str(tmp_path))
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "scripts" / "readme_figures.py")
    rf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rf)
    data = json.loads((tmp_path / "figures.json").read_text())
    assert data["quick"] and set(data["groups"]) == set(rf.GROUPS)
    by_group = {g: [f for f in data["figures"].values() if f["group"] == g] for g in rf.GROUPS}
    assert all(by_group.values()), {g: len(v) for g, v in by_group.items()}
    for f in data["figures"].values():
        assert isinstance(f["value"], float) and f["command"] and f["dtype"], f["id"]
        if f["unit"] == "pct" and math.isfinite(f["value"]):
            assert 0.0 <= f["value"] <= 1.0, f["id"]
        if f["interval"] and math.isfinite(f["interval"][0]):
            assert f["interval"][0] <= f["value"] + 1e-9 and f["value"] <= f["interval"][1] + 1e-9, f["id"]
    assert data["figures"]["speed/ratio/folder_e2e_over_model_only"]["value"] > 0
    md = (tmp_path / "RESULTS.md").read_text()
    for fid, f in data["figures"].items():  # every figure rendered, with its own value
        assert f"| {rf.fmt(f['value'], f['unit'])} | {rf.fmt_interval(f['interval'], f['unit'])} | `{fid}` |" in md
    readme = (tmp_path / "README.md").read_text()
    assert "`zero_shot/shapes-tiny-v2`" in readme.split(rf.BEGIN)[1]
    committed = json.loads((ROOT / "results" / "figures.json").read_text())
    assert not committed["quick"], "a quick run wrote the committed figures"


def test_readme_figures_refuses_a_quick_run_without_a_work_folder():
    out = subprocess.run([sys.executable, "scripts/readme_figures.py", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode != 0 and "--quick needs --work" in out.stderr
    out = subprocess.run([sys.executable, "scripts/readme_figures.py", "--only", "nope", "--quick", "--work", "x"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode != 0 and "unknown group(s) nope" in out.stderr


def test_train_shapes_siglip_trains_saves_and_evaluates(tmp_path):
    out = tmp_path / "tiny"
    run("scripts/train_shapes_siglip.py", "--steps", "2", "--batch", "8", "--pool", "16", "--eval-images", "16",
        "--eval-pointing", "1", "--eval-budgets", "64", "--out", str(out))
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 2 and record["metrics"]["zero_shot_images"] == 16
    assert 0.0 <= record["metrics"]["zero_shot_acc"] <= 1.0
    for name in ("model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (out / name).exists(), name


def test_make_notebooks_writes_the_committed_notebooks(tmp_path):
    run("scripts/make_notebooks.py", "--out", str(tmp_path))
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        fresh = json.loads((tmp_path / nb.name).read_text())
        committed = json.loads(nb.read_text())
        assert [c["source"] for c in fresh["cells"]] == [c["source"] for c in committed["cells"]], (
            f"notebooks/{nb.name} differs from what scripts/make_notebooks.py writes")


def test_probe_train_benchmark_quick():
    out = run("benchmarks/probe_train.py", "--images", "4", "--val", "2", "--epochs", "1", "--heads", "1",
              "--classes", "3", "--json")
    row = json.loads(out.strip().splitlines()[-1])
    assert row["peak_rss_gib"] > 0


def test_probe_shapes_benchmark_quick(tmp_path):
    out = run("benchmarks/probe_shapes.py", "--images", "16", "--epochs", "1", "--max-patches", "64", "--out",
              str(tmp_path))
    assert "trained" in out and "random init" in out


def test_segment_150_benchmark_quick():
    out = run("benchmarks/segment_150.py", "--spec", "tiny-siglip", "--classes", "5", "--height", "64", "--width",
              "96", "--repeats", "1", "--text-sample", "2")
    assert "segment | image, cached text" in out and "labels (64, 96)" in out


def test_measure_found_threshold_chooses_then_reports_and_adds_rates_at_a_threshold(tmp_path):
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"found_threshold": 0.5, "method": "map-value-mlp"}))
    out = run("scripts/measure_found_threshold.py", "--model", "shapes-tiny-v2", "--images", "6", "--choose-seed",
              "1", "--report-seed", "2", "--calibration-out", str(cal))
    assert "per kind of absence" in out
    chosen = json.loads(cal.read_text())
    entry = chosen["measured"]["found_threshold"]["reported_on"]
    assert sum(entry["absent_by_kind"].values()) == entry["absent"]
    run("scripts/measure_found_threshold.py", "--model", "shapes-tiny-v2", "--images", "6", "--threshold", "0.3",
        "--report-seed", "2", "--calibration-out", str(cal))
    after = json.loads(cal.read_text())
    at = after["measured"]["found_threshold"].pop("at_threshold")
    assert after == chosen and at["threshold"] == 0.3  # nothing else in the file changed
    assert set(at["reported_on"]["absent_by_kind"]) <= {"colour", "shape", "colour+shape", "neither"}


def test_threads_benchmark_times_every_setting(tmp_path):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (48, 32), (200, 30, 30)).save(image)
    out = run("benchmarks/threads.py", "--rounds", "1", "--", "heatmap", str(image), "a red circle", "--model",
              "shapes-tiny-v2", "--out", str(tmp_path / "h.png"))
    rows = [line.split() for line in out.splitlines()]
    assert [r[0] for r in rows if r and r[0] in ("every", "--threads", "default")] == ["every", "--threads", "default"]
    assert (tmp_path / "h.png").exists() and "load before" in out and out.count("ratio ") == 2
