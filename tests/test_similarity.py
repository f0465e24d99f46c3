"""dense.similarity: patch similarity maps and mutual-nearest-neighbour matches, with answers known by construction."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from dense.features import FeatureMap
from dense.similarity import check_point_xy, match, patch_vector, similarity_maps


def _fmap(tokens: torch.Tensor, patch: int = 8, image_hw=None, layers=(-1,), encoder=None) -> FeatureMap:
    gh, gw, _ = tokens.shape
    resized = (gh * patch, gw * patch)
    return FeatureMap(tokens=tokens, image_hw=tuple(image_hw or resized), resized_hw=resized, patch_size=patch,
                      layers=layers, encoder_spec=dict(encoder or {}))


def _pasted(seed: int = 0, D: int = 16, offset_ij=(3, 5)):
    """A 4x4 crop of random tokens, and a 9x12 grid of other random tokens with the crop pasted at ``offset_ij``."""
    g = torch.Generator().manual_seed(seed)
    crop = torch.randn(4, 4, D, generator=g)
    big = torch.randn(9, 12, D, generator=g)
    i0, j0 = offset_ij
    big[i0:i0 + 4, j0:j0 + 4] = crop
    return crop, big


def test_pasted_crop_is_found_at_its_offset_by_construction():
    crop, big = _pasted(offset_ij=(3, 5))
    # the crop's image is 2x its grid (patch cells 16 px), the big one 3x: the maps live in each image's own pixels
    a = _fmap(crop, image_hw=(64, 64))
    b = _fmap(big, image_hw=(216, 288))
    for i in range(4):
        for j in range(4):
            point_xy = a.grid_to_pixel_xy((i, j))  # centre of crop patch (i, j)
            sims = similarity_maps(a, point_xy, [a, b])
            assert sims.patch_ij.tolist() == [i, j]
            assert sims.peak_ij.tolist() == [[i, j], [3 + i, 5 + j]]
            np.testing.assert_allclose(sims.peak_xy[1], b.grid_to_pixel_xy((3 + i, 5 + j)))
            np.testing.assert_allclose(sims.peak_scores, [1.0, 1.0], atol=1e-5)
            assert sims.maps[1].shape == (9, 12)
            assert float(sims.maps[1].min()) >= -1 - 1e-5

    m = match(a, b)
    assert len(m) == 16
    np.testing.assert_array_equal(m.patches_ij_b - m.patches_ij_a, np.tile([3, 5], (16, 1)))
    np.testing.assert_allclose(m.scores, 1.0, atol=1e-5)
    # pixels in each image's own geometry: a's patch centres scale by 2, b's by 3
    np.testing.assert_allclose(m.points_xy_a, (m.patches_ij_a[:, ::-1] + 0.5) * 16)
    np.testing.assert_allclose(m.points_xy_b, (m.patches_ij_b[:, ::-1] + 0.5) * 24)


def test_any_pixel_of_a_patch_asks_about_that_patch():
    crop, big = _pasted()
    a = _fmap(crop, image_hw=(50, 70))  # per-axis scales differ from 1 and from each other
    for point_xy, ij in (((0, 0), (0, 0)), ((69.9, 49.9), (3, 3)), ((70, 50), (3, 3)), ((17.6, 12.6), (1, 1))):
        assert similarity_maps(a, point_xy).patch_ij.tolist() == list(ij)
        assert a.pixel_to_grid(point_xy).tolist() == list(ij)


def test_maps_to_image_peak_inside_the_peak_patch():
    crop, big = _pasted(offset_ij=(2, 7))
    a = _fmap(crop)
    b = _fmap(big, image_hw=(9 * 21, 12 * 21))  # 21 px per patch: each patch centre is a pixel centre
    sims = similarity_maps(a, a.grid_to_pixel_xy((1, 2)), [b])
    up = sims.to_image(0)
    assert tuple(up.shape) == (189, 252)
    y, x = divmod(int(torch.argmax(up)), 252)
    assert (x, y) == (21 * 9 + 10, 21 * 3 + 10)  # the centre of patch (3, 9) = offset (2, 7) + (1, 2)
    assert float(up.max()) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(up[10::21, 10::21], sims.maps[0])  # every patch centre holds its patch's value
    assert tuple(sims.to_image(0, (90, 120)).shape) == (90, 120)


def test_layer_selects_the_block_compared():
    crop, big = _pasted(offset_ij=(1, 1), D=8)
    g = torch.Generator().manual_seed(7)
    a = _fmap(torch.cat([crop, torch.randn(4, 4, 8, generator=g)], dim=-1), layers=(0, 1), encoder={"num_layers": 2})
    b = _fmap(torch.cat([big, torch.randn(9, 12, 8, generator=g)], dim=-1), layers=(0, 1), encoder={"num_layers": 2})
    point = a.grid_to_pixel_xy((2, 2))
    assert similarity_maps(a, point, [b], layer=0).peak_ij.tolist() == [[3, 3]]
    assert float(similarity_maps(a, point, [b], layer=0).peak_scores[0]) == pytest.approx(1.0, abs=1e-5)
    assert float(similarity_maps(a, point, [b], layer=-1).peak_scores[0]) < 0.99  # block 1: unrelated noise
    unit = torch.nn.functional.normalize(a.tokens[2, 2, 8:], dim=0)
    torch.testing.assert_close(patch_vector(a, point, layer=1), unit)
    with pytest.raises(ValueError, match="out of range for 2 blocks"):
        similarity_maps(a, point, [b], layer=5)
    last_only = _fmap(big[..., :8], layers=(1,), encoder={"num_layers": 2})
    with pytest.raises(ValueError, match=r"holds blocks \[1\], not block 0"):
        similarity_maps(last_only, (1, 1), layer=0)


def test_mutual_filter_removes_one_way_matches_built_on_purpose():
    e = torch.eye(4)
    # a0 and a1 both point at b0; b0 prefers a0, so a1 -> b0 is one-way. a2 <-> b1 is mutual.
    a = _fmap(torch.stack([e[0], e[0] + 0.3 * e[1], e[2]]).reshape(1, 3, 4))
    b = _fmap(torch.stack([e[0], e[2] + 0.1 * e[3]]).reshape(1, 2, 4))
    one_way = match(a, b, mutual=False)
    assert sorted(map(tuple, np.c_[one_way.patches_ij_a[:, 1], one_way.patches_ij_b[:, 1]])) == [(0, 0), (1, 0), (2, 1)]
    mutual = match(a, b)
    assert sorted(map(tuple, np.c_[mutual.patches_ij_a[:, 1], mutual.patches_ij_b[:, 1]])) == [(0, 0), (2, 1)]
    assert list(mutual.scores) == sorted(mutual.scores, reverse=True)
    assert len(match(a, b, min_score=0.999)) == 1  # only a0 <-> b0 is exact
    assert len(match(a, b, max_matches=1)) == 1


def test_bad_inputs_are_refused_with_one_clear_line():
    crop, big = _pasted()
    a = _fmap(crop, encoder={"fingerprint": "aaa"})
    other = _fmap(big, encoder={"fingerprint": "bbb"})
    for bad in ((-1, 3), (3, 33), (float("nan"), 1), (1, 2, 3), "xy"):
        with pytest.raises(ValueError, match="point_xy"):
            similarity_maps(a, bad)
    with pytest.raises(ValueError, match="outside the image .32 x 32"):
        check_point_xy(a, (40, 1))
    with pytest.raises(ValueError, match="different encoders"):
        similarity_maps(a, (1, 1), [other])
    with pytest.raises(ValueError, match="different encoders"):
        match(a, other)


@pytest.mark.slow
def test_real_extraction_finds_a_pasted_crop_at_its_offset(one_thread):
    """shapes-tiny-v2 on drawn scenes: a patch-aligned crop pasted into another scene at a known offset. Every image
    is extracted at its own pixel size (grid = size / patch), so the crop's patches are the pasted patches."""
    import dense
    from dense.datasets import Shape, render_scene

    enc = dense.load_encoder("shapes-tiny-v2", dtype="fp32")
    p = enc.patch_size
    scene, _ = render_scene(np.random.default_rng(0), (64, 64),
                            [Shape("star", "red", (20.0, 28.0), 12.0), Shape("circle", "blue", (48.0, 44.0), 10.0)])
    crop = np.ascontiguousarray(scene[p:5 * p, p:5 * p])  # 4 x 4 patches around the star
    others = [Shape("circle", "green", (30.0, 100.0), 14.0), Shape("square", "yellow", (100.0, 30.0), 14.0)]
    other, _ = render_scene(np.random.default_rng(1), (128, 128), others)
    ox, oy = 10 * p, 8 * p
    other[oy:oy + 4 * p, ox:ox + 4 * p] = crop
    fa = enc.extract(crop, max_patches=16)
    fb = enc.extract(other, max_patches=256)
    assert fa.resized_hw == crop.shape[:2] and fb.resized_hw == other.shape[:2]  # no resize: tokens line up

    m = match(fa, fb)
    offsets = Counter(map(tuple, (m.points_xy_b - m.points_xy_a).round().astype(int).tolist()))
    (best, votes), = offsets.most_common(1)
    assert best == (ox, oy) and votes >= len(m) / 2, offsets
    sims = similarity_maps(fa, (12.0, 20.0), [fb])  # the star's centre in the crop
    np.testing.assert_allclose(sims.peak_xy[0], (12.0 + ox, 20.0 + oy))
