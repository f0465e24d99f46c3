"""The encoder: parity with transformers, batching, layers, dtypes, strict loading, offline hub ids, bad inputs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_checkpoint, random_rgb
from PIL import Image

import dense
from dense.errors import CheckpointError, ImageError
from dense.preprocess import choose_grid, patchify, to_pixels


@pytest.mark.parametrize("image_hw", [(64, 64), (100, 100), (333, 517), (40, 300)])
def test_siglip_parity_with_transformers(tiny_siglip_dir, tiny_encoder, image_hw):
    from transformers import SiglipVisionModel

    ref_model = SiglipVisionModel.from_pretrained(tiny_siglip_dir).eval()
    img = random_rgb(*image_hw, seed=image_hw[0])
    fmap = tiny_encoder.extract(img)
    gh, gw = fmap.grid_hw
    assert gh * gw <= 64
    pixels = to_pixels(img, (gh, gw), tiny_encoder.pixels)[None]
    with torch.no_grad():
        ref = ref_model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state  # [1, N, D]
    ref = ref.reshape(gh, gw, -1)  # [1, N, D] -> [gh, gw, D]
    assert fmap.tokens.shape == ref.shape
    torch.testing.assert_close(fmap.tokens, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("image_hw", [(64, 64), (333, 517), (300, 40)])
def test_siglip2_parity_with_transformers_processor_and_model(tiny_siglip2_dir, tiny_encoder2, image_hw):
    """End to end: transformers' own NaFlex processor + Siglip2VisionModel give the same tokens."""
    from transformers import Siglip2ImageProcessorPil, Siglip2VisionModel

    ref_model = Siglip2VisionModel.from_pretrained(tiny_siglip2_dir).eval()
    proc = Siglip2ImageProcessorPil.from_pretrained(tiny_siglip2_dir)
    img = random_rgb(*image_hw, seed=3)
    inputs = proc(images=Image.fromarray(img), max_num_patches=64, return_tensors="pt")
    with torch.no_grad():
        ref = ref_model(**inputs).last_hidden_state[0]  # [64, D], padded
    gh, gw = (int(v) for v in inputs["spatial_shapes"][0])
    fmap = tiny_encoder2.extract(img)
    assert fmap.grid_hw == (gh, gw)
    torch.testing.assert_close(fmap.tokens, ref[: gh * gw].reshape(gh, gw, -1), atol=1e-5, rtol=0)


def test_patchify_matches_naflex_processor():
    from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

    x = torch.randn(2, 3, 16, 24)
    ours = patchify(x, 8)
    for b in range(2):
        np.testing.assert_allclose(ours[b].numpy(), convert_image_to_patches(x[b].numpy(), 8), atol=0)


def test_layers_are_block_outputs(tiny_siglip_dir, tiny_encoder):
    from transformers import SiglipVisionModel

    ref_model = SiglipVisionModel.from_pretrained(tiny_siglip_dir).eval()
    img = random_rgb(50, 90)
    fmap = tiny_encoder.extract(img, layers=(0, -1))
    gh, gw = fmap.grid_hw
    assert fmap.layers == (0, 1) and fmap.dim == 64
    with torch.no_grad():
        out = ref_model(pixel_values=to_pixels(img, (gh, gw), tiny_encoder.pixels)[None], interpolate_pos_encoding=True,
                        output_hidden_states=True)
    torch.testing.assert_close(fmap.tokens[..., :32], out.hidden_states[1][0].reshape(gh, gw, 32), atol=1e-5, rtol=0)
    torch.testing.assert_close(fmap.tokens[..., 32:], out.last_hidden_state[0].reshape(gh, gw, 32), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="out of range"):
        tiny_encoder.extract(img, layers=(5,))


def test_extract_many_batches_by_grid_in_input_order(tiny_encoder):
    sizes = [(64, 64), (333, 517), (64, 64), (40, 300), (333, 517), (90, 90), (64, 64)]
    images = [random_rgb(h, w, seed=k) for k, (h, w) in enumerate(sizes)]
    calls = []
    original = tiny_encoder.forward_batch

    def spy(pixels, layers=(-1,)):
        calls.append(len(pixels))
        return original(pixels, layers)

    tiny_encoder.forward_batch = spy
    try:
        many = list(tiny_encoder.extract_many(images, batch_size=4, progress=False))
    finally:
        del tiny_encoder.forward_batch
    assert calls == [4, 3]  # mixed grids share padded batches of batch_size
    for img, fmap in zip(images, many, strict=True):
        one = tiny_encoder.extract(img)
        assert fmap.image_hw == img.shape[:2] and fmap.grid_hw == one.grid_hw
        torch.testing.assert_close(fmap.tokens, one.tokens, atol=1e-5, rtol=0)


