"""RESULTS.md and README.md's figures agree with ``results/figures.json``, the output of ``scripts/readme_figures.py``;
the figures were measured on seeds that chose nothing."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (?P<label>.*) \| (?P<value>[^|]*) \| (?P<interval>[^|]*) \| `(?P<id>[^`]+)` \|$")


def load_script():
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "scripts" / "readme_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rf():
    return load_script()


@pytest.fixture(scope="module")
def data():
    return json.loads((ROOT / "results" / "figures.json").read_text())


def disagreements(markdown: str, data: dict, rf, *, complete: bool) -> list[str]:
    """Each figure row of ``markdown`` (``| label | value | interval | `id` |``) whose value or interval differs from
    the JSON's, by figure id; with ``complete``, also every JSON figure without a row."""
    problems, seen = [], set()
    for line in markdown.splitlines():
        m = ROW.match(line.strip())
        if not m:
            continue
        fid = m["id"]
        seen.add(fid)
        f = data["figures"].get(fid)
        if f is None:
            problems.append(f"{fid}: shown but not in results/figures.json")
            continue
        want_value, want_iv = rf.fmt(f["value"], f["unit"]), rf.fmt_interval(f["interval"], f["unit"])
        if m["value"].strip() != want_value:
            problems.append(f"{fid}: shows {m['value'].strip()!r}, the JSON says {want_value!r}")
        if m["interval"].strip() != want_iv:
            problems.append(f"{fid}: interval {m['interval'].strip()!r}, the JSON says {want_iv!r}")
    if complete:
        problems += [f"{fid}: in the JSON but not shown" for fid in data["figures"] if fid not in seen]
    return problems


def test_fmt_known_answers(rf):
    assert rf.fmt(0.99375, "pct") == "99.4"
    assert rf.fmt(3.4166, "x") == "3.42x"
    assert rf.fmt(0.6271, "s") == "0.627 s"
    assert rf.fmt(0.0031, "GiB") == "0.003 GiB"
    assert rf.fmt(float("nan"), "pct") == "n/a"
    assert rf.fmt_interval([0.531, 0.6312], "pct") == "[53.1, 63.1]"
    assert rf.fmt_interval(None, "pct") == ""


def test_results_md_agrees_with_the_json(rf, data):
    problems = disagreements((ROOT / "RESULTS.md").read_text(), data, rf, complete=True)
    assert not problems, "RESULTS.md disagrees with results/figures.json:\n" + "\n".join(problems)


def test_readme_figures_agree_with_the_json(rf, data):
    text = (ROOT / "README.md").read_text()
    assert rf.BEGIN in text and rf.END in text, "README.md lost its figures block"
    block = text.split(rf.BEGIN, 1)[1].split(rf.END, 1)[0]
    rows = [line for line in block.splitlines() if ROW.match(line.strip())]
    assert len(rows) >= 4, "README.md's figures block quotes no figure"
    assert "(RESULTS.md)" in text
    problems = disagreements(block, data, rf, complete=False)
    assert not problems, "README.md disagrees with results/figures.json:\n" + "\n".join(problems)


def test_the_committed_markdown_is_the_rendering_of_the_json(rf, data):
    assert (ROOT / "RESULTS.md").read_text() == rf.render_results(data), (
        "RESULTS.md was edited by hand or not regenerated: python scripts/readme_figures.py --md-only")
    block = (ROOT / "README.md").read_text().split(rf.BEGIN, 1)[1].split(rf.END, 1)[0]
    assert rf.BEGIN + block + rf.END == rf.render_readme_block(data)


def test_a_changed_figure_is_named(rf, data):
    fid = next(iter(data["figures"]))
    changed = copy.deepcopy(data)
    changed["figures"][fid]["value"] = changed["figures"][fid]["value"] * 0.5 + 0.123
    problems = disagreements((ROOT / "RESULTS.md").read_text(), changed, rf, complete=True)
    assert problems and all(p.startswith(f"{fid}:") for p in problems), problems
    dropped = copy.deepcopy(data)
    extra = dict(data["figures"][fid], id="made/up")
    dropped["figures"]["made/up"] = extra
    assert disagreements((ROOT / "RESULTS.md").read_text(), dropped, rf, complete=True) == [
        "made/up: in the JSON but not shown"]


def test_every_group_says_where_and_when(data, rf):
    assert not data["quick"], "results/figures.json holds a --quick smoke run"
    assert set(data["groups"]) == set(rf.GROUPS), "a group was never measured"
    for g, info in data["groups"].items():
        m = info["machine"]
        assert m["cpu"] and m["torch"] and m["transformers"] and info["date"], g
    for fid, f in data["figures"].items():
        assert f["command"] and f["group"] in rf.GROUPS and f["unit"], fid


