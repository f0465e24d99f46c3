"""FeatureMap: geometry, upsampling, PCA, save/load."""

import numpy as np
import pytest
import torch

from dense import FeatureMap


def _fmap(gh=3, gw=5, D=4, image_hw=(30, 70), p=14):
    tokens = torch.arange(gh * gw * D, dtype=torch.float32).reshape(gh, gw, D)
    return FeatureMap(tokens=tokens, image_hw=image_hw, resized_hw=(gh * p, gw * p), patch_size=p)


def test_to_image_puts_patch_values_at_patch_centres():
    fmap = _fmap()
    up = fmap.to_image()  # [D, H, W]
    assert up.shape == (4, 30, 70)
    # a token constant over its neighbourhood is reproduced exactly at its centre pixel (bilinear weight 1)
    tokens = torch.zeros(3, 5, 1)
    tokens[1, 2] = 1.0
    f = FeatureMap(tokens=tokens, image_hw=(42 * 2, 70 * 2), resized_hw=(42, 70), patch_size=14)
    up = f.to_image()[0]  # [H, W], 2x the resized size
    x, y = f.grid_to_pixel_xy((1, 2))
    assert up[int(y), int(x)] == pytest.approx(1.0, abs=0.05)
    assert tuple(np.unravel_index(int(up.argmax()), up.shape)) in {(int(y) - dy, int(x) - dx) for dy in (0, 1)
                                                                    for dx in (0, 1)}


def test_geometry_round_trip():
    fmap = _fmap(image_hw=(333, 517))
    gh, gw = fmap.grid_hw
    ij = np.stack(np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij"), -1).reshape(-1, 2)
    np.testing.assert_array_equal(fmap.pixel_to_grid(fmap.grid_to_pixel_xy(ij)), ij)


def test_pca_rgb_shapes_and_range():
    fmap = FeatureMap(tokens=torch.randn(6, 9, 16), image_hw=(60, 90), resized_hw=(48, 72), patch_size=8)
    rgb = fmap.pca_rgb()
    assert rgb.shape == (6, 9, 3) and rgb.dtype == np.uint8 and rgb.max() > 200
    assert fmap.pca_rgb(size_hw=(60, 90)).shape == (60, 90, 3)


def test_pca_rgb_shared_colours_two_images_in_one_basis():
    """Known answer: image a's tokens lie along e0 at 0..1, image b's at 2..3 (plus small noise off e0). One basis:
    the first component is e0 and every token of a gets a colour on one side of every token of b; each image's own
    basis (pca_rgb) would stretch both over the full range instead."""
    from dense.features import pca_rgb_shared

    gen = torch.Generator().manual_seed(0)

    def along_e0(lo: float) -> FeatureMap:
        t = torch.linspace(lo, lo + 1, 16)
        tokens = 0.01 * torch.randn(16, 8, generator=gen)  # [N, D]
        tokens[:, 0] = t
        return FeatureMap(tokens=tokens.reshape(4, 4, 8), image_hw=(32, 32), resized_hw=(32, 32), patch_size=8)

    a, b = along_e0(0.0), along_e0(2.0)
    ra, rb = (rgb[..., 0].astype(int) for rgb in pca_rgb_shared([a, b]))  # the first component, [4, 4] each
    assert ra.max() < rb.min() or rb.max() < ra.min()  # one side each: colours compare across the images
    own_a, own_b = a.pca_rgb()[..., 0].astype(int), b.pca_rgb()[..., 0].astype(int)
    assert own_a.max() - own_a.min() > 200 and own_b.max() - own_b.min() > 200  # each image stretched alone
    np.testing.assert_array_equal(pca_rgb_shared([a])[0], a.pca_rgb())  # one image: pca_rgb is the shared rule


def test_save_load_round_trip(tmp_path):
    fmap = FeatureMap(tokens=torch.randn(2, 3, 5), image_hw=(20, 31), resized_hw=(16, 24), patch_size=8,
                      layers=(0, 3), encoder_spec={"name": "x", "max_patches": 6}, aligned=torch.randn(2, 3, 7))
    path = fmap.save(tmp_path / "sub" / "a.safetensors")
    back = FeatureMap.load(path)
    assert torch.equal(back.tokens, fmap.tokens) and torch.equal(back.aligned, fmap.aligned)
    assert (back.image_hw, back.resized_hw, back.patch_size, back.layers, back.encoder_spec) == (
        fmap.image_hw, fmap.resized_hw, fmap.patch_size, fmap.layers, fmap.encoder_spec)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_load_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="bad.safetensors"):
        FeatureMap.load(bad)
    with pytest.raises(FileNotFoundError):
        FeatureMap.load(tmp_path / "missing.safetensors")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="grid"):
        FeatureMap(tokens=torch.zeros(3, 3, 2), image_hw=(10, 10), resized_hw=(28, 42), patch_size=14)


def test_layer_tokens_slices_concatenated_layers():
    D = 4
    tokens = torch.randn(2, 3, 3 * D)
    fmap = FeatureMap(tokens=tokens, image_hw=(16, 24), resized_hw=(16, 24), patch_size=8, layers=(0, 2, 5),
                      encoder_spec={"num_layers": 6})
    torch.testing.assert_close(fmap.layer_tokens([2]), tokens[..., D:2 * D])
    torch.testing.assert_close(fmap.layer_tokens([-1, 0]), torch.cat([tokens[..., 2 * D:], tokens[..., :D]], -1))
    assert fmap.layer_tokens([0, 2, 5]) is tokens
    with pytest.raises(ValueError, match="holds"):
        fmap.layer_tokens([3])