def test_extract_many_skips_bad_files_and_reports(tiny_encoder, tmp_path, caplog):
    good = tmp_path / "good.png"
    Image.fromarray(random_rgb(30, 50)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    out = list(tiny_encoder.extract_many([good, bad, good], progress=False, on_error="skip"))
    assert out[1] is None and out[0] is not None and out[2] is not None
    assert "bad.jpg" in caplog.text
    with pytest.raises(ImageError, match="bad.jpg"):
        list(tiny_encoder.extract_many([good, bad], progress=False))


@pytest.mark.parametrize("spec", ["tiny-siglip", "tiny-siglip2"])
def test_contract_shapes_finite_dtypes(spec):
    img = random_rgb(70, 130)
    bf16 = dense.random_encoder(spec, dtype="bf16")  # built in bf16: its own random draw
    fp32 = dense.random_encoder(spec, dtype="fp32")
    fp32.vision.load_state_dict({k: v.float() for k, v in bf16.vision.state_dict().items()})  # the same weights
    assert next(bf16.vision.parameters()).dtype == torch.bfloat16
    a, b = fp32.extract(img), bf16.extract(img)
    gh, gw = choose_grid((70, 130), 8, fp32.pixels.max_patches)
    assert a.tokens.shape == b.tokens.shape == (gh, gw, 32)
    assert a.tokens.dtype == b.tokens.dtype == torch.float32
    assert torch.isfinite(a.tokens).all() and torch.isfinite(b.tokens).all()
    cos = torch.nn.functional.cosine_similarity(a.tokens.flatten(0, 1), b.tokens.flatten(0, 1), dim=-1)
    assert cos.min() > 0.98
    assert a.encoder_spec["dtype"] == "float32" and b.encoder_spec["dtype"] == "bfloat16"


def test_random_so400m_architecture_is_exact():
    cfg = dense.checkpoint.RANDOM_SPECS["so400m-patch14-384"]["vision"]
    from transformers import SiglipVisionConfig, SiglipVisionModel

    with torch.device("meta"):
        model = SiglipVisionModel(SiglipVisionConfig(**cfg))
    assert sum(p.numel() for p in model.parameters()) == 428_225_600  # So400m vision tower, as published


def test_strict_loading_rejects_extra_and_missing_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = build_tiny_checkpoint(tmp_path / "ckpt", "siglip")
    weights = load_file(folder / "model.safetensors")
    weights["vision_model.surprise.weight"] = torch.zeros(2)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="surprise"):
        dense.load_encoder(folder)
    del weights["vision_model.surprise.weight"]
    del weights["vision_model.post_layernorm.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="post_layernorm"):
        dense.load_encoder(folder)


def test_vision_only_folder_loads_and_text_is_refused(tmp_path, tiny_encoder):
    tiny_encoder.vision.save_pretrained(tmp_path / "v")
    enc = dense.load_encoder(tmp_path / "v", dtype="fp32")
    img = random_rgb(64, 64)
    torch.testing.assert_close(enc.extract(img).tokens, tiny_encoder.extract(img).tokens)
    with pytest.raises(CheckpointError, match="vision-only"):
        enc.text_parts()


def test_text_side_loads_lazily_and_strictly(tiny_siglip_dir):
    enc = dense.load_encoder(tiny_siglip_dir)
    assert enc._text is None
    parts = enc.text_parts()
    assert parts.logit_scale.item() == pytest.approx(2.0) and parts.logit_bias.item() == pytest.approx(-3.0)
    assert parts.max_length == 8 and parts.tokenizer is not None


def test_missing_folder_and_bad_names(tmp_path):
    with pytest.raises(CheckpointError):
        dense.load_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        dense.load_encoder(tmp_path / "empty")


@pytest.mark.parametrize("offline", [True, False])
def test_uncached_hub_id_fails_at_once_without_network(tmp_path, monkeypatch, offline):
    """Offline, or with an endpoint that never answers: one connection attempt at most, then the error; transformers'
    retry loop (tens of seconds per file) is never entered."""
    from huggingface_hub import constants

    import dense.checkpoint as checkpoint_module

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    attempts = []

    def never_answers(address, timeout=None):
        attempts.append(address)
        raise TimeoutError("timed out")  # what a black-holed endpoint gives after `timeout`

    monkeypatch.setattr(checkpoint_module.socket, "create_connection", never_answers)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained",
                        lambda *a, **k: pytest.fail("transformers was asked to download"))
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache") as e:
        dense.load_encoder("google/siglip2-so400m-patch14-384")
    assert len(attempts) == (0 if offline else 1)
    assert "local folder" in str(e.value) and "hf download" in str(e.value)