def test_report_seeds_chose_nothing(rf, data):
    assert not set(rf.REPORT_SEEDS.values()) & set(rf.CHOOSING_SEEDS)
    for name in ("shapes-tiny", "shapes-tiny-v2"):  # what trained and checked the bundled models chose them
        training = json.loads((ROOT / "dense" / "checkpoints" / name / "training.json").read_text())
        assert training["seed"] in rf.CHOOSING_SEEDS
        assert training["metrics"]["eval_seed"] in rf.CHOOSING_SEEDS
    for fid, f in data["figures"].items():
        for kind in ("world", "held-out draw"):
            if kind in f["seeds"]:
                assert f["seeds"][kind] not in rf.CHOOSING_SEEDS, f"{fid} is reported on a choosing seed"
                assert f["seeds"][kind] in rf.REPORT_SEEDS.values(), fid


def test_every_figure_records_its_dtype(data):
    """A figure says which dtype its model ran in; the bundled toys' figures are float32, as ``dtype="auto"`` gives on
    every CPU (towers under :data:`dense.device.SMALL_TOWER_PARAMS`)."""
    for fid, f in data["figures"].items():
        assert f.get("dtype"), f"{fid} does not record its dtype"
        if f["group"] in ("zero-shot", "openvocab", "refer", "probe") or f["id"].startswith("upsample/") and \
                "/cost/" not in f["id"]:
            assert f["dtype"] == "float32", fid


def test_auto_is_float32_for_the_bundled_toys_and_bf16_for_so400m_where_native():
    import torch

    from dense.device import SMALL_TOWER_PARAMS, native_bf16, resolve_dtype
    from dense.encoder import load_encoder, random_encoder

    cpu = torch.device("cpu")
    for name in ("shapes-tiny", "shapes-tiny-v2"):
        enc = load_encoder(name, compile=False)
        assert sum(p.numel() for p in enc.vision.parameters()) < SMALL_TOWER_PARAMS
        assert enc.dtype == torch.float32, name
    assert random_encoder("tiny-siglip", compile=False).dtype == torch.float32
    big = torch.bfloat16 if native_bf16(cpu) else torch.float32
    assert resolve_dtype("auto", cpu, params=400_000_000) == big == resolve_dtype("auto", cpu)
    assert resolve_dtype("auto", cpu, params=SMALL_TOWER_PARAMS - 1) == torch.float32
    assert resolve_dtype("bf16", cpu, params=1) == torch.bfloat16  # a named dtype is obeyed whatever the size


@pytest.mark.slow
def test_the_readme_refer_figure_is_the_fp32_one_and_auto_reproduces_it(rf, data, tmp_path):
    """The README's shapes-tiny-v2 referring Acc@0.5 (its figures command, its report world) in both dtypes on this
    CPU: float32 and ``auto`` give the committed value exactly; bfloat16 (what ``auto`` gave on AMX / AVX512-BF16
    CPUs before small towers were pinned to float32) gives another one where the CPU runs it natively."""
    import torch

    from dense.device import native_bf16
    from dense.encoder import load_encoder
    from dense.eval.data import open_data
    from dense.eval.refer import evaluate_refer
    from dense.eval.settings import Bootstrap

    f = data["figures"]["refer/shapes-tiny-v2/acc"]
    assert f["dtype"] == "float32" and "--limit 60" in f["command"] and "--dtype" not in f["command"]
    # make_shapes draws image by image: the first 80 images of the 320-image report world, byte for byte
    world = rf.Run(tmp_path, quick=False).world("world", rf.REPORT_SEEDS["world"], 80, {"test": 1.0})
    acc = {}
    for dtype in ("fp32", "bf16", "auto"):
        enc = load_encoder("shapes-tiny-v2", dtype=dtype, compile=False)
        data = open_data(ann=world / "annotations.json", images=world / "images", refs=world / "refs.json")
        res = evaluate_refer(enc, data, split="test", limit=rf.SIZES[False]["refer_limit"],
                             bootstrap=Bootstrap(resamples=10))
        acc[dtype] = res.figures[f"none/{res.meta['methods'][0]}/-/acc@0.5"]
    assert acc["fp32"] == f["value"] == acc["auto"], acc
    if native_bf16(torch.device("cpu")):
        assert acc["bf16"] != f["value"], acc  # bf16 moves the figure where the CPU runs it natively
