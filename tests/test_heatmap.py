"""dense.heatmap: methods with known answers by construction (hand-set MAP heads), the closed-form leave-one-out against
brute force, calibration, geometry, segmentation and the openvocab evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_rgb

import dense
from dense import head as maphead
from dense import heatmap, openvocab
from dense.errors import ImageError
from dense.features import FeatureMap


@pytest.fixture()
def enc(tiny_siglip_dir):
    """A private encoder (tests here overwrite its head's weights)."""
    return dense.load_encoder(tiny_siglip_dir, dtype="fp32")


def _fmap(tokens: torch.Tensor, p: int = 8, image_hw=None, layers=(-1,)) -> FeatureMap:
    gh, gw, _ = tokens.shape
    return FeatureMap(tokens=tokens, image_hw=image_hw or (gh * p, gw * p), resized_hw=(gh * p, gw * p), patch_size=p,
                      layers=layers)


def _last(enc, tokens):
    """FeatureMap whose only layer is the last block."""
    return _fmap(tokens, layers=(enc.num_layers - 1,))


def _set_head(enc, *, value: torch.Tensor | None = None, zero_mlp: bool = False, uniform: bool = False):
    head = enc.vision.head
    D = enc.hidden_size
    with torch.no_grad():
        if value is not None:  # value projection := value, output projection := identity, no biases
            head.attention.in_proj_weight[2 * D:] = value
            head.attention.in_proj_bias[2 * D:] = 0
            head.attention.out_proj.weight.copy_(torch.eye(D))
            head.attention.out_proj.bias.zero_()
        if zero_mlp:
            head.mlp.fc2.weight.zero_()
            head.mlp.fc2.bias.zero_()
        if uniform:  # query = 0 -> every token gets the same attention weight
            head.attention.in_proj_weight[:D] = 0
            head.attention.in_proj_bias[:D] = 0


def test_map_value_finds_the_patch_planted_through_the_value_projection(enc):
    D = enc.hidden_size
    g = torch.Generator().manual_seed(0)
    P = torch.eye(D)[torch.randperm(D, generator=g)]  # a permutation: value space != token space
    _set_head(enc, value=P, zero_mlp=True)
    t = F.normalize(torch.randn(D, generator=g), dim=0)  # the "text" embedding
    tokens = torch.randn(5, 7, D, generator=g) * 0.3  # [gh, gw, D]
    tokens[3, 4] = P.T @ t  # P @ token = t: this patch's value IS the query
    fmap = _last(enc, tokens)
    for method in ("map-value", "map-value-mlp"):
        s = heatmap.patch_scores(enc, fmap, t[None], method=method)  # [1, 5, 7]
        assert tuple(s.shape) == (1, 5, 7)
        assert np.unravel_index(int(s[0].argmax()), (5, 7)) == (3, 4), method
        torch.testing.assert_close(heatmap.aligned_tokens(enc, fmap, method)[3, 4], t, atol=1e-5, rtol=1e-5)
    raw = heatmap.aligned_tokens(enc, fmap, "raw")
    assert F.cosine_similarity(raw[3, 4], t, dim=0) < 0.5  # the raw token is not the text direction


def test_scores_use_the_checkpoint_calibration(enc):
    D = enc.hidden_size
    _set_head(enc, value=torch.eye(D), zero_mlp=True)
    t = F.normalize(torch.randn(D), dim=0)
    tokens = torch.randn(2, 3, D)
    tokens[0, 0] = 5 * t  # cos = 1
    s = heatmap.patch_scores(enc, _last(enc, tokens), t[None], method="map-value")
    # conftest saved logit_scale = 2, logit_bias = -3: p = sigmoid(e^2 * cos - 3)
    assert s[0, 0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(np.exp(2.0) - 3.0)).item(), abs=1e-6)
    cos = F.normalize(tokens, dim=-1) @ t  # [2, 3]
    torch.testing.assert_close(s[0], torch.sigmoid(np.exp(2.0) * cos - 3.0), atol=1e-6, rtol=1e-5)