def test_identity_is_the_weights_not_the_name(tmp_path):
    """"shapes-tiny", its folder and its folder with a trailing slash are one encoder; retrained weights in the same
    folder are another."""
    import shutil

    from safetensors.torch import load_file, save_file

    from dense.cache import FeatureCache

    folder = Path(dense.checkpoint.__file__).parent / dense.checkpoint.BUNDLED["shapes-tiny"]
    names = ["shapes-tiny", str(folder), str(folder) + "/"]
    encs = [dense.load_encoder(n) for n in names]
    assert len({e.fingerprint for e in encs}) == 1
    assert len({FeatureCache.for_encoder(tmp_path, e).dir for e in encs}) == 1
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert dense.load_encoder(copy).fingerprint == encs[0].fingerprint  # same bytes elsewhere: same encoder
    weights = load_file(copy / "model.safetensors")
    key = next(k for k in weights if k.startswith("vision_model.") and weights[k].ndim == 2)
    weights[key] = weights[key] + 0.01  # "retrained": same shapes, same header, other values
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    retrained = dense.load_encoder(copy)
    assert retrained.fingerprint != encs[0].fingerprint
    assert FeatureCache.for_encoder(tmp_path, retrained).dir != FeatureCache.for_encoder(tmp_path, encs[0]).dir


def test_calibration_belongs_to_the_checkpoint(tmp_path, tiny_siglip_dir):
    """The bundled model carries its measured calibration; a checkpoint without one gets the neutral defaults; a
    file or dict overrides; unknown keys are an error naming the file."""
    import json

    from dense.checkpoint import Calibration
    from dense.errors import CheckpointError

    bundled = dense.load_encoder("shapes-tiny")
    on_disk = json.loads(Path(bundled.calibration.source).read_text())
    assert bundled.calibration.source.endswith("dense_calibration.json")
    assert bundled.calibration.box_threshold == on_disk["box_threshold"] and len(bundled.calibration.templates) > 1
    assert bundled.pixels.max_patches == on_disk["max_patches"]  # the measured token budget is the default
    neutral = dense.load_encoder(tiny_siglip_dir).calibration
    assert neutral == Calibration() and neutral.source == "neutral defaults"
    assert neutral.templates == ("{}",) and neutral.background == 0.5
    custom = dense.load_encoder(tiny_siglip_dir, calibration={"method": "map-value", "max_patches": 36})
    assert custom.calibration.method == "map-value" and custom.pixels.max_patches == 36
    assert custom.extract(np.zeros((30, 30, 3), np.uint8)).grid_hw == (6, 6)
    bad = tmp_path / "cal.json"
    bad.write_text('{"methd": "raw"}')
    with pytest.raises(CheckpointError, match="cal.json.*methd"):
        dense.load_encoder(tiny_siglip_dir, calibration=bad)
    # the choices made on the toy live in the bundled calibrations, not in library constants
    for name in ("shapes-tiny", "shapes-tiny-v2"):
        cal = dense.load_encoder(name).calibration
        assert (cal.guided_radius_cells, cal.guided_subsample, cal.distractor_cues) == (1.3, 2, ("norm",))
    assert (neutral.guided_radius_cells, neutral.guided_subsample) == (1.0, 1)
    assert neutral.distractor_cues == ("norm", "isolation")
    bad.write_text('{"guided_subsample": 0}')
    with pytest.raises(CheckpointError, match="cal.json.*guided_subsample"):
        dense.load_encoder(tiny_siglip_dir, calibration=bad)
