"""dense.openvocab.segment's chunked argmax equals the unchunked rule (labels_from_scores of all upsampled maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dense.features import FeatureMap
from dense.heatmap import to_image
from dense.openvocab import labels_from_patch_scores, labels_from_scores

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("background", [None, 0.0, 0.45, ["bg"], ["bg", "sky"]])
def test_chunked_equals_unchunked(chunk, background):
    gen = torch.Generator().manual_seed(chunk)
    C = 7
    B = len(background) if isinstance(background, list) else 0
    fmap = FeatureMap(torch.zeros(5, 4, 3), (37, 29), (5 * 14, 4 * 14), 14)  # odd original size: real resampling
    scores = torch.rand(C + B, 5, 4, generator=gen)
    scores[3] = scores[1]  # exact ties between classes (1 must win) ...
    scores[5, :2] = scores[:5, :2].amax(0)  # ... and with the running best of earlier chunks
    for size_hw in ((37, 29), (50, 60), (300, 400)):
        got = labels_from_patch_scores(scores, fmap, C, background, size_hw=size_hw, chunk=chunk)
        assert got.dtype == np.int32 and got.shape == size_hw
        assert (got == 4).sum() == 0  # class 3 (label 4) ties class 1 everywhere: never chosen
        # the same maps through the unchunked rule: identical labels
        maps = torch.cat([to_image(scores[k:k + 1], fmap, size_hw) for k in range(C + B)])  # [C + B, H, W]
        np.testing.assert_array_equal(got, labels_from_scores(maps, C, background))
        # all maps upsampled in one call: torch's bilinear kernel may round 1 ulp differently for another channel
        # count (seen at small sizes), so labels may differ only where two scores are that close
        full = to_image(scores, fmap, size_hw)
        want = labels_from_scores(full, C, background)
        assert (full - maps).abs().max() <= 2.5e-7
        top2 = full.topk(2, dim=0).values
        assert ((top2[0] - top2[1] <= 5e-7).numpy() | (got == want)).all()
        if size_hw == (300, 400):  # the kernel agrees with itself at this size: exactly the unchunked answer
            np.testing.assert_array_equal(got, want)


def test_segment_uses_the_chunked_rule(tiny_siglip_dir):
    import dense

    enc = dense.load_encoder(tiny_siglip_dir)
    img = np.random.default_rng(0).integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    fmap = enc.extract(img)
    names = ["red circle", "blue star", "green square"]
    from dense.heatmap import patch_scores

    scores = patch_scores(enc, fmap, names + ["background"])
    want = labels_from_scores(to_image(scores, fmap), 3, ["background"])
    np.testing.assert_array_equal(dense.segment(enc, fmap, names, background=["background"]), want)
