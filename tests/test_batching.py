"""Mixed-grid batches, the worker input pipeline and dtype="auto": tokens equal the one-image path and transformers."""

import numpy as np
import pytest
import torch
from conftest import random_rgb
from PIL import Image

import dense
from dense.batching import padding_waste, plan_batches, prepared_stream
from dense.device import native_bf16, resolve_dtype
from dense.errors import ImageError
from dense.preprocess import choose_grid, patchify, to_pixels

# Aspect ratios of a COCO-like mix, including a 1:2.5 panorama and its portrait.
SIZES = [(64, 64), (48, 64), (64, 48), (43, 64), (38, 50), (36, 64), (26, 64), (64, 26), (90, 90), (20, 120)]


@pytest.fixture(scope="module")
def encoders():
    return {"tiny-siglip": dense.random_encoder("tiny-siglip", dtype="fp32"),
            "tiny-siglip2": dense.random_encoder("tiny-siglip2", dtype="fp32"),
            "shapes-tiny": dense.load_encoder("shapes-tiny", dtype="fp32")}


def _pixels(enc, img):
    return to_pixels(img, choose_grid(img.shape[:2], enc.patch_size, enc.pixels.max_patches), enc.pixels)


@pytest.mark.parametrize("name", ["tiny-siglip", "tiny-siglip2", "shapes-tiny"])
def test_mixed_grid_batch_equals_one_image_path(encoders, name, one_thread):
    enc = encoders[name]
    images = [random_rgb(h, w, seed=k) for k, (h, w) in enumerate(SIZES)]
    pixels = [_pixels(enc, img) for img in images]
    assert len({tuple(px.shape) for px in pixels}) >= 6  # really mixed grids
    batch = enc.forward_batch(pixels, layers=(0, -1))  # one padded batch
    for img, tokens in zip(images, batch, strict=True):
        one = enc.extract(img, layers=(0, -1))  # batch of one, no padding
        gh, gw = one.grid_hw
        assert tokens.shape == (gh * gw, 2 * enc.hidden_size)
        torch.testing.assert_close(tokens.reshape(gh, gw, -1), one.tokens, atol=1e-5, rtol=0)


