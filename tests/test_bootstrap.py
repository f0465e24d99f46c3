"""dense.eval.stats: bootstrap intervals with known answers, choosing on val, and the evaluators' intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dense.eval import stats
from dense.metrics import confusion_matrix, segmentation_figures


def test_identical_samples_give_a_zero_width_interval():
    assert stats.mean_interval([1.0] * 40) == (1.0, 1.0)
    assert stats.ratio_interval([2.0] * 30, [4.0] * 30) == (0.5, 0.5)
    inter, union, gt = np.tile([[5, 0, 3]], (20, 1)), np.tile([[10, 0, 6]], (20, 1)), np.tile([[8, 0, 4]], (20, 1))
    ci = stats.segmentation_intervals(inter, union, gt)
    assert ci["mIoU"] == pytest.approx((0.5, 0.5)) and ci["pixel_acc"] == pytest.approx((8 / 12, 8 / 12))


def test_intervals_are_seeded_deterministic_and_cover_the_estimate():
    v = np.random.default_rng(0).random(200) < 0.3  # 0/1 hits
    a, b = stats.mean_interval(v, seed=1), stats.mean_interval(v, seed=1)
    assert a == b and a != stats.mean_interval(v, seed=2)
    assert a[0] < v.mean() < a[1] and a[1] - a[0] < 0.2
    # every draw holds n samples; the resample matrix is a function of (n, resamples, seed) only
    w = stats.resample_counts(7, resamples=5, seed=3)
    assert w.shape == (5, 7) and (w.sum(1) == 7).all() and (w == stats.resample_counts(7, resamples=5, seed=3)).all()


def test_per_image_counts_reproduce_the_pooled_figures():
    rng = np.random.default_rng(0)
    K = 4
    cms = [confusion_matrix(rng.integers(0, K, (9, 11)), rng.integers(0, K, (9, 11)), K) for _ in range(6)]
    counts = np.array([stats.counts_from_confusion(cm) for cm in cms], np.float64)  # [n, 3, K]
    pooled = segmentation_figures(sum(cms))
    # a "draw" that takes every image once is the plain estimate
    one = counts.sum(0)  # [3, K]
    assert np.mean(one[0] / one[1]) == pytest.approx(pooled["mIoU"])
    assert one[0].sum() / one[2].sum() == pytest.approx(pooled["pixel_acc"])
    draws = stats.segmentation_stats(counts[:, 0], counts[:, 1], counts[:, 2], resamples=200)
    assert draws.shape == (200, 2) and np.isfinite(draws).all()
    assert draws[:, 0].min() <= pooled["mIoU"] <= draws[:, 0].max()


def test_choose_guards_pixel_accuracy():
    figs = {"a/mIoU": 0.40, "a/pix": 0.30,  # best mIoU, but lights the background
            "b/mIoU": 0.30, "b/pix": 0.90,
            "c/mIoU": 0.35, "c/pix": 0.89,  # within the guard of b
            "d/mIoU": 0.50, "d/pix": float("nan")}  # no pixel accuracy: not a candidate
    settings = [(k, 0.5, f"{k}/mIoU", f"{k}/pix") for k in "abcd"]
    c = stats.choose(figs, settings, guard=0.02)
    assert c["method"] == "c" and c["eligible"] == 2 and c["best_pixel_acc"] == 0.90
    assert stats.choose(figs, settings, guard=1.0)["method"] == "a"
    with pytest.raises(ValueError):
        stats.choose({}, settings)


def test_openvocab_rows_carry_counts_and_intervals(tiny_encoder, tiny_siglip_dir, tmp_path):
    from dense.cli import main
    from dense.datasets import make_shapes
    from dense.eval.data import open_data
    from dense.eval.openvocab import choose_setting, evaluate_openvocab
    from dense.eval.settings import Bootstrap, OpenVocabScoring

    make_shapes(tmp_path / "w", 4, seed=5, size_range=(64, 96))
    data = open_data(ann=tmp_path / "w/annotations.json", images=tmp_path / "w/images")
    kw = dict(scoring=OpenVocabScoring(methods=["map-value"], background=0.5, thresholds=(0.3,),
                                       refines=("none", "pamr")), bootstrap=Bootstrap(resamples=200))
    res = evaluate_openvocab(tiny_encoder, data, **kw)
    assert res.meta["settings"] == ["map-value", "map-value+pamr"]
    for setting in res.artifacts["settings"]:  # structured values keyed by setting; figures are their flat names
        assert {k: res.figures[setting.name(k)] for k in res.values[setting]} == res.values[setting]
    swept = [s for s in res.values if s.background == 0.3]
    assert [s.prefix for s in swept] == res.meta["settings"]
    assert all(res.values[s]["mIoU"] == res.figures[s.name("mIoU", swept=True)] for s in swept)
    for s in res.meta["settings"]:
        rows = [r for r in res.rows if r["method"] == s]
        inter, union = np.sum([r["inter"] for r in rows], 0), np.sum([r["union"] for r in rows], 0)
        assert np.mean(inter[union > 0] / union[union > 0]) == pytest.approx(res.figures[f"{s}/mIoU"])
        for name in ("mIoU", "pixel_acc", "pointing", "mIoU@thr=0.3", "pixel_acc@thr=0.3"):
            lo, hi = res.intervals[f"{s}/{name}"]
            assert lo - 1e-9 <= res.figures[f"{s}/{name}"] <= hi + 1e-9
    again = evaluate_openvocab(tiny_encoder, data, **kw)
    assert again.intervals == res.intervals  # seeded
    assert choose_setting(res, guard=1.0)["setting"] in res.meta["settings"]

    out, cal = tmp_path / "r.json", tmp_path / "cal.json"
    cal.write_text(json.dumps({"box_threshold": 0.3}))
    assert main(["eval", "openvocab", "--ann", str(tmp_path / "w/annotations.json"), "--images",
                 str(tmp_path / "w/images"), "--model", str(tiny_siglip_dir), "--methods", "raw,map-value+filter",
                 "--sweep", "0.4", "--choose", "--guard", "0.05", "--calibration-out", str(cal),
                 "--resamples", "50", "--json", str(out), "--quiet"]) == 0
    saved = json.loads(out.read_text())
    assert "raw/mIoU" in saved["intervals"] and saved["meta"]["chosen"]["setting"] in ("raw", "map-value+filter")
    written = json.loads(cal.read_text())
    chosen = saved["meta"]["chosen"]
    assert written["box_threshold"] == 0.3 and written["method"] == chosen["method"]
    assert (written["refine"], written["windows"]) == (chosen["refine"], 1)
    measured = written["measured"]["segmentation"]
    assert measured["command"].startswith("dense eval openvocab") and measured["mIoU"] == chosen["mIoU"]
    assert measured["split"] == "all" and measured["images"] == 4
    from dense.checkpoint import Calibration

    Calibration.from_dict(written, str(cal))  # a valid calibration file


def test_refer_intervals_and_box_threshold_choice(tiny_encoder, tmp_path):
    from dense.datasets import make_shapes
    from dense.eval.data import open_data
    from dense.eval.refer import choose_box_threshold, config_key, evaluate_refer
    from dense.eval.settings import Bootstrap, ReferScoring

    make_shapes(tmp_path / "w", 4, seed=6, size_range=(64, 96), splits={"val": 1.0})
    data = open_data(ann=tmp_path / "w/annotations.json", images=tmp_path / "w/images", refs=tmp_path / "w/refs.json")
    res = evaluate_refer(tiny_encoder, data, scoring=ReferScoring(methods=["map-value"], scorers=("map-box",),
                                                                  thresholds=(0.3, 0.6)),
                         bootstrap=Bootstrap(resamples=100))
    key = config_key("none", "map-value")
    for name in (f"{key}/acc@0.5", f"{key}/pointing", f"{key}/acc@0.5@thr=0.3"):
        lo, hi = res.intervals[name]
        assert lo - 1e-9 <= res.figures[name] <= hi + 1e-9
    t = choose_box_threshold(res, "map-value")
    assert res.figures[f"{key}/acc@0.5@thr={t}"] == max(res.figures[f"{key}/acc@0.5@thr={u}"] for u in (0.3, 0.6))
