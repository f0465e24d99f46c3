"""Guided filter (known answers, parity with a direct reference), learned upsampler (contract, training signal, save /
load identity), tiled extraction (geometry of a planted pattern, scale 1 = plain extraction), boundary metrics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dense.encoder import Encoder
from dense.errors import MismatchError
from dense.features import FeatureMap
from dense.labels import IGNORE
from dense.metrics import BoundaryMeter, boundary_counts, boundary_figures, mask_boundary, trimap_mask
from dense.preprocess import PixelConfig, to_pixels
from dense.tiling import extract_tiled, window_starts
from dense.upsample import Upsampler, UpsamplerConfig, box_filter, guided_filter, guided_upsample, train_upsampler

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------------------------
# Guided filter


def reference_guided_filter(I: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s algorithm 1 written directly: explicit clipped windows, a 3 x 3 solve per pixel (float64)."""
    _, H, W = I.shape
    C = p.shape[0]

    def box(x):  # [..., H, W] -> mean over the clipped window
        out = np.empty_like(x)
        for y in range(H):
            for x_ in range(W):
                out[..., y, x_] = x[..., max(y - r, 0):y + r + 1, max(x_ - r, 0):x_ + r + 1].mean((-2, -1))
        return out

    a = np.empty((3, C, H, W))
    b = np.empty((C, H, W))
    mI, mp = box(I), box(p)
    mII = box(I[:, None] * I[None])  # [3, 3, H, W]
    mIp = box(I[:, None] * p[None])  # [3, C, H, W]
    for y in range(H):
        for x_ in range(W):
            sigma = mII[:, :, y, x_] - np.outer(mI[:, y, x_], mI[:, y, x_]) + eps * np.eye(3)
            cov = mIp[:, :, y, x_] - np.outer(mI[:, y, x_], mp[:, y, x_])
            a[:, :, y, x_] = np.linalg.solve(sigma, cov)
            b[:, y, x_] = mp[:, y, x_] - a[:, :, y, x_].T @ mI[:, y, x_]
    return (box(a) * I[:, None]).sum(0) + box(b)


def test_box_filter_is_the_clipped_window_mean():
    x = torch.rand(1, 2, 9, 13, dtype=torch.float64)
    r = 3
    got = box_filter(x, r)
    for y, x_ in [(0, 0), (4, 6), (8, 12), (2, 11)]:
        want = x[0, :, max(y - r, 0):y + r + 1, max(x_ - r, 0):x_ + r + 1].mean((-2, -1))
        torch.testing.assert_close(got[0, :, y, x_], want)


def test_guided_filter_matches_direct_reference():
    rng = np.random.default_rng(0)
    I = rng.random((3, 12, 15))
    p = rng.random((2, 12, 15))
    for r, eps in [(1, 1e-3), (3, 1e-2)]:
        got = guided_filter(torch.from_numpy(I), torch.from_numpy(p), r, eps).double().numpy()
        np.testing.assert_allclose(got, reference_guided_filter(I, p, r, eps), atol=1e-4)


def test_guided_filter_known_answers():
    rng = np.random.default_rng(1)
    I = torch.from_numpy(rng.random((3, 20, 24)).astype(np.float32))
    # a map that is a linear function of the guide is reproduced exactly (as eps -> 0)
    lin = 0.3 * I[0:1] - 0.5 * I[2:3] + 0.2 + 0.1 * I[1:2]
    torch.testing.assert_close(guided_filter(I, lin, 4, 1e-9), lin, atol=1e-3, rtol=0)
    # a constant guide has no covariance: the filter is a box of a box of the map
    flat = torch.full((3, 20, 24), 0.4)
    p = torch.rand(2, 20, 24)
    torch.testing.assert_close(guided_filter(flat, p, 2, 1e-3), box_filter(box_filter(p[None], 2), 2)[0], atol=1e-5,
                               rtol=0)


