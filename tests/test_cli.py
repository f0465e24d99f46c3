"""The command line's one vocabulary, the protocol functions it calls, and bad inputs refused before any work.

Each bad input gets ONE line naming it: usage errors caught while parsing exit 2 (argparse's convention), bad data
found by the library exits 1."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import random_rgb
from PIL import Image

from dense.cli import build_parser, main
from dense.cli._args import OPTIONS, flags_by_command, option_table

README = Path(__file__).resolve().parents[1] / "README.md"


# ---------------------------------------------------------------------------------------------------------------------
# One vocabulary


def test_every_option_has_its_one_meaning_and_the_readme_lists_it():
    parser = build_parser()
    by_command = flags_by_command(parser)
    seen = set()
    for cmd, flags in by_command.items():
        for flag, help_text in flags.items():
            assert help_text and help_text.strip(), f"{cmd} {flag} has no help"
            assert flag in OPTIONS, f"{cmd} {flag}: not in the vocabulary (dense.cli._args.OPTIONS)"
            assert help_text == OPTIONS[flag] or help_text.startswith(OPTIONS[flag] + "; "), \
                f"{cmd} {flag}: help {help_text!r} does not start with its one meaning {OPTIONS[flag]!r}"
            seen.add(flag)
    assert seen == set(OPTIONS), f"meanings of flags no command has: {set(OPTIONS) - seen}"
    for cmd, p in _parsers(parser):
        text = p.format_help()
        assert "(default: )" not in text and "(default: None)" not in text, cmd
    table = option_table(parser)
    assert table in README.read_text(), "README's option table is stale: paste dense.cli._args.option_table()"
    listed = set(re.findall(r"^\| `(--[a-z0-9-]+)` \|", README.read_text(), flags=re.M))
    assert listed >= seen


def _parsers(parser):
    from dense.cli._args import walk

    return list(walk(parser))


def test_same_concept_same_flag():
    by_command = flags_by_command(build_parser())
    # results JSON is --json everywhere a command writes results; --out is never a results JSON
    for cmd in ("eval openvocab", "eval refer", "eval probe", "probe train", "probe test", "probe refer",
                "heatmap", "segment", "localize", "upsampler train"):
        assert "--json" in by_command[cmd], cmd
    assert not any("--save" in f or "--batch-size-extract" in f or "--thresholds" in f for f in by_command.values())
    # extraction batch vs training batch: two names
    for cmd in ("probe train", "eval probe"):
        assert {"--batch-size", "--train-batch-size"} <= set(by_command[cmd])
    # dtypes accept both spellings everywhere
    parser = build_parser()
    for argv in (["probe", "train", "--model", "m", "--cache", "c", "--store-dtype", "bf16", "--dtype", "bfloat16"],
                 ["probe", "train", "--model", "m", "--cache", "c", "--feature-dtype", "fp32", "--dtype", "fp32"]):
        parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# Single-image commands: figure at exactly --out, a table, --json


def test_heatmap_segment_localize_write_exactly_out_and_json(tiny_siglip_dir, tmp_path, capsys, one_thread):
    Image.fromarray(random_rgb(40, 60, seed=9)).save(tmp_path / "im.png")
    model = ["--model", str(tiny_siglip_dir)]
    assert main(["heatmap", str(tmp_path / "im.png"), "red circle", "blue star", *model, "--out",
                 str(tmp_path / "h"), "--json", str(tmp_path / "h.json")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "h").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "h.png").exists()
    assert f"wrote {tmp_path / 'h'}\n" in out and "2 queries" in out and "peak %" in out
    heat = json.loads((tmp_path / "h.json").read_text())
    assert [q["query"] for q in heat["queries"]] == ["red circle", "blue star"]
    assert all(0 <= q["peak"] <= 1 and q["mean"] <= q["peak"] for q in heat["queries"])

    assert main(["segment", str(tmp_path / "im.png"), "red circle", *model, "--background", "0", "--out",
                 str(tmp_path / "s.png"), "--json", str(tmp_path / "s.json")]) == 0
    assert "1 class " in capsys.readouterr().out
    seg = json.loads((tmp_path / "s.json").read_text())
    areas = {c["class"]: c["area"] for c in seg["classes"]}
    assert areas == {"(background)": 0.0, "red circle": 1.0}  # background 0: every pixel gets the only class

    assert main(["localize", str(tmp_path / "im.png"), "the red circle", "a blue star", *model, "--out",
                 str(tmp_path / "loc.png"), "--json", str(tmp_path / "loc.json")]) == 0
    assert "2 expressions" in capsys.readouterr().out
    loc = json.loads((tmp_path / "loc.json").read_text())
    import dense

    enc = dense.load_encoder(tiny_siglip_dir)
    want = dense.Localizer(enc, tmp_path / "im.png").localize("the red circle")
    got = loc["expressions"][0]
    assert got["found"] is True and got["box_xyxy"] == pytest.approx(want.box_xyxy.tolist(), abs=0.01)
    assert got["score"] == pytest.approx(want.score)
    assert (tmp_path / "loc.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs: one line, before any work


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["heatmap", "IMG", "red circle", "--max-patches", "0"], "--max-patches: must be at least 1, got 0"),
    (["heatmap", "IMG", "", "--max-patches", "4"], "a query is empty"),
    (["localize", "IMG", "  "], "a query is empty"),
    (["segment", "IMG", "red circle", "--background", "1.5"], "--background: a threshold must be in [0, 1], got 1.5"),
    (["segment", "IMG", "red circle", "--background", "-1"], "--background: a threshold must be in [0, 1], got -1"),
    (["localize", "IMG", "x", "--box-threshold", "2"], "--box-threshold: must be in [0, 1], got 2"),
    (["demo", "--n-images", "0"], "--n-images: must be at least 7, got 0"),
    (["eval", "probe", "--model", "m", "--dataset", "voc", "--root", "ROOT", "--holdout", "1"],
     "--holdout: must be strictly between 0 and 1"),
    (["probe", "train", "--model", "m", "--cache", "c", "--lrs", "fast"], "--lrs: expected comma-separated numbers"),
])
def test_bad_flag_values_are_one_line_usage_errors(argv, message, tmp_path, capsys):
    Image.fromarray(random_rgb(20, 30)).save(tmp_path / "im.png")
    argv = [str(tmp_path / "im.png") if a == "IMG" else str(tmp_path) if a == "ROOT" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--model", "shapes-tiny"] if argv[0] in ("heatmap", "segment", "localize") else argv)
    assert e.value.code == 2
    line = _one_line(capsys)
    assert line.startswith("dense ") and message in line, line


def test_classify_and_segment_refuse_no_queries_alike(tiny_encoder):
    import dense

    rgb = random_rgb(24, 32)
    for fn, what in ((dense.classify, "class_names"), (dense.segment, "class_names")):
        with pytest.raises(ValueError, match=rf"^{what} is empty: give at least one text query$"):
            fn(tiny_encoder, rgb, [])
        with pytest.raises(ValueError, match=rf"^{what}\[1\] is an empty query"):
            fn(tiny_encoder, rgb, ["red circle", " "])
    with pytest.raises(ValueError, match=r"background threshold must be in \[0, 1\], got 1.5"):
        dense.segment(tiny_encoder, rgb, ["red circle"], background=1.5)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from dense.datasets import make_shapes

    root = tmp_path_factory.mktemp("world")
    make_shapes(root, 10, seed=3, size_range=(48, 80))
    return root


def test_missing_split_fails_at_once_listing_the_splits(world, tiny_siglip_dir, tmp_path, capsys):
    common = ["--model", str(tiny_siglip_dir), "--ann", str(world / "annotations.json"), "--images",
              str(world / "images"), "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main(["probe", "train", *common, "--test-split", "nosuch"]) == 1
    line = _one_line(capsys)
    assert "no images in split 'nosuch'; splits present: test, train, val" in line, line
    assert not (tmp_path / "cache").exists()  # nothing extracted
    assert main(["probe", "train", *common, "--val-split", "valid", "--holdout-seed", "1"]) == 1
    assert "split 'valid'; splits present: test, train, val" in _one_line(capsys)
    no_images = [a for a in common if a not in ("--images", str(world / "images"))]
    assert main(["probe", "train", *no_images]) == 1
    assert "give images= (--images)" in _one_line(capsys)
    assert main(["probe", "test", *common, "--probe", str(world / "annotations.json"), "--split", "x"]) == 1
    assert "annotations.json" in _one_line(capsys)  # not a probe file: named, before any extraction
    assert main(["eval", "openvocab", "--ann", str(world / "annotations.json"), "--images", str(world / "images"),
                 "--model", str(tiny_siglip_dir), "--split", "vall"]) == 1
    assert "no images in split 'vall'; splits present: test, train, val" in _one_line(capsys)
    assert main(["eval", "refer", "--ann", str(world / "annotations.json"), "--refs", str(world / "refs.json"),
                 "--images", str(world / "images"), "--model", str(tiny_siglip_dir), "--split", "dev"]) == 1
    assert "no referring expressions in split 'dev'; splits present: test, train, val" in _one_line(capsys)


def test_evaluate_refer_all_splits_like_the_cli(world, tiny_encoder, one_thread):
    from dense import coco
    from dense.eval.data import open_data
    from dense.eval.refer import evaluate_refer
    from dense.eval.settings import Bootstrap, ReferScoring

    ds = coco.load_coco(world / "annotations.json", world / "images")
    refs = coco.load_refs(world / "refs.json", ds)
    data = open_data(ann=world / "annotations.json", images=world / "images", refs=world / "refs.json")
    res = evaluate_refer(tiny_encoder, data, split="all",
                         scoring=ReferScoring(methods=["map-value"], scorers=("map-box",), thresholds=(0.3,)),
                         bootstrap=Bootstrap(resamples=10), choose=True)
    assert res.meta["split"] == "all" and res.meta["refs_count"] == len(refs)
    chosen = res.meta["chosen"]["map-value"]
    assert chosen["box_threshold"] == 0.3 and chosen["threshold_at_grid_edge"] is None  # a grid of one value
    assert chosen["text"].startswith("method map-value, no candidates, box threshold 0.3, templates")


# ---------------------------------------------------------------------------------------------------------------------
# The probe protocol as a function


def test_probe_protocol_is_one_call_returning_a_result(world, tiny_encoder, tmp_path, one_thread):
    from dense.coco import load_coco
    from dense.eval.data import open_data
    from dense.eval.probe import evaluate_linear_probe, evaluate_probe, evaluate_saved_probe
    from dense.eval.settings import Extraction, ProbeSplits, ProbeTraining
    from probes import load_samples
    from probes.train import Head

    data = open_data(ann=world / "annotations.json", images=world / "images")
    kw = dict(cache=tmp_path / "cache", training=ProbeTraining(epochs=2, lrs=(1e-2, 3e-2)))
    with pytest.raises(ValueError, match="unknown --preset 'voc-tips'"):
        evaluate_linear_probe(tiny_encoder, data, preset="voc-tips", **kw)
    with pytest.raises(ValueError, match="preset 'dinov3' fixes pooled, max_patches; leave them out"):
        evaluate_linear_probe(tiny_encoder, data, preset="dinov3", extraction=Extraction(max_patches=64),
                              training=ProbeTraining(pooled="on"), cache=tmp_path / "cache")
    # a setting given explicitly clashes even at its default value
    with pytest.raises(ValueError, match="preset 'dinov3' fixes layers, pooled"):
        evaluate_linear_probe(tiny_encoder, data, preset="dinov3", extraction=Extraction(layers=(-1,)),
                              training=ProbeTraining(pooled="off"), cache=tmp_path / "cache")
    with pytest.raises(ValueError, match="must not be the one trained on or chosen on"):
        evaluate_linear_probe(tiny_encoder, data, splits=ProbeSplits(test="val"), **kw)
    res = evaluate_linear_probe(tiny_encoder, data, splits=ProbeSplits(test="test"), **kw)
    probe = res.artifacts["probe"]
    assert set(res.meta["sweep"]) == {"lr=0.01 layers=1", "lr=0.03 layers=1"} and res.meta["best"] == probe.meta["key"]
    assert set(res.values) == {Head(0.01, (1,)), Head(0.03, (1,))}  # the sweep keyed by its settings
    assert {h.key: v for h, v in res.values.items()} == res.meta["sweep"]
    assert res.meta["protocol"] == {"train": "train", "choose": "val", "report": "test", "holdout": None,
                                    "holdout_from": None, "chosen_on_training_split": False}
    assert res.figures["val/mIoU"] == res.meta["sweep"][res.meta["best"]]["mIoU"]
    # the reported figures are the chosen probe's on the test split, scored independently here
    from dense.cache import FeatureCache

    ds = load_coco(world / "annotations.json", world / "images")
    cache = FeatureCache.for_encoder(tmp_path / "cache", tiny_encoder).for_dataset(ds)
    test = evaluate_probe(probe, load_samples(ds, cache, "test"))
    assert res.figures["mIoU"] == pytest.approx(test.figures["mIoU"])
    assert len(res.rows) == res.meta["splits"]["test"] == len(ds.ids("test"))
    saved = probe.save(tmp_path / "p.safetensors")
    again = evaluate_saved_probe(tiny_encoder, data, probe=saved, cache=tmp_path / "cache", split="test",
                                 extraction=Extraction(extract=False))
    assert again.figures["mIoU"] == pytest.approx(res.figures["mIoU"])
    # a holdout of the training split instead of val: seeded, recorded
    held = evaluate_linear_probe(tiny_encoder, data, splits=ProbeSplits(holdout=0.25, holdout_seed=1, test="test"),
                                 **kw)
    assert held.meta["protocol"]["choose"] == "holdout" and held.meta["protocol"]["holdout"]["seed"] == 1
    assert held.meta["splits"]["fit"] + held.meta["splits"]["holdout"] == len(ds.ids("train"))


# ---------------------------------------------------------------------------------------------------------------------
# A calibration expresses every setting it chose


def test_calibration_refine_and_windows_are_applied_by_default(tiny_siglip_dir):
    import dense
    from dense.checkpoint import Calibration
    from dense.errors import CheckpointError

    plain = dense.load_encoder(tiny_siglip_dir, dtype="fp32")
    pamr = dense.load_encoder(tiny_siglip_dir, dtype="fp32", calibration={"refine": "pamr", "windows": 2,
                                                                          "background": 0.0})
    rgb = random_rgb(30, 44, seed=4)
    names = ["red circle", "blue star"]
    want = dense.segment(plain, rgb, names, background=0.0, refine="pamr", windows=2)
    assert (dense.segment(pamr, rgb, names) == want).all()
    assert not (dense.segment(plain, rgb, names, background=0.0) == want).all()  # the settings do change the map
    with pytest.raises(ValueError, match="need the image's pixels"):
        dense.segment(pamr, pamr.extract(rgb), names)
    with pytest.raises(CheckpointError, match="refine must be one of"):
        Calibration.from_dict({"refine": "crf"}, "x.json")


def test_calibration_out_writes_the_refinement_it_chose(world, tiny_siglip_dir, tmp_path, capsys, one_thread):
    from dense.checkpoint import Calibration

    cal = tmp_path / "cal.json"
    argv = ["eval", "openvocab", "--ann", str(world / "annotations.json"), "--images", str(world / "images"),
            "--model", str(tiny_siglip_dir), "--split", "val", "--methods", "map-value", "--refine", "pamr",
            "--background", "0.3", "--choose", "--guard", "1", "--resamples", "10", "--calibration-out", str(cal),
            "--json", str(tmp_path / "r.json"), "--quiet"]
    assert main(argv) == 0
    written = json.loads(cal.read_text())
    assert (written["method"], written["refine"], written["background"]) == ("map-value", "pamr", 0.3)
    measured = written["measured"]["segmentation"]
    res = json.loads((tmp_path / "r.json").read_text())
    assert measured["mIoU"] == res["figures"]["map-value+pamr/mIoU"] and measured["split"] == "val"
    assert measured["command"].startswith("dense eval openvocab --ann")
    Calibration.from_dict(written, str(cal))
    # the calibration's defaults reproduce the figure it records
    capsys.readouterr()
    import dense
    from dense.eval.openvocab import evaluate_openvocab

    enc = dense.load_encoder(tiny_siglip_dir, calibration=cal)
    from dense.eval.data import open_data
    from dense.eval.settings import Bootstrap

    again = evaluate_openvocab(enc, open_data(ann=world / "annotations.json", images=world / "images"), split="val",
                               bootstrap=Bootstrap(resamples=10))
    assert again.figures["map-value+pamr/mIoU"] == pytest.approx(measured["mIoU"])
    # background prompts cannot be a calibration: refused before any work
    assert main([*argv[:-3], "--background", "sky,ground", "--json", str(tmp_path / "r2.json")]) == 1
    assert "not prompts" in _one_line(capsys) and not (tmp_path / "r2.json").exists()
    assert np.isfinite(measured["pixel_acc"])


def test_a_zero_token_budget_is_an_error_not_the_default(tiny_encoder):
    rgb = random_rgb(20, 30)
    for call in (lambda: tiny_encoder.extract(rgb, max_patches=0),
                 lambda: list(tiny_encoder.extract_many([rgb], max_patches=0))):
        with pytest.raises(ValueError, match="max_patches must be at least 1 .*, got 0"):
            call()


def test_a_preset_fixes_the_budget_layers_and_sliding_evaluation(world, tiny_encoder, tmp_path, monkeypatch,
                                                                    one_thread):
    """``preset=`` drives the whole protocol: the cache is written at the preset's token budget and layers, and the
    reported split is scored with the preset's sliding windows: the same figures as predict_slide image by image."""
    from dense.coco import load_coco
    from dense.eval.data import open_data
    from dense.eval.probe import evaluate_linear_probe
    from dense.eval.settings import ProbeSplits, ProbeTraining
    from dense.metrics import SegmentationMeter
    from dense.tiling import predict_slide
    from probes import protocols

    tiny = protocols.Preset("slide-32", "a tiny sliding preset", "this test", layers="last", pooled=False,
                            resolution_px=32, head="bn-linear", evaluation="slide", stride_px=16)
    monkeypatch.setitem(protocols.PRESETS, "slide-32", tiny)
    res = evaluate_linear_probe(tiny_encoder, open_data(ann=world / "annotations.json", images=world / "images"),
                                preset="slide-32", cache=tmp_path / "cache",
                                training=ProbeTraining(epochs=2, lrs=(3e-2,)), splits=ProbeSplits(test="test"))
    assert res.meta["encoder"]["max_patches"] == 16 and res.meta["encoder"]["layers"] == [1]  # (32 // 8) ** 2
    assert res.meta["preset"]["slide"] == {"window_px": 32, "stride_px": 16, "short_side_px": 32, "rule": "mmseg"}
    assert any("sliding windows" in line for line in res.meta["preset"]["lines"])
    ds = load_coco(world / "annotations.json", world / "images")
    meter = SegmentationMeter(ds.class_names)
    for i in ds.ids("test"):
        label = ds.label_map(i)
        meter.update(predict_slide(tiny_encoder, res.artifacts["probe"], ds.image_path(i), size_hw=label.shape,
                                   **res.meta["preset"]["slide"]), label)
    assert res.figures["mIoU"] == pytest.approx(meter.figures()["mIoU"])
    assert res.meta["splits"]["test"] == len(ds.ids("test"))
