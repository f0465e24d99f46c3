"""dense.eval.settings: config objects, settings that print whole, flat names made in one place, and choices that
name all of their setting."""

from __future__ import annotations

import json
import re

import pytest

from dense.cli import main
from dense.datasets import make_shapes
from dense.eval.settings import (
    Extraction,
    OpenVocabScoring,
    OpenVocabSetting,
    ProbeTraining,
    ReferScoring,
    Way,
    figure_name,
    grid_edge,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("settings-world")
    make_shapes(root, 8, seed=4, size_range=(64, 96), splits={"val": 1.0})
    return root


def test_flat_names_come_from_one_function():
    s = OpenVocabSetting("map-value-mlp", "pamr", 1, 0.3, ("{}",))
    assert s.prefix == "map-value-mlp+pamr" and OpenVocabSetting("raw").prefix == "raw"
    assert s.name("mIoU") == "map-value-mlp+pamr/mIoU"
    assert s.name("mIoU", swept=True) == "map-value-mlp+pamr/mIoU@thr=0.3"
    assert str(s) == "method map-value-mlp, refine pamr, windows 1, background 0.3, templates ['{}']"
    w = Way("none", "raw", threshold=0.4)
    assert w.name("acc@0.5") == "none/raw/-/acc@0.5@thr=0.4" and w.key == "none/raw/-@thr=0.4"
    assert figure_name("multi", Way("gt-boxes", "raw", "map-box").name("pointing")) == \
        "multi/gt-boxes/raw/map-box/pointing"
    assert figure_name("", "mIoU") == "mIoU"
    assert (grid_edge(0.2, [0.4, 0.2, 0.3]), grid_edge(0.4, [0.2, 0.3, 0.4]), grid_edge(0.3, [0.2, 0.3, 0.4])) == \
        ("lowest", "highest", None)
    assert grid_edge(0.3, [0.3]) is None and grid_edge(0.5, [0.2, 0.3]) is None


def test_configs_check_their_values_and_keep_unset_apart_from_default():
    assert Extraction().layers is None and Extraction().blocks == (-1,)
    assert Extraction(layers=[-1]).layers == (-1,)  # set explicitly, even at the default: a preset clashes with it
    assert ProbeTraining().pooled is None
    for bad, match in ((lambda: Extraction(max_patches=0), "max_patches must be at least 1"),
                       (lambda: Extraction(on_error="ignore"), "on_error"),
                       (lambda: ProbeTraining(lrs=(0.0,)), "positive learning rates"),
                       (lambda: ProbeTraining(protocol="nosuch"), "unknown protocol"),
                       (lambda: OpenVocabScoring(background=1.5), r"in \[0, 1\]"),
                       (lambda: ReferScoring(scorers=("nosuch",)), "unknown candidate scorer")):
        with pytest.raises(ValueError, match=match):
            bad()


def test_the_printed_choice_names_the_whole_setting_it_was_measured_with(world, tiny_siglip_dir, tmp_path, capsys,
                                                                          one_thread):
    out = tmp_path / "ov.json"
    assert main(["eval", "openvocab", "--ann", str(world / "annotations.json"), "--images", str(world / "images"),
                 "--model", str(tiny_siglip_dir), "--methods", "raw,map-value", "--refine", "none,pamr",
                 "--sweep", "0.2,0.3,0.5", "--choose", "--guard", "1", "--resamples", "10", "--json", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    chosen = res["meta"]["chosen"]
    # the best mIoU over every (method, refinement, threshold): the choice is the setting that scored it
    names = [k for k in res["figures"] if re.fullmatch(r"[^/]+/mIoU(@thr=[0-9.]+)?", k)]
    best = max(res["figures"][k] for k in names)
    assert chosen["mIoU"] == best
    thr = chosen["background"]
    name = figure_name(chosen["setting"], "mIoU", thr if f"{chosen['setting']}/mIoU@thr={thr}" in res["figures"]
                       else None)
    assert res["figures"][name] == best
    line = next(line for line in printed.splitlines() if line.startswith("chosen on split"))
    for part in (f"method {chosen['method']},", f"refine {chosen['refine']},", f"windows {chosen['windows']},",
                 f"background {thr},", "templates ["):
        assert part in line, (part, line)
    assert chosen["setting"] == (chosen["method"] if chosen["refine"] == "none"
                                 else f"{chosen['method']}+{chosen['refine']}")
    edge = {0.2: "lowest", 0.5: "highest"}.get(thr)
    assert (f"the {edge} of the grid" in printed) if edge else ("of the grid" not in printed)


def test_refer_choose_says_when_its_threshold_is_at_the_grid_edge(world, tiny_siglip_dir, tmp_path, capsys,
                                                                   one_thread):
    out = tmp_path / "ref.json"
    assert main(["eval", "refer", "--ann", str(world / "annotations.json"), "--refs", str(world / "refs.json"),
                 "--images", str(world / "images"), "--model", str(tiny_siglip_dir), "--methods", "map-value",
                 "--scorers", "map-box", "--sweep", "0.2,0.5,0.8", "--choose", "--resamples", "10", "--json",
                 str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    chosen = json.loads(out.read_text())["meta"]["chosen"]["map-value"]
    t = chosen["box_threshold"]
    line = next(line for line in printed.splitlines() if line.startswith("chosen on split"))
    assert f"method map-value, no candidates, box threshold {t}, templates" in line
    edge = {0.2: "lowest", 0.8: "highest"}.get(t)
    assert chosen["threshold_at_grid_edge"] == edge
    assert (f"the chosen box threshold is the {edge} of the grid" in printed) if edge else "of the grid" not in printed