def test_leave_one_out_closed_form_matches_rerunning_the_head(enc):
    head = enc.vision.head
    x = torch.randn(12, enc.hidden_size)  # [N, D]
    N = x.shape[0]
    with torch.no_grad():
        e = maphead.pooled(head, x)  # [E]
        brute = []
        for n in range(N):
            mask = torch.zeros(1, N, dtype=torch.bool)
            mask[0, n] = True  # patch n left out of the attention
            y = head.attention(head.probe, x[None], x[None], key_padding_mask=mask)[0][0, 0]  # [D]
            brute.append(y + head.mlp(head.layernorm(y)))
        e_minus = torch.stack(brute)  # [N, E]
        expected = F.normalize(e[None] - e_minus, dim=-1)
    got = heatmap.aligned_tokens(enc, _last(enc, x.reshape(3, 4, -1)), "leave-one-out").reshape(N, -1)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_pooled_equals_transformers_pooler_output(enc):
    rgb = random_rgb(40, 72, seed=4)
    fmap = enc.extract(rgb)
    from dense.preprocess import to_pixels

    with torch.no_grad():
        ref = enc.vision(pixel_values=to_pixels(rgb, fmap.grid_hw, enc.pixels)[None],
                         interpolate_pos_encoding=True).pooler_output  # [1, E]
    torch.testing.assert_close(openvocab.embed_images(enc, fmap), F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-4)


def test_uniform_attention_reduces_saliency_methods_to_map_value(enc):
    _set_head(enc, uniform=True)
    tokens = torch.randn(4, 5, enc.hidden_size)
    fmap = _last(enc, tokens)
    mv_mlp = heatmap.aligned_tokens(enc, fmap, "map-value-mlp")
    torch.testing.assert_close(heatmap.aligned_tokens(enc, fmap, "attn-value"), mv_mlp, atol=1e-5, rtol=1e-4)
    _set_head(enc, zero_mlp=True)  # linear head + uniform attention: leave-one-out is the centred map-value
    parts = maphead.HeadParts.of(enc.vision)
    mv = heatmap.get_method("map-value").fn(parts, tokens.reshape(20, -1), None).detach()  # [N, E]
    centred = F.normalize(mv - mv.mean(0), dim=-1).reshape(4, 5, -1)
    torch.testing.assert_close(heatmap.aligned_tokens(enc, fmap, "leave-one-out"), centred, atol=1e-4, rtol=1e-4)


def test_clear_methods_need_and_use_the_last_block_input(enc):
    D, n = enc.hidden_size, enc.num_layers
    prev, last = torch.randn(3, 4, D), torch.randn(3, 4, D)
    with pytest.raises(ValueError, match=r"layers=\(-2, -1\)"):
        heatmap.aligned_tokens(enc, _last(enc, last), "clear-map-value")
    fmap = _fmap(torch.cat([prev, last], dim=-1), layers=(n - 2, n - 1))  # [gh, gw, 2D]
    # the last-layer methods read the right slice of a two-layer FeatureMap
    torch.testing.assert_close(heatmap.aligned_tokens(enc, fmap, "map-value"),
                               heatmap.aligned_tokens(enc, _last(enc, last), "map-value"))
    block = enc.vision.encoder.layers[-1]
    with torch.no_grad():  # q = k = 0: self-self attention is uniform, every patch gets 2 * mean(v)
        for proj in (block.self_attn.q_proj, block.self_attn.k_proj):
            proj.weight.zero_()
            proj.bias.zero_()
        v = block.self_attn.v_proj(block.layer_norm1(prev.reshape(12, D)))  # [N, D]
        y = enc.vision.post_layernorm(block.self_attn.out_proj(2 * v.mean(0)))
        parts = maphead.HeadParts.of(enc.vision)
        expected = F.normalize(heatmap.get_method("map-value").fn(parts, y[None], None), dim=-1)[0]
    z = heatmap.aligned_tokens(enc, fmap, "clear-map-value")  # [3, 4, E]
    torch.testing.assert_close(z, expected.expand_as(z), atol=1e-5, rtol=1e-4)


