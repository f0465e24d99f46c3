"""Probe protocol presets (probes.protocols.PRESETS): what each fixes, token budgets derived from the patch size,
describe() lines, and a preset's settings driving extraction, training and sliding-window evaluation end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dense.labels import IGNORE
from dense.segdata import READERS
from probes import ProbeConfig, Sample, train_probes
from probes.protocols import LABELS, PRESETS, Preset, Reference, preset


def test_the_four_presets_and_their_references():
    assert list(PRESETS) == ["siglip2-tips", "pe-best-block", "dinov3", "radio"]
    tips, pe, dino, radio = (PRESETS[n] for n in PRESETS)
    assert (tips.layers, tips.pooled, tips.resolution_px, tips.evaluation) == ("last", True, 384, "whole")
    assert (pe.layers, pe.pooled, pe.resolution_px) == ("best-block", False, 448)
    assert (dino.layers, dino.head, dino.resolution_px, dino.evaluation, dino.stride_px) == (
        "last", "bn-linear", 512, "slide", 341)
    assert (radio.head, radio.resolution_px, radio.pad_to_patch, radio.evaluation) == ("bn-linear", 512, True, "whole")
    assert "512 x 512 random crops, zero-padded to 518 x 518" in radio.source
    assert (tips.reference("voc").miou, tips.reference("ade20k").miou) == (78.1, 45.4)
    assert pe.reference("ade20k").miou == 44.0 and "42.9" in pe.reference("ade20k").note
    assert (radio.reference("ade20k").miou, radio.reference("voc").miou) == (40.53, 70.31)
    assert "v1" in radio.reference("ade20k").model and dino.reference("ade20k") is None
    with pytest.raises(ValueError, match="unknown --preset 'tips'; choose one of siglip2-tips, pe-best-block"):
        preset("tips")


@pytest.mark.parametrize("name, patch, side", [
    ("dinov3", 14, 36), ("dinov3", 16, 32), ("radio", 14, 37), ("radio", 16, 32), ("radio", 10, 52),
    ("dinov3", 10, 51), ("siglip2-tips", 14, 27),
    ("siglip2-tips", 16, 24), ("pe-best-block", 14, 32), ("pe-best-block", 8, 56)])
def test_token_budget_follows_the_patch_size(name, patch, side):
    p = preset(name)
    assert p.grid_side(patch) == side and p.max_patches(patch) == side * side
    assert p.settings(patch_size=patch, num_layers=27)["max_patches"] == side * side


def test_presets_keep_the_aspect_ratio_within_the_papers_square_budget():
    """What the README's "What a preset cannot make equal" says: a 512 x 683 image at siglip2-tips' 729 tokens."""
    from dense.preprocess import choose_grid

    budget = preset("siglip2-tips").max_patches(14)
    assert budget == 27 * 27 and choose_grid((512, 683), 14, budget) == (23, 31)  # 713 tokens, not 27 x 27


def test_settings_fix_layers_pooled_and_windows():
    s = preset("siglip2-tips").settings(patch_size=14, num_layers=27)
    assert s["max_patches"] == 729 and s["layers"] == (26,) and s["layer_sets"] == ((26,),) and s["pooled"] == (True,)
    assert s["slide"] is None and s["evaluation"] == "whole"
    s = preset("pe-best-block").settings(patch_size=14, num_layers=27)
    assert s["layer_sets"] == tuple((b,) for b in range(27)) and s["pooled"] == (False,)
    s = preset("dinov3").settings(patch_size=14, num_layers=27)
    assert s["max_patches"] == 1296 and s["layer_sets"] == ((26,),)
    assert s["slide"] == {"window_px": 512, "stride_px": 341, "short_side_px": 512, "rule": "dinov3"}
    assert preset("radio").protocol(24).layers == (23,)


def test_describe_says_every_choice():
    lines = preset("dinov3").describe(patch_size=14, num_layers=27)
    text = "\n".join(lines)
    assert lines[0].startswith("preset dinov3:")
    for want in ("36 x 36 = 1,296 tokens at patch 14", "block 26, 0-based", "BN + linear", "every 341 px",
                 "reduce-zero-label", "255 (object boundaries) -> ignore", "none published"):
        assert want in text, want
    text = "\n".join(preset("siglip2-tips").describe())
    assert "pooled MAP embedding" in text and "voc mIoU 78.1" in text and "ade20k mIoU 45.4" in text
    text = "\n".join(preset("radio").describe(patch_size=14))
    assert "37 x 37 = 1,369 tokens" in text and "ade20k mIoU 40.53" in text and "voc mIoU 70.31" in text
    assert "ade20k mIoU 44.0" in "\n".join(preset("pe-best-block").describe())
    for p in PRESETS.values():  # each choice on its own line
        keys = [ln.split(":")[0].strip() for ln in p.describe()[1:]]
        assert {"source", "layers", "pooled", "resolution", "head", "evaluation", "labels", "reference"} <= set(keys)


def test_label_handling_is_the_readers(tmp_path):
    """ADE20K's reduce-zero-label and VOC's 255 are what dense.segdata's readers do (LABELS only says so): stored maps
    written as the official downloads hold them read back as the truth they encode."""
    import segdata_layouts as L

    from dense.segdata import load_dataset

    assert set(LABELS) <= set(READERS)
    for name, built in (("ade20k", L.ade150_official(tmp_path / "ade")), ("voc", L.voc_official(tmp_path / "voc"))):
        ds = load_dataset(name, built.root)
        for split, maps in built.truth.items():
            for i, truth in maps.items():
                assert np.array_equal(ds.label_map(i), truth), (name, split, i)
        assert any((m == IGNORE).any() for maps in built.truth.values() for m in maps.values())


def test_bad_presets_are_refused():
    with pytest.raises(ValueError, match="stride_px goes with evaluation='slide'"):
        Preset("x", "x", "x", layers="last", pooled=False, resolution_px=64, head="linear", evaluation="whole",
               stride_px=32)
    with pytest.raises(ValueError, match="head 'mlp'"):
        Preset("x", "x", "x", layers="last", pooled=False, resolution_px=64, head="mlp", evaluation="whole")
    with pytest.raises(ValueError, match="patch size 600 for preset dinov3 at 512 px"):
        preset("dinov3").grid_side(600)


def _halves(H: int, W: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Red left / blue right (or swapped): the image and its label map (0 = red, 1 = blue)."""
    rgb = np.zeros((H, W, 3), np.uint8)
    label = np.zeros((H, W), np.int8)
    left, right = (slice(None, W // 2), slice(W // 2, None))
    red, blue = (right, left) if flip else (left, right)
    rgb[:, red, 0] = 220
    rgb[:, blue, 2] = 220
    label[:, blue] = 1
    return rgb, label


def test_a_sliding_preset_runs_end_to_end(tiny_encoder, one_thread):
    """A preset's settings drive it all: extraction at its budget (32 px at patch 8: 4 x 4 tokens), a head of its
    layer sets, and sliding-window evaluation with its windows; red vs blue halves are learnt and found."""
    from dense.tiling import predict_slide

    p = Preset("slide-32", "a tiny sliding preset", "this test", layers="last", pooled=False, resolution_px=32,
               head="bn-linear", evaluation="slide", stride_px=16,
               references=(Reference("voc", 0.0, "none", "none"),))
    s = p.settings(patch_size=tiny_encoder.patch_size, num_layers=tiny_encoder.num_layers)
    assert s["max_patches"] == 16
    samples = []
    for i, (H, W) in enumerate([(32, 64), (40, 40), (48, 32), (32, 48)] * 2):
        rgb, label = _halves(H, W, flip=i % 2 == 1)
        fmap = tiny_encoder.extract(rgb, max_patches=s["max_patches"], layers=s["layers"])
        fmap = dataclasses.replace(fmap, tokens=fmap.tokens.clone())  # an inference tensor is not trainable input
        samples.append(Sample(str(i), fmap, label))
    cfg = ProbeConfig(lrs=(3e-2,), layer_sets=s["layer_sets"], pooled=s["pooled"], epochs=30, batch_size=2)
    probe = train_probes(samples[:6], samples[6:], ["red", "blue"], cfg, progress=False).best
    rgb, label = _halves(48, 128, flip=True)  # wider than any training image: three windows at short side 32
    pred = predict_slide(tiny_encoder, probe, rgb, **s["slide"])
    assert pred.shape == label.shape
    acc = (pred == label).mean()
    assert acc > 0.9, acc
