"""Sliding-window evaluation (dense.tiling.predict_slide): window placement as mmsegmentation / DINOv3 place them,
logits averaged over overlaps (known answers), and a whole-image label map from windows of a real tiny encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_rgb
from PIL import Image

from dense.tiling import SLIDE_RULES, predict_slide, resize_short_side, slide_logits, slide_starts, slide_windows
from probes import LinearProbe


def test_slide_starts_known_answers():
    assert slide_starts(683, 512, 341) == [0, 171]  # an ADE20K image at short side 512: two windows
    assert slide_starts(512, 512, 341) == [0]
    assert slide_starts(2048, 512, 341) == [0, 341, 682, 1023, 1364, 1536]  # the last one flush with the edge
    assert slide_starts(300, 512, 341) == [0]  # shorter than a window: one window, cut to the axis
    assert slide_starts(10, 6, 4) == [0, 4]
    with pytest.raises(ValueError, match="stride"):
        slide_starts(100, 10, 11)  # gaps
    with pytest.raises(ValueError, match="stride"):
        slide_starts(100, 10, 0)


def dinov3_slide_windows(h_img, w_img, crop, stride):
    """DINOv3's ``slide_inference`` (dinov3/eval/segmentation/inference.py), its window arithmetic line for line."""
    h_stride = w_stride = stride
    h_crop = w_crop = crop
    if h_crop > h_img and w_crop > w_img:  # Meaning we are doing < 1.0 TTA
        h_crop, w_crop = min(h_img, w_img), min(h_img, w_img)
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            out.append((y1, x1, y2, x2))
    return out


def mmseg_slide_windows(h_img, w_img, crop, stride):
    """mmsegmentation's ``EncoderDecoder.slide_inference``: the same without the shrink."""
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            out.append((max(y2 - crop, 0), max(x2 - crop, 0), y2, x2))
    return out


def test_dinov3_rule_slides_a_short_side_window_on_small_images():
    assert slide_windows((300, 400), 512, 341, rule="dinov3") == [(0, 0, 300, 300), (0, 100, 300, 400)]
    assert slide_windows((300, 400), 512, 341, rule="mmseg") == [(0, 0, 300, 400)]  # one window cut to the image
    assert slide_windows((300, 600), 512, 341, rule="dinov3") == slide_windows((300, 600), 512, 341)  # 600 >= 512
    cases = [(h, w, c, s) for h in (1, 7, 100, 299, 300, 341, 511, 512, 513, 683, 1024)
             for w in (1, 9, 300, 400, 512, 700, 2048) for c, s in ((512, 341), (32, 16), (300, 300))]
    for h, w, c, s in cases:
        assert slide_windows((h, w), c, s, rule="mmseg") == mmseg_slide_windows(h, w, c, s), (h, w, c, s)
        want = dinov3_slide_windows(h, w, c, s)
        covered = np.zeros((h, w), bool)
        for y0, x0, y1, x1 in want:
            covered[y0:y1, x0:x1] = True
        if covered.all():  # DINOv3 asserts every pixel is covered; dense says why instead
            assert slide_windows((h, w), c, s, rule="dinov3") == want, (h, w, c, s)
        else:
            with pytest.raises(ValueError, match="in no window"):
                slide_windows((h, w), c, s, rule="dinov3")
    with pytest.raises(ValueError, match="rule"):
        slide_windows((4, 4), 2, 1, rule="detectron2")
    assert SLIDE_RULES == ("mmseg", "dinov3")


def test_predict_slide_follows_the_rule_it_is_given(tiny_encoder, one_thread):
    """A 24 x 32 image, window 64, stride 8, short side kept at 24: DINOv3 slides 24 x 24 windows at x = 0 and 8
    (each encoded alone, a 3 x 3 grid), mmseg encodes the whole 24 x 32 image once."""
    probe = _probe(tiny_encoder, seed=4)
    rgb = random_rgb(24, 32, seed=5)
    kw = dict(window_px=64, stride_px=8, short_side_px=24, max_patches=9)
    got = predict_slide(tiny_encoder, probe, rgb, rule="dinov3", **kw)
    total, count = torch.zeros(3, 24, 32), torch.zeros(1, 24, 32)
    for x0 in (0, 8):
        fmap = tiny_encoder.extract(rgb[:, x0:x0 + 24], max_patches=9)
        assert fmap.grid_hw == (3, 3)
        total[:, :, x0:x0 + 24] += F.interpolate(probe.grid_logits(fmap)[None], size=(24, 24), mode="bilinear",
                                                 align_corners=False)[0]
        count[:, :, x0:x0 + 24] += 1
    np.testing.assert_array_equal(got, (total / count).argmax(0).to(torch.int32).numpy())
    whole = tiny_encoder.extract(rgb, max_patches=9)
    lg = F.interpolate(probe.grid_logits(whole)[None], size=(24, 32), mode="bilinear", align_corners=False)[0]
    np.testing.assert_array_equal(predict_slide(tiny_encoder, probe, rgb, rule="mmseg", **kw),
                                  lg.argmax(0).to(torch.int32).numpy())
    assert not np.array_equal(got, predict_slide(tiny_encoder, probe, rgb, rule="mmseg", **kw))