def test_unknown_method_and_with_aligned_reuse(tiny_encoder):
    with pytest.raises(ValueError, match="unknown heatmap method"):
        heatmap.patch_scores(tiny_encoder, random_rgb(32, 32), "cat", method="cls")
    fmap = heatmap.with_aligned(tiny_encoder, random_rgb(32, 48, seed=5), "leave-one-out")
    assert fmap.aligned is not None and fmap.encoder_spec["aligned_method"] == "leave-one-out"
    torch.testing.assert_close(heatmap.patch_scores(tiny_encoder, fmap, "red star", method="leave-one-out"),
                               heatmap.patch_scores(tiny_encoder, heatmap.as_featuremap(tiny_encoder, fmap),
                                                    "red star", method="leave-one-out"))
    # another method ignores the stored tokens
    assert not torch.allclose(heatmap.aligned_tokens(tiny_encoder, fmap, "raw"), fmap.aligned)


def test_upsample_puts_patch_values_at_patch_centres():
    scores = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)  # [1, gh, gw]
    fmap = _fmap(torch.zeros(3, 4, 2), p=8, image_hw=(60, 100))
    up = heatmap.to_image(scores, fmap)
    assert tuple(up.shape) == (1, 60, 100)
    for i, j in [(0, 0), (1, 2), (2, 3)]:
        x, y = fmap.grid_to_pixel_xy((i, j))  # the patch centre in original pixels
        assert up[0, int(y), int(x)].item() == pytest.approx(scores[0, i, j].item(), abs=0.35)
    with pytest.raises(ValueError, match="grid"):
        heatmap.to_image(torch.zeros(1, 4, 3), fmap)


def test_labels_from_scores_background_rules():
    probs = torch.tensor([[[0.9, 0.2], [0.1, 0.3]],
                          [[0.5, 0.6], [0.05, 0.2]],
                          [[0.1, 0.1], [0.5, 0.1]]])  # [3, 2, 2]: 2 classes + 1 background prompt
    assert openvocab.labels_from_scores(probs[:2], 2).tolist() == [[1, 2], [1, 1]]
    assert openvocab.labels_from_scores(probs[:2], 2, 0.25).tolist() == [[1, 2], [0, 1]]
    assert openvocab.labels_from_scores(probs, 2, ["background"]).tolist() == [[1, 2], [0, 1]]


def test_segment_at_original_resolution(tiny_encoder):
    rgb = random_rgb(45, 70, seed=6)
    names = ["red circle", "blue star", "green square"]
    labels = dense.segment(tiny_encoder, rgb, names, background=0)  # threshold 0: every pixel gets its best class
    assert labels.shape == (45, 70) and labels.dtype == np.int32 and labels.min() >= 1 and labels.max() <= 3
    fmap = tiny_encoder.extract(rgb)
    probs = heatmap.to_image(heatmap.patch_scores(tiny_encoder, fmap, names,
                                                  templates=tiny_encoder.calibration.templates), fmap)
    assert (labels == probs.argmax(0).numpy() + 1).all()
    # the default background is the encoder's calibrated threshold (neutral: SigLIP's own 0.5)
    default = dense.segment(tiny_encoder, fmap, names)
    assert tiny_encoder.calibration.background == 0.5
    np.testing.assert_array_equal(default == 0, probs.max(0).values.numpy() < 0.5)
    # a batch gives one label map per image, like classify gives one row per image
    batch = dense.segment(tiny_encoder, [rgb, fmap], names, background=0)
    assert isinstance(batch, list) and len(batch) == 2 and all((b == labels).all() for b in batch)
    all_bg = dense.segment(tiny_encoder, fmap, ["red circle"], background=1.0)
    assert (all_bg == 0).all()
    with_prompt = dense.segment(tiny_encoder, fmap, ["red circle"], background=["background"])
    assert set(np.unique(with_prompt)) <= {0, 1}


