"""Grid choice, image reading and the pixel <-> patch geometry."""

import io
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dense.errors import ImageError
from dense.preprocess import (
    PixelConfig,
    aspect_error,
    choose_grid,
    grid_cell_xyxy,
    grid_to_pixel_xy,
    load_image,
    pixel_to_grid,
    to_pixels,
)

SIZES = [(384, 384), (480, 640), (333, 517), (1000, 50), (50, 1000), (1, 1), (5, 5), (7, 3000), (4000, 3000),
         (20, 400), (13, 1)]


@pytest.mark.parametrize("budget", [729, 256, 1024, 64])
@pytest.mark.parametrize("patch", [14, 16])
def test_grid_within_budget_and_aspect(budget, patch):
    rng = np.random.default_rng(budget + patch)
    sizes = SIZES + [tuple(rng.integers(1, 3000, size=2)) for _ in range(50)]
    for H, W in sizes:
        gh, gw = choose_grid((H, W), patch, budget)
        assert gh >= 1 and gw >= 1
        assert gh * gw <= budget, (H, W)
        m = min(gh, gw)
        if m >= 2:  # ceil rounding: aspect error below one patch on the short side
            assert aspect_error((H, W), (gh, gw)) < math.log(m / (m - 1)) + 1e-9, (H, W, gh, gw)
        # the largest such grid: the next scale step adds a row and/or a column, which would break the budget
        assert (gh + 1) * (gw + 1) > budget, (H, W, gh, gw)


def test_grid_examples():
    assert choose_grid((384, 384), 14, 729) == (27, 27)
    assert choose_grid((1, 1), 14, 729) == (27, 27)  # tiny images fill the budget too
    assert choose_grid((480, 640), 14, 729) == (23, 31)
    gh, gw = choose_grid((1000, 50), 14, 729)  # 20:1
    assert gh / gw == pytest.approx(20, rel=0.2) and gh * gw <= 729
    assert choose_grid((1, 100000), 14, 729) == (1, 729)
    with pytest.raises(ValueError):
        choose_grid((0, 10), 14, 729)