def test_resize_short_side_known_answers():
    assert resize_short_side((300, 400), 512) == (512, 683)  # DINOv3's FixedSideResize docstring example
    assert resize_short_side((400, 300), 512) == (683, 512)
    assert resize_short_side((375, 500), 512) == (512, 683)
    assert resize_short_side((64, 64), 32) == (32, 32)


def test_slide_logits_average_overlaps():
    """Two windows along a 4 x 10 image (window 6, stride 4): columns 0-3 only see the first, 6-9 only the second,
    4-5 the mean of both; the window is cut to the image's 4 rows."""
    seen = []

    def logits_of(y0, x0, y1, x1):
        seen.append((y0, x0, y1, x1))
        value = torch.tensor([1.0, 0.0]) if x0 == 0 else torch.tensor([0.0, 3.0])
        return value[:, None, None].expand(2, y1 - y0, x1 - x0)

    out = slide_logits((4, 10), 6, 4, logits_of)
    assert seen == [(0, 0, 4, 6), (0, 4, 4, 10)]
    want = torch.zeros(2, 4, 10)
    want[:, :, :4] = torch.tensor([1.0, 0.0])[:, None, None]
    want[:, :, 4:6] = torch.tensor([0.5, 1.5])[:, None, None]
    want[:, :, 6:] = torch.tensor([0.0, 3.0])[:, None, None]
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="logits_of gave"):
        slide_logits((4, 10), 6, 4, lambda y0, x0, y1, x1: torch.zeros(2, 3, 3))


def _probe(encoder, seed=0):
    torch.manual_seed(seed)
    probe = LinearProbe(encoder.hidden_size, ["a", "b", "c"], encoder_spec=encoder.spec(), layers=[-1]).eval()
    with torch.no_grad():
        probe.conv.weight.normal_(0, 1.0)
    return probe


def test_one_window_is_the_whole_image_prediction(tiny_encoder, one_thread):
    """A square image whose side is the window: one window, the probe's own prediction on the image, pixel for
    pixel (patch 8, window 64 px -> an 8 x 8 grid)."""
    probe = _probe(tiny_encoder)
    rgb = random_rgb(64, 64, seed=1)
    got = predict_slide(tiny_encoder, probe, rgb, window_px=64, stride_px=43)
    want = probe.predict(tiny_encoder.extract(rgb, max_patches=64))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 1  # a prediction that could differ


def test_windows_are_encoded_on_their_own_and_averaged(tiny_encoder, one_thread):
    """A 48 x 96 image, short side resized to 32, windows of 32 px every 16: three windows, each encoded alone (a
    4 x 4 grid at patch 8); their upsampled logits averaged, upsampled to 48 x 96, argmax."""
    probe = _probe(tiny_encoder, seed=2)
    rgb = random_rgb(48, 96, seed=3)
    got = predict_slide(tiny_encoder, probe, rgb, window_px=32, stride_px=16)
    small = np.asarray(Image.fromarray(rgb).resize((64, 32), resample=Image.Resampling.BILINEAR))  # [32, 64]
    total = torch.zeros(3, 32, 64)
    count = torch.zeros(1, 32, 64)
    for x0 in (0, 16, 32):
        fmap = tiny_encoder.extract(small[:, x0:x0 + 32], max_patches=16)
        assert fmap.grid_hw == (4, 4)
        lg = F.interpolate(probe.grid_logits(fmap)[None], size=(32, 32), mode="bilinear", align_corners=False)[0]
        total[:, :, x0:x0 + 32] += lg
        count[:, :, x0:x0 + 32] += 1
    mean = F.interpolate((total / count)[None], size=(48, 96), mode="bilinear", align_corners=False)[0]
    np.testing.assert_array_equal(got, mean.argmax(0).to(torch.int32).numpy())
    assert got.shape == (48, 96) and got.dtype == np.int32
    assert predict_slide(tiny_encoder, probe, rgb, window_px=32, stride_px=16, size_hw=(24, 48)).shape == (24, 48)


def test_bad_window_options_are_refused_before_encoding(tiny_encoder):
    probe = _probe(tiny_encoder)
    rgb = random_rgb(32, 32)
    with pytest.raises(ValueError, match="stride_px=40"):
        predict_slide(tiny_encoder, probe, rgb, window_px=32, stride_px=40)
    with pytest.raises(ValueError, match="window_px=4"):
        predict_slide(tiny_encoder, probe, rgb, window_px=4, stride_px=2)