def test_openvocab_eval_and_cli(tiny_encoder, tiny_siglip_dir, tmp_path):
    from dense.cli import main
    from dense.datasets import make_shapes
    from dense.eval.data import open_data
    from dense.eval.openvocab import evaluate_openvocab
    from dense.eval.settings import OpenVocabScoring

    make_shapes(tmp_path / "world", 3, seed=1, size_range=(64, 96))
    data = open_data(ann=tmp_path / "world/annotations.json", images=tmp_path / "world/images")
    res = evaluate_openvocab(tiny_encoder, data, scoring=OpenVocabScoring(methods=["raw", "map-value"], background=0.5,
                                                                          thresholds=(0.0, 0.5)))
    assert res.meta["images"] == 3 and res.meta["methods"] == ["raw", "map-value"]
    for m in ("raw", "map-value"):
        f = res.figures
        assert 0 <= f[f"{m}/mIoU"] <= 1 and 0 <= f[f"{m}/pointing"] <= 1 and res.meta["points"][m] >= 3
        assert f[f"{m}/mIoU@thr=0.5"] == pytest.approx(f[f"{m}/mIoU"])  # the sweep at the same threshold agrees
        rows = [r for r in res.rows if r["method"] == m]
        assert len(rows) == 3 and sum(r["hits"] for r in rows) / sum(r["points"] for r in rows) == \
            pytest.approx(f[f"{m}/pointing"])
    out = tmp_path / "res.json"
    rc = main(["eval", "openvocab", "--ann", str(tmp_path / "world/annotations.json"), "--images",
               str(tmp_path / "world/images"), "--model", str(tiny_siglip_dir), "--methods", "raw,clear-map-value",
               "--background", "0", "--json", str(out), "--quiet"])
    assert rc == 0
    saved = json.loads(out.read_text())
    assert saved["meta"]["methods"] == ["raw", "clear-map-value"] and saved["meta"]["images"] == 3
    # an empty split is an error, not a table of NaNs
    assert main(["eval", "openvocab", "--ann", str(tmp_path / "world/annotations.json"), "--images",
                 str(tmp_path / "world/images"), "--model", str(tiny_siglip_dir), "--split", "vall"]) == 1


def test_heatmap_cli_writes_a_png(tiny_siglip_dir, tmp_path):
    from PIL import Image

    from dense.cli import main

    Image.fromarray(random_rgb(40, 60, seed=9)).save(tmp_path / "im.png")
    out = tmp_path / "h.png"
    rc = main(["heatmap", str(tmp_path / "im.png"), "red circle", "blue star", "--model", str(tiny_siglip_dir),
               "--out", str(out)])
    assert rc == 0 and out.stat().st_size > 0
    rc = main(["segment", str(tmp_path / "im.png"), "red circle", "blue star", "--model", str(tiny_siglip_dir),
               "--background", "0.1", "--out", str(tmp_path / "s.png")])
    assert rc == 0 and (tmp_path / "s.png").stat().st_size > 0