def test_grid_matches_naflex_processor_rule():
    from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches as naflex

    for H, W in [(480, 640), (333, 517), (1000, 50), (640, 480), (224, 224)]:
        h, w = naflex(H, W, 16, 256)
        assert choose_grid((H, W), 16, 256) == (h // 16, w // 16)


def test_restated_naflex_rule_equals_transformers():
    """dense restates transformers' size search (importing it costs ~3 s); both must agree everywhere."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches as naflex

    from dense.preprocess import _naflex_size

    rng = np.random.default_rng(0)
    for _ in range(300):
        H, W = (int(v) for v in rng.integers(1, 5000, size=2))
        p = int(rng.choice([8, 14, 16]))
        budget = int(rng.integers(1, 2000))
        assert _naflex_size(H, W, p, budget) == naflex(H, W, p, budget), (H, W, p, budget)


@pytest.mark.parametrize("image_hw", [(333, 517), (1000, 50), (50, 1000), (480, 640), (97, 97)])
def test_planted_feature_maps_to_its_patch_and_back(image_hw):
    """A bright dot in one cell of the original image lands in that patch after resizing, and maps back to it."""
    H, W = image_hw
    p = 14
    gh, gw = choose_grid((H, W), p, 729)
    resized_hw = (gh * p, gw * p)
    cfg = PixelConfig(patch_size=p, max_patches=729)
    rng = np.random.default_rng(0)
    for _ in range(5):
        i, j = int(rng.integers(gh)), int(rng.integers(gw))
        x0, y0, x1, y1 = grid_cell_xyxy((i, j), (H, W), resized_hw, p)
        cx, cy = grid_to_pixel_xy((i, j), (H, W), resized_hw, p)
        assert x0 < cx < x1 and y0 < cy < y1
        img = np.zeros((H, W, 3), np.uint8)
        # fill the central half of the cell (at least one pixel)
        xa, xb = int(np.floor(x0 + (x1 - x0) / 4)), int(np.ceil(x1 - (x1 - x0) / 4))
        ya, yb = int(np.floor(y0 + (y1 - y0) / 4)), int(np.ceil(y1 - (y1 - y0) / 4))
        img[ya:yb, xa:xb] = 255
        px = to_pixels(img, (gh, gw), cfg)  # [3, gh*p, gw*p]
        per_patch = px.mean(0).reshape(gh, p, gw, p).mean(dim=(1, 3))  # [gh, gw]
        assert divmod(int(per_patch.argmax()), gw) == (i, j)
        assert tuple(pixel_to_grid((cx, cy), (H, W), resized_hw, p)) == (i, j)
        assert tuple(pixel_to_grid((x0 + 1e-6, y0 + 1e-6), (H, W), resized_hw, p)) == (i, j)
        assert tuple(pixel_to_grid((x1 - 1e-6, y1 - 1e-6), (H, W), resized_hw, p)) == (i, j)


def test_geometry_is_vectorized_and_clipped():
    ij = np.array([[0, 0], [2, 3]])
    xy = grid_to_pixel_xy(ij, (100, 200), (28, 56), 14)
    assert xy.shape == (2, 2)
    np.testing.assert_allclose(xy[0], [7 * 200 / 56, 7 * 100 / 28])
    np.testing.assert_array_equal(pixel_to_grid(xy, (100, 200), (28, 56), 14), [[0, 0], [1, 3]])
    np.testing.assert_array_equal(pixel_to_grid((-5, 1e9), (100, 200), (28, 56), 14), [1, 0])


def test_pixels_match_transformers_processor():
    """Same resize filter and normalization as SiglipImageProcessor when the grid is its square."""
    from transformers import SiglipImageProcessorPil

    img = np.random.default_rng(1).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    for resample in (2, 3):
        proc = SiglipImageProcessorPil(size={"height": 64, "width": 64}, resample=resample, image_mean=[0.5] * 3,
                                       image_std=[0.5] * 3)
        ref = proc(images=Image.fromarray(img), return_tensors="pt")["pixel_values"][0]
        ours = to_pixels(img, (8, 8), PixelConfig(patch_size=8, max_patches=64, resample=resample))
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() < 1e-5


# --- reading images ----------------------------------------------------------------------------------------------


def test_modes_convert_correctly():
    rgb = load_image(Image.new("L", (4, 3), 77))
    assert rgb.shape == (3, 4, 3) and (rgb == 77).all()
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))  # fully transparent red -> white background
    assert (load_image(rgba) == 255).all()
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 255))
    assert (load_image(rgba)[0, 0] == [10, 20, 30]).all()
    la = Image.new("LA", (2, 2), (100, 255))
    assert (load_image(la) == 100).all()
    pal = Image.new("RGB", (2, 2), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert tuple(load_image(pal)[0, 0]) == (0, 128, 255)
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))  # no ink = white
    assert (load_image(cmyk) == 255).all()
    deep = Image.fromarray(np.full((2, 2), 65535, np.uint16))  # 16-bit grey, full scale -> 255, not clipped garbage
    assert deep.mode.startswith("I")
    assert (load_image(deep) == 255).all()
    half = Image.fromarray(np.full((2, 2), 32768, np.uint16))
    assert abs(int(load_image(half)[0, 0, 0]) - 128) <= 1
    assert load_image(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    rgb = load_image(path)
    assert rgb.shape == (40, 20, 3)  # displayed upright: portrait
    assert rgb[2, 10, 2] > 200  # the blue band is now at the top


def _png_with_huge_header(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[8 + 8: 8 + 8 + 13]  # after signature, length and type
    ihdr[0:8] = struct.pack(">II", w, h)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def _bad_files(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(good)
    trunc = tmp_path / "truncated.jpg"
    trunc.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_with_huge_header(30000, 30000))
    return good, [tmp_path / "missing.jpg", empty, trunc, text, bomb]


def test_bad_files_raise_one_clear_error(tmp_path):
    good, bad = _bad_files(tmp_path)
    assert load_image(good).shape == (48, 64, 3)
    for path in bad:
        with pytest.raises(ImageError) as e:
            load_image(path)
        assert str(path) in str(e.value)
    with pytest.raises(ImageError):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError):
        load_image(np.zeros((0, 4, 3), np.uint8))


def test_every_command_sees_the_same_images_of_a_folder(tmp_path):
    """One rule for a user's folder (dense.preprocess.image_files): `dense extract` (folder_items), `demo --images`
    and `dense explore` read the same images: recursive, hidden files and folders left out, links that leave the
    folder left out, other extensions left out."""
    from PIL import Image

    from dense.extract import folder_items
    from dense.preprocess import image_files

    root, outside = tmp_path / "photos", tmp_path / "outside"
    for rel in ("a.png", "sub/b.JPG", ".hidden.png", ".cache/c.png", "notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 3)).save(root / rel, format="PNG") if rel != "notes.txt" else (root / rel).write_text("x")
    outside.mkdir()
    Image.new("RGB", (4, 3)).save(outside / "secret.png")
    (root / "link.png").symlink_to(outside / "secret.png")  # leaves the folder
    (root / "inside.png").symlink_to(root / "a.png")  # stays inside
    want = ["a.png", "inside.png", "sub/b.JPG"]
    assert list(image_files(root)) == want
    assert [k for k, _ in folder_items(root)] == want
    assert all(p.resolve().is_relative_to(root.resolve()) for _, p in folder_items(root))