def two_colour_scene(H=48, W=64, cut=27):
    """Left of column ``cut`` red, right of it blue; a probability map on a 6 x 8 grid that is soft at the edge."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :cut] = (220, 30, 30)
    img[:, cut:] = (30, 30, 220)
    grid = torch.zeros(2, 6, 8)
    col = (torch.arange(8) + 0.5) * W / 8  # patch-centre columns in pixels
    grid[0] = torch.sigmoid((cut + 4 - col) / 6.0)[None]  # [6, 8]: blurred over ~2 patches, its 0.5 4 px off the edge
    grid[1] = 1 - grid[0]
    truth = np.zeros((H, W), np.int64)
    truth[:, cut:] = 1
    return img, grid, truth


def test_guided_upsample_snaps_to_the_colour_edge_and_stays_a_distribution():
    img, grid, truth = two_colour_scene()
    bil = torch.nn.functional.interpolate(grid[None], size=(48, 64), mode="bilinear", align_corners=False)[0]
    assert (bil.argmax(0).numpy() != truth).sum() > 0  # bilinear puts the edge at ~31
    for sub in (1, 2):
        out = guided_upsample(grid, img, radius=8, eps=1e-4, subsample=sub)
        assert out.shape == (2, 48, 64)
        torch.testing.assert_close(out.sum(0), torch.ones(48, 64))
        assert out.min() >= 0
        assert (out.argmax(0).numpy() != truth).sum() == 0
    raw = guided_upsample(grid, img, radius=8, renormalize=False)
    assert raw.shape == (2, 48, 64)


def test_guided_upsample_bad_inputs_name_the_input():
    img, grid, _ = two_colour_scene()
    with pytest.raises(ValueError, match="image"):
        guided_upsample(grid, img.astype(np.float32))
    with pytest.raises(ValueError, match="x"):
        guided_upsample(grid[0], img)
    with pytest.raises(ValueError, match="radius"):
        guided_upsample(grid, img, radius=0)


# ---------------------------------------------------------------------------------------------------------------------
# Learned upsampler


def _fmap(tokens, image_hw, p=8, spec=None):
    gh, gw = tokens.shape[:2]
    spec = spec or dict(fingerprint="fake", family="siglip", patch_size=p, hidden_size=tokens.shape[-1], num_layers=2,
                        max_patches=gh * gw, layers=[1], dtype="float32")
    return FeatureMap(tokens, image_hw, (gh * p, gw * p), p, (1,), spec)


def test_upsampler_contract_convex_weights_and_linear_commute():
    torch.manual_seed(0)
    fmap = _fmap(torch.randn(5, 7, 12), (37, 61))  # the image is not a multiple of the grid
    img = np.random.default_rng(0).integers(0, 256, (37, 61, 3), dtype=np.uint8)
    up = Upsampler(12, UpsamplerConfig(guide_dim=8, key_dim=8), encoder_spec=fmap.encoder_spec)
    w, index = up.weights(fmap, img)
    assert w.shape == index.shape == (9, 37 * 61)
    torch.testing.assert_close(w.sum(0), torch.ones(37 * 61))
    tokens = up.to_image(fmap, img)  # [D, H, W]
    assert tokens.shape == (12, 37, 61) and torch.isfinite(tokens).all()
    # a linear head on upsampled tokens == the upsampled head output (the weights are convex)
    head = nn.Conv2d(12, 3, 1)
    with torch.no_grad():
        grid_logits = head(fmap.tokens.permute(2, 0, 1)[None])[0]  # [3, 5, 7]
        torch.testing.assert_close(up.to_image(fmap, img, values=grid_logits), head(tokens[None])[0], atol=1e-4,
                                   rtol=1e-4)
        # a constant map stays constant
        torch.testing.assert_close(up.to_image(fmap, img, values=torch.full((1, 5, 7), 2.5)), torch.full((1, 37, 61),
                                   2.5))
    # every parameter gets a gradient through the training path
    w, index = up.weights(fmap, img, (10, 14))
    up.mix(fmap.tokens.permute(2, 0, 1), w, index, (10, 14)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in up.parameters())
    with pytest.raises(ValueError, match="values"):
        up.to_image(fmap, img, values=torch.zeros(3, 4, 4))


def test_upsampler_geometry_neighbours_centre_on_the_covering_patch():
    from dense.upsample.learned import _neighbours

    # 4 x 6 grid of 8 px patches, original image 1.5 x the resized one
    index, valid, offset = _neighbours((48, 72), (32, 48), 8, (48, 72), 3)
    centre = 4  # (di, dj) = (0, 0) in the 3 x 3 order
    # pixel (row 20, col 40): centre (40.5, 20.5) / 1.5 -> resized (27, 13.67) -> patch (1, 3)
    k = 20 * 72 + 40
    assert index[centre, k] == 1 * 6 + 3
    # its offset from that patch's centre (resized (28, 12) = original (42, 18)) in patches: ((20.5 - 18) / 12, ...)
    np.testing.assert_allclose(offset[centre, k].numpy(), [(20.5 - 18) / 12, (40.5 - 42) / 12], atol=1e-6)
    assert not valid[0, 0] and valid[centre].all()  # the top-left pixel has no patch above-left


@pytest.mark.slow
def test_train_upsampler_learns_and_save_load_checks_identity(tiny_encoder, tmp_path):
    from tests.conftest import random_rgb

    imgs = []
    for k in range(6):  # coloured blocks: content the encoder's finer grid sees differently
        img = random_rgb(40, 56, seed=k) // 8
        img[8 + k:30, 10:30 + k] = (200, 40, 40)
        imgs.append(img)
    cfg = UpsamplerConfig(guide_dim=8, key_dim=8, epochs=4, images_per_step=2, lr=1e-2, max_patches=24)
    up = train_upsampler(tiny_encoder, imgs, cfg, progress=False)
    assert len(up.meta["loss"]) == 4 and up.meta["loss"][-1] < up.meta["loss"][0]
    again = train_upsampler(tiny_encoder, imgs, cfg, progress=False)  # seeded: the same weights
    for name, t in up.state_dict().items():
        torch.testing.assert_close(t, again.state_dict()[name], rtol=0, atol=0)
    path = up.save(tmp_path / "up.safetensors")
    back = Upsampler.load(path, encoder=tiny_encoder)
    fmap = tiny_encoder.extract(imgs[0], max_patches=24)
    torch.testing.assert_close(back.to_image(fmap, imgs[0]), up.to_image(fmap, imgs[0]))
    other = dict(tiny_encoder.spec(), hidden_size=64, fingerprint="another")
    with pytest.raises(MismatchError, match="up.safetensors.*trained on another encoder"):
        Upsampler.load(path, encoder_spec=other)
    with pytest.raises(MismatchError):
        back.to_image(_fmap(fmap.tokens, fmap.image_hw, spec=dict(fmap.encoder_spec, fingerprint="another")), imgs[0])
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        Upsampler.load(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------------------------------------------------------------
# Tiled extraction


class PatchMeanEncoder(Encoder):
    """An encoder whose token is the mean colour of its patch (channels 0-2) and a constant (channel 3): no context
    at all, so any window sees exactly what the full image would."""

    def forward_batch(self, pixels, layers=(-1,)):
        out = []
        for px in pixels:  # [3, h, w] each
            x = torch.nn.functional.avg_pool2d(px[None], self.patch_size)[0]  # [3, gh, gw]
            x = torch.cat([x, torch.ones_like(x[:1])], 0)  # [4, gh, gw]
            out.append(x.flatten(1).T)  # [4, gh*gw] -> [gh*gw, 4]
        return out


def patch_mean_encoder(p=8, budget=12):
    tower = nn.Module()
    tower.config = SimpleNamespace(hidden_size=4, num_hidden_layers=1, _attn_implementation="eager")
    return PatchMeanEncoder(tower, PixelConfig(patch_size=p, max_patches=budget), name="patch-mean", family="siglip",
                            source=None, full_config=None, device=torch.device("cpu"), dtype=torch.float32,
                            fingerprint="patch-mean")


def test_window_starts():
    """One rule for tiles (overlap=) and sliding windows (n=): known answers, first at 0, last at the end."""
    assert window_starts(8, 8, overlap=2) == [0]
    assert window_starts(8, 4, overlap=0) == [0, 4]
    assert window_starts(10, 5, overlap=2) == [0, 2, 5]  # ceil(8 / 3) = 3 windows, stride at most 3
    assert window_starts(48, 32, n=2) == [0, 16]  # image_scores(windows=2): crops of 2/3, overlapping by half
    assert window_starts(80, 40, n=3) == [0, 20, 40]
    assert window_starts(7, 3, n=4) == [0, 1, 3, 4]
    assert window_starts(5, 5, n=3) == [0]  # a window spanning the axis is needed once
    with pytest.raises(ValueError, match="overlap"):
        window_starts(10, 5, overlap=5)
    with pytest.raises(ValueError, match="exactly one"):
        window_starts(10, 5)
    with pytest.raises(ValueError, match="window 11"):
        window_starts(10, 11, n=2)


def test_tiled_equals_the_finer_grid_and_a_planted_square_lands_where_the_geometry_says():
    enc = patch_mean_encoder()
    H, W = 45, 70  # not multiples of the patch: the per-axis scales differ
    img = np.zeros((H, W, 3), np.uint8)
    img[20:30, 41:55] = 255
    rgb, (gh, gw) = enc.prepare(img)
    for blend in ("centre", "mean"):
        fm = extract_tiled(enc, img, scale=2, overlap=1, blend=blend)
        assert fm.grid_hw == (2 * gh, 2 * gw) and fm.resized_hw == (2 * gh * 8, 2 * gw * 8)
        assert fm.encoder_spec["tiling"]["scale"] == 2 and fm.image_hw == (H, W)
        # no context: the stitched map equals one pass over the whole finer grid
        want = enc.forward_pixels(to_pixels(rgb, (2 * gh, 2 * gw), enc.pixels)[None])[0]
        torch.testing.assert_close(fm.tokens, want, atol=1e-6, rtol=0)
    # the patch that covers the square's centre is white; one far from it is black
    bright = fm.tokens[..., 0] > 0.9  # [gh', gw']
    i, j = fm.pixel_to_grid((48.0, 25.0))
    assert bright[i, j]
    i, j = fm.pixel_to_grid((5.0, 5.0))
    assert fm.tokens[i, j, 0] < -0.9
    # every bright patch's centre maps back inside (or within one patch of) the square
    centres = fm.grid_to_pixel_xy(np.argwhere(bright.numpy()))  # [n, 2] (x, y)
    pitch = fm.grid_to_pixel_xy((1, 1)) - fm.grid_to_pixel_xy((0, 0))
    assert (centres[:, 0] > 41 - pitch[0] / 2).all() and (centres[:, 0] < 55 + pitch[0] / 2).all()
    assert (centres[:, 1] > 20 - pitch[1] / 2).all() and (centres[:, 1] < 30 + pitch[1] / 2).all()


def test_tiled_scale_one_is_the_plain_extraction(tiny_encoder):
    from tests.conftest import random_rgb

    img = random_rgb(50, 90, seed=3)
    plain = tiny_encoder.extract(img, layers=(0, -1))
    tiled = extract_tiled(tiny_encoder, img, scale=1, layers=(0, -1))
    torch.testing.assert_close(tiled.tokens, plain.tokens, rtol=0, atol=0)
    assert (tiled.grid_hw, tiled.resized_hw, tiled.layers, tiled.encoder_spec) == (plain.grid_hw, plain.resized_hw,
                                                                              plain.layers, plain.encoder_spec)
    two = extract_tiled(tiny_encoder, img, scale=2)
    assert two.grid_hw == (2 * plain.grid_hw[0], 2 * plain.grid_hw[1]) and torch.isfinite(two.tokens).all()
    with pytest.raises(ValueError, match="scale"):
        extract_tiled(tiny_encoder, img, scale=0)


# ---------------------------------------------------------------------------------------------------------------------
# Boundary metrics


def test_boundary_f_of_a_shifted_square_by_construction():
    gt = np.zeros((50, 50), np.uint8)
    gt[10:30, 10:30] = 1
    pred = np.zeros_like(gt)
    pred[10:30, 13:33] = 1  # shifted 3 px right
    assert mask_boundary(gt == 1).sum() == 76  # 20 x 20 square: 4 * 20 - 4 pixels
    c = boundary_counts(pred, gt, 2, tolerance_px=0)
    # tolerance 0: only the top and bottom rows' overlap (columns 13..29, 17 px each) coincide: 34 of 76 both ways
    np.testing.assert_array_equal(c[1], [34, 76, 34, 76])
    # background: its boundary is the 4-connected ring just outside each square (80 px), same 34 in common
    np.testing.assert_array_equal(c[0], [34, 80, 34, 80])
    f = boundary_figures(c, ["bg", "sq"])
    assert f["bF/sq"] == pytest.approx(34 / 76) and f["bF/bg"] == pytest.approx(34 / 80)
    assert f["bF"] == pytest.approx((34 / 76 + 34 / 80) / 2)
    assert boundary_figures(boundary_counts(pred, gt, 2, tolerance_px=3))["bF"] == 1.0  # within the shift
    assert boundary_figures(boundary_counts(gt, gt, 2, tolerance_px=0))["bF"] == 1.0
    # a missed object: class 1 scores 0 (recall 0); an ignored region counts for nothing
    miss = boundary_figures(boundary_counts(np.zeros_like(gt), gt, 2))
    assert miss["bF/1"] == 0.0
    ign = gt.astype(np.int8)
    ign[:, 20:] = IGNORE
    c_ign = boundary_counts(gt, ign, 2, tolerance_px=0)
    assert c_ign[1, 3] == mask_boundary(ign == 1).sum()  # the cut edge at column 19 is a boundary of class 1


def test_trimap_and_meter():
    gt = np.zeros((40, 40), np.uint8)
    gt[10:30, 10:30] = 1
    band = trimap_mask(gt, 2)
    # the change lies between rows 9 and 10; both are edge pixels, the band reaches 2 px beyond each
    assert band[7:13, 20].all() and not band[6, 20] and not band[13, 20]
    meter = BoundaryMeter(["bg", "sq"], tolerance_px=1, trimap_px=2)
    meter.update(gt, gt)
    figs = meter.figures()
    assert figs["bF"] == 1.0 and figs["trimap_mIoU"] == 1.0
    pred = np.zeros_like(gt)  # everything background: the band's square pixels are all wrong
    meter = BoundaryMeter(["bg", "sq"], tolerance_px=1, trimap_px=2)
    meter.update(pred, gt)
    f = meter.figures()
    n_sq, n_bg = (band & (gt == 1)).sum(), (band & (gt == 0)).sum()
    assert f["trimap_mIoU"] == pytest.approx((n_bg / (n_bg + n_sq) + 0.0) / 2)