def test_siglip_mixed_batch_matches_transformers_hidden_states(encoders, one_thread):
    """Block outputs of a padded batch equal transformers' own forward, image by image (hidden_states, last)."""
    enc = encoders["tiny-siglip"]
    images = [random_rgb(h, w, seed=k) for k, (h, w) in enumerate(SIZES[:5])]
    pixels = [_pixels(enc, img) for img in images]
    batch = enc.forward_batch(pixels, layers=(0, 1))
    for px, tokens in zip(pixels, batch, strict=True):
        with torch.no_grad():
            ref = enc.vision(pixel_values=px[None], interpolate_pos_encoding=True, output_hidden_states=True)
        torch.testing.assert_close(tokens[:, :32], ref.hidden_states[1][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(tokens[:, 32:], ref.last_hidden_state[0], atol=1e-5, rtol=0)


def test_siglip2_mixed_batch_matches_transformers_padded_forward(encoders, one_thread):
    """NaFlex takes padded batches natively: our batch equals Siglip2VisionModel fed the same padded batch."""
    enc = encoders["tiny-siglip2"]
    images = [random_rgb(h, w, seed=k) for k, (h, w) in enumerate(SIZES[:4])]
    pixels = [_pixels(enc, img) for img in images]
    grids = [(px.shape[1] // 8, px.shape[2] // 8) for px in pixels]
    N = max(gh * gw for gh, gw in grids)
    patches = torch.zeros(len(pixels), N, 8 * 8 * 3)  # [B, N, p*p*3]
    mask = torch.zeros(len(pixels), N, dtype=torch.int32)  # [B, N]
    for b, px in enumerate(pixels):
        n = grids[b][0] * grids[b][1]
        patches[b, :n] = patchify(px[None], 8)[0]
        mask[b, :n] = 1
    with torch.no_grad():
        ref = enc.vision(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=torch.tensor(grids))
    for b, tokens in enumerate(enc.forward_batch(pixels)):
        torch.testing.assert_close(tokens, ref.last_hidden_state[b, : tokens.shape[0]], atol=1e-5, rtol=0)


def test_pooling_head_is_not_run_and_late_blocks_are_skipped(encoders, one_thread):
    enc = encoders["tiny-siglip"]
    calls = []
    hooks = [enc.vision.head.register_forward_hook(lambda *a: calls.append("head")),
             enc.vision.encoder.layers[1].register_forward_hook(lambda *a: calls.append("block1"))]
    try:
        enc.extract(random_rgb(40, 60), layers=(0,))
        assert calls == []  # block 0 only: block 1, post_layernorm and the head never ran
        list(enc.extract_many([random_rgb(40, 60), random_rgb(60, 40)], progress=False))
        assert calls == ["block1"]  # one batch for both grids; still no head
    finally:
        for h in hooks:
            h.remove()


def test_extract_many_mixes_grids_in_batches_in_input_order(encoders, one_thread):
    enc = encoders["tiny-siglip"]
    images = [random_rgb(h, w, seed=k) for k, (h, w) in enumerate(SIZES)]
    sizes = []
    original = enc.forward_batch

    def spy(pixels, layers=(-1,)):
        sizes.append(len(pixels))
        return original(pixels, layers)

    enc.forward_batch = spy
    try:
        many = list(enc.extract_many(images, batch_size=4, progress=False))
    finally:
        del enc.forward_batch
    assert sizes == [4, 4, 2]  # 10 images of 8 grids: full batches of mixed grids
    for img, fmap in zip(images, many, strict=True):
        one = enc.extract(img)
        assert fmap.image_hw == img.shape[:2] and fmap.grid_hw == one.grid_hw
        torch.testing.assert_close(fmap.tokens, one.tokens, atol=1e-5, rtol=0)


def test_workers_keep_input_order_and_errors(encoders, tmp_path, caplog, one_thread):
    enc = encoders["tiny-siglip2"]
    paths = []
    for k, (h, w) in enumerate(SIZES[:6]):
        paths.append(tmp_path / f"img{k}.png")
        Image.fromarray(random_rgb(h, w, seed=k)).save(paths[-1])
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    inputs = paths[:3] + [bad] + paths[3:]
    # a generator: the DataLoader's sampler pulls it lazily
    out = list(enc.extract_many((p for p in inputs), num_workers=2, batch_size=3, on_error="skip", progress=False))
    assert len(out) == len(inputs) and out[3] is None
    assert "bad.jpg" in caplog.text
    for path, fmap in zip(inputs, out, strict=True):
        if path != bad:
            torch.testing.assert_close(fmap.tokens, enc.extract(path).tokens, atol=1e-5, rtol=0)
    with pytest.raises(ImageError, match="bad.jpg"):
        list(enc.extract_many(inputs, num_workers=1, progress=False))


def test_prepared_stream_in_order_with_workers(encoders):
    enc = encoders["tiny-siglip"]
    images = [random_rgb(h, w, seed=k) for k, (h, w) in enumerate(SIZES)]
    items = list(prepared_stream(images, enc.pixels, 64, num_workers=2))
    assert [it.index for it in items] == list(range(len(images)))
    for img, it in zip(images, items, strict=True):
        assert it.image_hw == img.shape[:2]
        torch.testing.assert_close(it.pixels, _pixels(enc, img), atol=0, rtol=0)


def test_plan_batches_sorts_by_tokens_and_pads_little():
    rng = np.random.default_rng(0)
    grids = [choose_grid(SIZES[k], 14, 729) for k in rng.integers(0, len(SIZES), 64)]
    tokens = [gh * gw for gh, gw in grids]
    batches = plan_batches(tokens, 8, keys=grids)
    assert sorted(k for b in batches for k in b) == list(range(64))
    assert all(len(b) <= 8 for b in batches)
    naive = [list(range(s, s + 8)) for s in range(0, 64, 8)]
    assert padding_waste(tokens, batches) < padding_waste(tokens, naive)
    assert padding_waste(tokens, batches) < 0.02
    assert padding_waste([5, 5], [[0, 1]]) == 0.0 and padding_waste([4, 2], [[0, 1]]) == pytest.approx(0.25)


def test_dtype_auto_and_errors():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == resolve_dtype(None, cpu)
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if native_bf16(cpu) else torch.float32)
    assert resolve_dtype("bf16", cpu) == torch.bfloat16 and resolve_dtype(torch.float32, cpu) == torch.float32
    with pytest.raises(ValueError, match="dtype float16"):  # refused everywhere (tests/test_head_placement.py)
        resolve_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="dtype float16"):
        dense.random_encoder("tiny-siglip", dtype=torch.float16)
    with pytest.raises(ValueError, match="'auto'"):
        resolve_dtype("half-ish", cpu)
    enc = dense.random_encoder("tiny-siglip")  # "auto"
    name = str(enc.dtype).removeprefix("torch.")
    assert enc.spec()["dtype"] == name and f"dtype={name})" in repr(enc)
    assert next(enc.vision.parameters()).dtype == enc.dtype
