"""Contract tests, one per registry entry (as timm checks every model): every heatmap method, candidate scorer,
random spec, sharpening mode and dataset reader gets the same checks of shape, finiteness, an identity it must keep,
and bad input named in one line. Known answers per entry live in the module's own test file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_rgb

import dense
from dense import heatmap
from dense.checkpoint import RANDOM_SPECS, model_classes
from dense.refer import SCORERS, Localizer
from dense.segdata import READERS, load_dataset
from dense.upsample import SHARPEN_MODES, upsample_maps

QUERIES = ["red circle", "blue star"]

# ---------------------------------------------------------------------------------------------------------------------
# Heatmap methods


@pytest.mark.parametrize("method", [*heatmap.METHODS, *heatmap.EXPERIMENTAL_METHODS])
def test_heatmap_method_contract(method, tiny_encoder, tiny_encoder2):
    rgb = random_rgb(50, 90, seed=2)
    for enc in (tiny_encoder, tiny_encoder2):
        s = heatmap.patch_scores(enc, rgb, QUERIES, method=method)  # from the image
        fmap = heatmap.with_aligned(enc, rgb, method)
        assert tuple(s.shape) == (2, *fmap.grid_hw)
        assert torch.isfinite(s).all() and (s > 0).all() and (s < 1).all()
        torch.testing.assert_close(fmap.aligned.norm(dim=-1), torch.ones(fmap.grid_hw))  # unit vectors
        # identity: scores of the image == scores of its FeatureMap; one query alone == its row of two
        torch.testing.assert_close(heatmap.patch_scores(enc, fmap, QUERIES, method=method), s)
        torch.testing.assert_close(heatmap.patch_scores(enc, fmap, QUERIES[1:], method=method), s[1:])
        with pytest.raises(ValueError, match=r"\[T, E\]"):
            heatmap.patch_scores(enc, fmap, torch.zeros(3), method=method)
    other = tiny_encoder.extract(rgb, layers=heatmap.required_layers(method))
    with pytest.raises(ValueError, match="another encoder"):
        heatmap.aligned_tokens(tiny_encoder2, other, method)


# ---------------------------------------------------------------------------------------------------------------------
# Candidate scorers (referring expressions with boxes)


@pytest.mark.parametrize("scorer", SCORERS)
def test_candidate_scorer_contract(scorer, tiny_encoder):
    rgb = random_rgb(64, 96, seed=5)
    loc = Localizer(tiny_encoder, rgb)
    boxes = np.array([[0, 0, 48, 32], [40, 20, 96, 64], [0, 0, 48, 32], [10.5, 5.5, 30.2, 60.8]])  # [K, 4]
    scores = loc.candidate_scores("the red circle", boxes, scorer=scorer)
    assert tuple(scores.shape) == (4,) and torch.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    assert torch.allclose(scores[0], scores[2], atol=1e-6)  # identity: the same box scores the same
    r = loc.localize("the red circle", candidates_xyxy=boxes, scorer=scorer)
    assert r.candidate_index == int(torch.argmax(scores)) and np.array_equal(r.box_xyxy, boxes[r.candidate_index])
    assert r.method.endswith(f"+{scorer}")
    with pytest.raises(ValueError, match="candidates_xyxy is empty"):
        loc.localize("the red circle", candidates_xyxy=np.zeros((0, 4)), scorer=scorer)
    with pytest.raises(ValueError, match="unknown candidate scorer"):
        loc.candidate_scores("the red circle", boxes, scorer=scorer + "-nope")


# ---------------------------------------------------------------------------------------------------------------------
# Random specs: the tiny ones run; the So400m ones only build their config (no forward, no weights)


@pytest.mark.parametrize("spec", list(RANDOM_SPECS))
def test_random_spec_contract(spec):
    arch = RANDOM_SPECS[spec]
    full_cls, _, _, _ = model_classes(arch["family"])
    config = full_cls(text_config=arch["text"], vision_config=arch["vision"])
    v, t = config.vision_config, config.text_config
    assert v.hidden_size % v.num_attention_heads == 0 and t.hidden_size % t.num_attention_heads == 0
    if spec.startswith("so400m"):
        assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers) == (1152, 4304, 27)
        assert v.patch_size == (14 if "patch14" in spec else 16)
        return
    enc = dense.random_encoder(spec, dtype="fp32")
    rgb = random_rgb(30, 50, seed=1)
    fmap = enc.extract(rgb, layers=(0, -1))
    gh, gw = fmap.grid_hw
    assert tuple(fmap.tokens.shape) == (gh, gw, 2 * v.hidden_size) and gh * gw <= enc.pixels.max_patches
    assert torch.isfinite(fmap.tokens).all()
    again = dense.random_encoder(spec, dtype="fp32")  # identity: same spec and seed, same weights and fingerprint
    assert again.fingerprint == enc.fingerprint
    torch.testing.assert_close(again.extract(rgb, layers=(0, -1)).tokens, fmap.tokens, rtol=0, atol=0)
    assert dense.random_encoder(spec, dtype="fp32", seed=1).fingerprint != enc.fingerprint


def test_random_spec_unknown_name():
    with pytest.raises(ValueError, match="unknown spec 'so400m-patch15'"):
        dense.random_encoder("so400m-patch15")


# ---------------------------------------------------------------------------------------------------------------------
# Sharpening modes (dense.upsample.upsample_maps)


@pytest.mark.parametrize("sharpen", SHARPEN_MODES)
def test_sharpen_mode_contract(sharpen, tiny_encoder):
    rgb = random_rgb(40, 56, seed=3)
    fmap = tiny_encoder.extract(rgb)
    gh, gw = fmap.grid_hw
    logits = torch.randn(3, gh, gw, generator=torch.Generator().manual_seed(0))
    probs = upsample_maps(logits.softmax(0), fmap, sharpen=sharpen, image=rgb, probabilities=True)
    assert tuple(probs.shape) == (3, 40, 56) and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(0), torch.ones(40, 56), atol=1e-5, rtol=0)  # still a distribution
    const = upsample_maps(torch.full((2, gh, gw), 0.25), fmap, sharpen=sharpen, image=rgb)  # identity: constants stay
    torch.testing.assert_close(const, torch.full((2, 40, 56), 0.25), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="made from"):
        upsample_maps(logits, fmap, sharpen="guided", image=rgb[:-2])
    with pytest.raises(ValueError, match="sharpen must be one of"):
        upsample_maps(logits, fmap, sharpen=sharpen + "-nope", image=rgb)


# ---------------------------------------------------------------------------------------------------------------------
# Dataset readers (dense.segdata): a root without the dataset is named in one line, before any image is read


@pytest.mark.parametrize("name", list(READERS))
def test_reader_contract_names_a_missing_root(name, tmp_path):
    root = tmp_path / "not-here-yet"
    root.mkdir()
    with pytest.raises(OSError) as info:  # at construction, or at the first listing of a split
        ds = load_dataset(name, root)
        for split in ds.splits():
            ds.ids(split)
    message = str(info.value)
    assert str(root) in message and "\n" not in message


def test_reader_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset 'vocc'"):
        load_dataset("vocc", ".")


# ---------------------------------------------------------------------------------------------------------------------
# Sliding windows and PAMR: known answers by construction


def test_sliding_windows_restore_a_per_pixel_score_and_keep_constants():
    """Scores that depend only on each pixel come back exactly, however the windows cut the image (a blob split
    across windows is restored); a constant stays the constant."""
    rgb = random_rgb(48, 80, seed=7)
    rgb[10:40, 20:70] = (255, 0, 0)  # a blob that every window layout below splits

    def per_pixel(crop):
        return torch.from_numpy(crop[..., :2].astype(np.float32) / 255).permute(2, 0, 1)  # [2, h, w]

    for windows in (1, 2, 3, 4):
        torch.testing.assert_close(heatmap.sliding_window_scores(rgb, windows, per_pixel), per_pixel(rgb))
        const = heatmap.sliding_window_scores(rgb, windows, lambda c: torch.full((1, *c.shape[:2]), 0.3))
        torch.testing.assert_close(const, torch.full((1, 48, 80), 0.3))
    # a score that says which crop it came from: pixels seen by two crops get their mean
    seen = heatmap.sliding_window_scores(rgb[:, :9], 2, lambda c: torch.full((1, *c.shape[:2]), float(c.shape[1])))
    assert seen.shape == (1, 48, 9) and torch.allclose(seen, torch.full_like(seen, 6.0))  # crops of 6 columns


def test_pamr_leaves_a_map_that_follows_the_image_edges():
    """A score map constant on each colour region (edges where the image's edges are) is a fixed point of PAMR; a
    map that crosses the edges is pulled to the regions."""
    from dense.refine import pamr

    img = np.zeros((24, 30, 3), np.uint8)
    img[:, 12:] = (200, 40, 40)
    img[16:, :12] = (40, 40, 200)  # three regions
    regions = torch.zeros(3, 24, 30)
    regions[0, :16, :12], regions[1, :, 12:], regions[2, 16:, :12] = 1, 1, 1
    torch.testing.assert_close(pamr(img, regions), regions, atol=1e-4, rtol=0)
    crossing = F.avg_pool2d(regions[None], 5, stride=1, padding=2, count_include_pad=False)[0]  # blurred edges
    assert (pamr(img, crossing) - regions).abs().mean() < 0.5 * (crossing - regions).abs().mean()