def test_clear_methods_on_a_one_block_tower_use_the_patch_embedding():
    enc1 = dense.random_encoder("tiny-siglip", dtype="fp32")
    enc1.vision.encoder.layers = enc1.vision.encoder.layers[:1]  # a 1-block tower, like shapes-tiny
    enc1.vision.config.num_hidden_layers = 1
    rgb = random_rgb(32, 48, seed=3)
    fmap = enc1.extract(rgb)
    assert "clear-map-value" not in heatmap.supported_methods(enc1) and "map-value" in heatmap.supported_methods(enc1)
    with pytest.raises(ValueError, match="only one block"):  # a FeatureMap cannot hold the block's input
        heatmap.aligned_tokens(enc1, fmap, "clear-map-value")
    from dense.preprocess import to_pixels

    with torch.no_grad():
        out = enc1.vision(pixel_values=to_pixels(rgb, fmap.grid_hw, enc1.pixels)[None], interpolate_pos_encoding=True,
                          output_hidden_states=True)
    from dense.batching import embed_patches

    px = to_pixels(rgb, fmap.grid_hw, enc1.pixels)
    emb, lengths = embed_patches(enc1.vision, enc1.family, [px], device=enc1.device, dtype=enc1.dtype)  # [1, N, D]
    assert lengths == [fmap.grid_hw[0] * fmap.grid_hw[1]]
    torch.testing.assert_close(emb[0], out.hidden_states[0][0])  # the input of block 0
    got = heatmap.with_aligned(enc1, rgb, "clear-map-value")
    with torch.no_grad():
        z = heatmap.get_method("clear-map-value").fn(maphead.HeadParts.of(enc1.vision), fmap.tokens.reshape(-1, 32),
                                                     out.hidden_states[0][0])
    torch.testing.assert_close(got.aligned, F.normalize(z, dim=-1).reshape(got.aligned.shape), atol=1e-5, rtol=1e-4)
    s = heatmap.patch_scores(enc1, rgb, F.normalize(torch.randn(2, 32), dim=-1), method="clear-map-value")
    assert tuple(s.shape) == (2, *fmap.grid_hw)


# ---------------------------------------------------------------------------------------------------------------------
# Distractor filtering, PAMR, sliding windows


def test_filtering_replaces_a_planted_outlier_by_its_neighbours_mean():
    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(16, generator=g), dim=0)
    tokens = base + 0.01 * torch.randn(6, 7, 16, generator=g)  # [gh, gw, D]: a smooth field
    tokens[2, 3] = 12 * F.normalize(torch.randn(16, generator=g), dim=0)  # a high-norm "register" token
    mask = heatmap.distractor_mask(tokens)
    assert mask.sum() == 1 and mask[2, 3]
    x, prev, m = heatmap.filter_distractors(tokens, tokens.clone())
    neighbours = torch.cat([tokens[1:4, 2:5].reshape(9, 16)[:4], tokens[1:4, 2:5].reshape(9, 16)[5:]])  # 8 of 3x3
    assert torch.allclose(x[2, 3], neighbours.mean(0), atol=1e-6) and torch.equal(prev, x)
    assert torch.equal(x[~m], tokens[~m])  # nothing else moves
    # no outlier, nothing flagged: the +filter method scores like its base
    assert not heatmap.distractor_mask(base + 0.01 * torch.randn(6, 7, 16, generator=g)).any()
    isolated = tokens.clone()
    isolated[2, 3] = F.normalize(torch.randn(16, generator=g), dim=0)  # ordinary norm, unlike every other token
    assert not heatmap.distractor_mask(isolated, cues=("norm",))[2, 3] and heatmap.distractor_mask(isolated)[2, 3]


def test_filter_methods_replace_a_flagged_distractor_before_scoring(enc):
    """Known answer: a planted high-norm token is flagged, and every '+filter' method scores exactly what its base
    method scores on the tokens with that one replaced by its 8 neighbours' mean. The cues are the calibration's."""
    import dataclasses

    D = enc.hidden_size
    g = torch.Generator().manual_seed(1)
    base = F.normalize(torch.randn(D, generator=g), dim=0)
    tokens = base + 0.2 * torch.randn(6, 7, D, generator=g)  # [gh, gw, D]: a field of similar tokens
    tokens[2, 3] = 12 * F.normalize(torch.randn(D, generator=g), dim=0)  # a high-norm "register" token
    mask = heatmap.distractor_mask(tokens, cues=enc.calibration.distractor_cues)
    assert mask.sum() == 1 and mask[2, 3]
    cleaned = tokens.clone()
    cleaned[2, 3] = (tokens[1:4, 2:5].sum(dim=(0, 1)) - tokens[2, 3]) / 8  # the mean of its 8 neighbours
    fmap, fmap_clean = _last(enc, tokens), _last(enc, cleaned)
    every = {**heatmap.METHODS, **heatmap.EXPERIMENTAL_METHODS}
    bases = [m for m in every if not m.endswith("+filter") and not every[m].needs_prev]
    for m in bases:
        assert every[f"{m}+filter"].filter
        got = heatmap.aligned_tokens(enc, fmap, f"{m}+filter")
        want = heatmap.aligned_tokens(enc, fmap_clean, m)
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (m, float((got - want).abs().max()))
        assert not torch.allclose(got[2, 3], heatmap.aligned_tokens(enc, fmap, m)[2, 3], atol=1e-3), m
    # an ordinary-norm token unlike all others: flagged by the isolation cue only, so '+filter' follows the calibration
    isolated = base + 0.01 * torch.randn(6, 7, D, generator=g)
    isolated[4, 1] = F.normalize(torch.randn(D, generator=g), dim=0)
    fmap = _last(enc, isolated)
    for cues, moved in ((("norm",), False), (("isolation",), True)):
        enc.calibration = dataclasses.replace(enc.calibration, distractor_cues=cues)
        got = heatmap.aligned_tokens(enc, fmap, "map-value+filter")
        assert torch.allclose(got, heatmap.aligned_tokens(enc, fmap, "map-value"), atol=1e-6) != moved, cues


def test_pamr_keeps_constant_maps_and_colour_regions_and_sharpens_blur():
    from dense.refine import pamr

    flat = np.full((20, 24, 3), 90, np.uint8)
    const = torch.full((2, 20, 24), 0.3)
    assert torch.allclose(pamr(flat, const), const)  # constant colour, constant scores: a no-op
    img = np.zeros((20, 24, 3), np.uint8)
    img[:, 12:] = 255  # two colour regions
    region = torch.zeros(2, 20, 24)
    region[0, :, :12], region[1, :, 12:] = 1, 1  # scores that follow the colours (sum to one)
    out = pamr(img, region)
    assert torch.allclose(out, region, atol=1e-4)  # an edge stops the sharing
    assert torch.allclose(out.sum(0), torch.ones(20, 24), atol=1e-5)
    blurred = torch.stack([torch.linspace(1, 0, 24).expand(20, 24), torch.linspace(0, 1, 24).expand(20, 24)])
    sharp = pamr(img, blurred)
    assert (sharp - region).abs().mean() < (blurred - region).abs().mean()


def test_image_scores_options(tiny_encoder):
    rgb = random_rgb(48, 80, seed=7)
    fmap = heatmap.with_aligned(tiny_encoder, rgb, "map-value")
    plain = heatmap.image_scores(tiny_encoder, rgb, ["red circle", "blue star"], method="map-value")
    grid = heatmap.patch_scores(tiny_encoder, fmap, ["red circle", "blue star"], method="map-value")
    assert torch.allclose(plain, heatmap.to_image(grid, fmap))
    # windows: the crops' own scores averaged (known answers in test_contracts.py's sliding-window test)
    def crop_scores(crop):
        f = heatmap.with_aligned(tiny_encoder, crop, "map-value", max_patches=16)
        return heatmap.to_image(heatmap.patch_scores(tiny_encoder, f, ["red circle"], method="map-value"), f)

    torch.testing.assert_close(heatmap.image_scores(tiny_encoder, rgb, ["red circle"], method="map-value",
                                                    max_patches=16, windows=2),
                               heatmap.sliding_window_scores(rgb, 2, crop_scores))
    s = heatmap.image_scores(tiny_encoder, rgb, ["red circle"], method="map-value", max_patches=16, windows=3,
                             refine="pamr")
    assert s.shape == (1, 48, 80) and bool(((s >= 0) & (s <= 1)).all())  # PAMR keeps a convex mix of scores
    with pytest.raises(ValueError, match="pass the image as image="):
        heatmap.image_scores(tiny_encoder, fmap, ["red circle"], windows=2)
    # the pixels from image=, the tokens from features=: the same scores as extracting here
    refined = heatmap.image_scores(tiny_encoder, rgb, ["red circle"], method="map-value", refine="pamr")
    torch.testing.assert_close(heatmap.image_scores(tiny_encoder, rgb, ["red circle"], features=fmap,
                                                    method="map-value", refine="pamr"), refined)
    with pytest.raises(ValueError, match="features="):
        heatmap.image_scores(tiny_encoder, rgb[:24], ["red circle"], features=fmap, refine="pamr")
    with pytest.raises(ValueError, match="refinement"):
        heatmap.image_scores(tiny_encoder, rgb, ["red circle"], refine="crf")
    labels = dense.segment(tiny_encoder, rgb, ["red circle"], windows=2, refine="pamr", max_patches=16)
    assert labels.shape == (48, 80)


def test_paths_work_wherever_an_image_is_read(tiny_encoder, tmp_path):
    """image= may be a path everywhere pixels are read (load_image): segment with refine on a FeatureMap,
    image_scores, pamr, guided_upsample; each gives what the array gives."""
    from PIL import Image

    from dense.refine import pamr
    from dense.upsample import guided_upsample, upsample_maps

    rgb = random_rgb(48, 80, seed=8)
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    fmap = heatmap.with_aligned(tiny_encoder, rgb, "map-value")
    names = ["red circle", "blue star"]
    want = dense.segment(tiny_encoder, rgb, names, method="map-value", refine="pamr")
    np.testing.assert_array_equal(dense.segment(tiny_encoder, path, names, features=fmap, method="map-value",
                                                refine="pamr"), want)
    np.testing.assert_array_equal(dense.segment(tiny_encoder, [str(path)], names, features=[fmap],
                                                method="map-value", refine="pamr")[0], want)
    with pytest.raises(ValueError, match="features"):
        dense.segment(tiny_encoder, [path, path], names, features=[fmap])
    scores = torch.rand(2, 6, 10)
    torch.testing.assert_close(pamr(path, scores), pamr(rgb, scores))
    torch.testing.assert_close(guided_upsample(scores, path, radius=4), guided_upsample(scores, rgb, radius=4))
    torch.testing.assert_close(upsample_maps(scores, fmap, sharpen="guided", image=path),
                               upsample_maps(scores, fmap, sharpen="guided", image=rgb))
    with pytest.raises(ImageError, match="missing.png"):
        pamr(tmp_path / "missing.png", scores)


def test_the_default_and_experimental_registries(tiny_encoder):
    default, experimental = heatmap.METHODS, heatmap.EXPERIMENTAL_METHODS
    assert not set(default) & set(experimental) and len(default) + len(experimental) == 14
    assert {"map-value-mlp", "clear-map-value-mlp"} <= set(default)  # the bundled models' calibrated methods
    for name, m in experimental.items():
        assert m.experimental and heatmap.get_method(name) is m  # still runs when named
    assert not any(m.experimental for m in default.values())
    assert all(m.follows or name == "raw" for name, m in default.items())  # a paper's protocol, or the baseline
    assert set(heatmap.supported_methods(tiny_encoder)) <= set(default)
    assert set(heatmap.supported_methods(tiny_encoder, experimental=True)) >= set(experimental) - {
        m for m in experimental if experimental[m].needs_prev}
    with pytest.raises(ValueError, match="experimental: attn-value"):
        heatmap.get_method("no-such-method")
