"""Closed identity: every path that consumes a FeatureMap refuses another encoder's (aligned tokens included), the
fingerprint covers every file that changes an output, and dense's files are read through one header check.

The two bundled checkpoints have the same architecture (same family, patch size, width and depth), so only their
fingerprints tell them apart: exactly the case a check on shapes alone would miss.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import dense
from dense import heatmap, openvocab, refer
from dense.errors import MismatchError
from dense.features import FeatureMap

QUERIES = ["red circle", "blue square"]


def _image(h: int = 48, w: int = 72) -> np.ndarray:
    rgb = np.full((h, w, 3), 200, np.uint8)
    rgb[8:30, 6:30] = (220, 30, 30)
    rgb[20:44, 40:66] = (30, 40, 210)
    return rgb


@pytest.fixture(scope="module")
def tiny():
    return dense.load_encoder("shapes-tiny", dtype="fp32")


@pytest.fixture(scope="module")
def v2():
    return dense.load_encoder("shapes-tiny-v2", dtype="fp32")


@pytest.fixture(scope="module")
def fmaps(tiny):
    """shapes-tiny's FeatureMaps: plain (both blocks), with stored aligned tokens, and tiled."""
    from dense.tiling import extract_tiled

    rgb = _image()
    plain = tiny.extract(rgb, layers=(0, 1))
    aligned = heatmap.with_aligned(tiny, rgb, "map-value-mlp")
    tiled = extract_tiled(tiny, rgb, scale=2, max_patches=16)
    return {"plain": plain, "aligned": aligned, "tiled": tiled, "rgb": rgb}


def _refused(fn, match: str = "made by another encoder"):
    with pytest.raises(ValueError, match=match) as e:
        fn()
    assert "\n" not in str(e.value), "one line"
    return e.value


def test_the_issue_case_stored_aligned_tokens_are_checked_first(tiny, v2, fmaps):
    """patch_scores(v2, shapes-tiny's FeatureMap with aligned tokens) used to return the stored scores unchecked."""
    fmap = fmaps["aligned"]
    assert fmap.aligned is not None and fmap.encoder_spec["aligned_method"] == "map-value-mlp"
    err = _refused(lambda: heatmap.patch_scores(v2, fmap, ["red circle"], method="map-value-mlp"))
    assert isinstance(err, MismatchError) and "fingerprint" in str(err)
    assert heatmap.patch_scores(tiny, fmap, ["red circle"], method="map-value-mlp").shape == (1, *fmap.grid_hw)


@pytest.mark.parametrize("kind", ["plain", "aligned", "tiled"])
def test_every_heatmap_and_openvocab_path_refuses_another_encoders_featuremap(tiny, v2, fmaps, kind):
    fmap, rgb = fmaps[kind], fmaps["rgb"]
    m = "map-value-mlp"  # shapes-tiny's calibrated method needs two blocks, which the tiled map does not hold
    paths = {
        "aligned_tokens": lambda enc: heatmap.aligned_tokens(enc, fmap, m),
        "with_aligned": lambda enc: heatmap.with_aligned(enc, fmap, m),
        "patch_scores": lambda enc: heatmap.patch_scores(enc, fmap, QUERIES, method=m),
        "image_scores": lambda enc: heatmap.image_scores(enc, fmap, QUERIES, method=m),
        "image_scores windows": lambda enc: heatmap.image_scores(enc, rgb, QUERIES, features=fmap, method=m,
                                                                  windows=2),
        "check_featuremap": lambda enc: heatmap.check_featuremap(enc, fmap, (-1,), "test"),
        "embed_images": lambda enc: openvocab.embed_images(enc, fmap),
        "classify": lambda enc: openvocab.classify(enc, fmap, QUERIES),
        "segment": lambda enc: openvocab.segment(enc, fmap, QUERIES, method=m),
        "segment batch": lambda enc: openvocab.segment(enc, [fmap], QUERIES, method=m),
        "Localizer": lambda enc: refer.Localizer(enc, fmap, method=m).localize("red circle"),
        "localize": lambda enc: dense.localize(enc, fmap, "red circle", method=m),
        "region_embeddings": lambda enc: refer.region_embeddings(enc, fmap, [[0, 0, 20, 20]]),
    }
    for name, call in paths.items():
        err = _refused(lambda call=call: call(v2))
        assert isinstance(err, MismatchError), name
        call(tiny)  # the encoder that made it reads it: the refusal is about identity, nothing else


def test_probes_upsamplers_heads_and_pooling_refuse_another_encoders_featuremap(tiny, v2, fmaps):
    from dense.head import with_pooled
    from dense.upsample import Upsampler, upsample_maps
    from probes import LinearProbe
    from probes.refer_head import ReferHead

    fmap, rgb = fmaps["plain"], fmaps["rgb"]
    D = v2.hidden_size
    spec = v2.spec(layers=(0, 1))
    probe = LinearProbe(2 * D, ["bg", "fg"], encoder_spec=spec).eval()
    up = Upsampler(D, encoder_spec=spec, layers=[1]).eval()
    head = ReferHead(2 * D, D, hidden=8, encoder_spec=spec).eval()
    for name, call in {"probe predict": lambda: probe.predict(fmap),
                       "probe + upsampler": lambda: probe.predict(replace(fmap, encoder_spec=spec), image=rgb,
                                                                  upsampler=Upsampler(D, encoder_spec=tiny.spec())),
                       "upsampler": lambda: up.to_image(fmap, rgb),
                       "upsample_maps": lambda: upsample_maps(torch.zeros(2, *fmap.grid_hw), fmap, image=rgb,
                                                              upsampler=up),
                       "refer head": lambda: head.predict(fmap, torch.zeros(D))}.items():
        err = _refused(call, "trained on another encoder.*fingerprint")
        assert isinstance(err, MismatchError), name
    _refused(lambda: with_pooled(v2, fmap))
    # the same heads accept their own encoder's features, in another dtype or budget too
    own = replace(fmap, encoder_spec=dict(spec, dtype="bfloat16", max_patches=16))
    assert probe.predict(own).shape == fmap.image_hw
    assert up.to_image(own, rgb).shape == (D, *fmap.image_hw)
    assert head.predict(own, torch.zeros(D))["box_xyxy"].shape == (1, 4)


def test_probe_training_refuses_val_features_of_another_encoder_before_training(tiny, v2, fmaps):
    from probes import ProbeConfig, Sample, train_probes

    fmap = fmaps["plain"]
    label = np.zeros(fmap.image_hw, np.int64)
    train = [Sample(f"t{k}", fmap, label) for k in range(2)]
    val = [Sample("v0", replace(fmap, encoder_spec=v2.spec(layers=(0, 1))), label)]
    with pytest.raises(MismatchError, match="val sample v0.*fingerprint"):
        train_probes(train, val, ["bg", "fg"], ProbeConfig(epochs=10**6), progress=False)  # raised before any epoch


def test_cache_reads_refuse_another_encoders_entries(tiny, v2, fmaps, tmp_path):
    from dense.cache import FeatureCache
    from probes.stream import cached_samples

    fmap = fmaps["plain"]
    cache = FeatureCache.for_encoder(tmp_path, v2, layers=(0, 1))
    cache.init()
    _refused(lambda: cache.put("a", fmap), "refusing entry 'a'")
    fmap.save(cache.path("a"))  # another encoder's file, dropped into this cache's folder
    _refused(lambda: cached_samples(cache, ["a"], [lambda: np.zeros(fmap.image_hw, np.int64)]), "made by")
    assert cache.get("a") is None and not cache.path("a").exists()  # refused, reported and removed
    own = FeatureCache.for_encoder(tmp_path, tiny, layers=(0, 1))
    own.put("a", fmap)
    assert own.get("a") is not None


def test_featuremaps_built_by_hand_make_no_claim(v2):
    """Tokens built by hand (no encoder spec) are read as given: the known-answer tests depend on it."""
    gh, gw = 3, 4
    fmap = FeatureMap(torch.randn(gh, gw, v2.hidden_size), (gh * 8, gw * 8), (gh * 8, gw * 8), 8)
    assert heatmap.patch_scores(v2, fmap, ["red circle"]).shape == (1, gh, gw)
    aligned = heatmap.with_aligned(v2, fmap)  # carries only aligned_method: still no claim
    assert heatmap.patch_scores(v2, aligned, ["red circle"]).shape == (1, gh, gw)


# ---------------------------------------------------------------------------------------------------------------------
# The fingerprint


def _copy_bundled(name: str, dest: Path) -> Path:
    src = Path(dense.checkpoint.__file__).parent / dense.checkpoint.BUNDLED[name]
    return Path(shutil.copytree(src, dest))


def test_a_changed_tokenizer_is_another_checkpoint_with_fresh_text_embeddings(tmp_path, monkeypatch):
    """A copy of shapes-tiny-v2 whose tokenizer swaps the ids of "red" and "green": another fingerprint, and its
    embedding of "red circle" is computed with the new ids (= the original's "green circle"), not read from the disk
    cache the original filled."""
    from dense import text

    monkeypatch.setenv("DENSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DENSE_TEXT_CACHE", "1")
    orig = dense.load_encoder("shapes-tiny-v2", dtype="fp32")
    red = text.embed_texts(orig, ["red circle"])
    green = text.embed_texts(orig, ["green circle"])
    assert len(list((tmp_path / "home").rglob("*.safetensors"))) == 2  # both on disk now

    copy = _copy_bundled("shapes-tiny-v2", tmp_path / "swapped")
    tok = json.loads((copy / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["red"], vocab["green"] = vocab["green"], vocab["red"]
    (copy / "tokenizer.json").write_text(json.dumps(tok))
    swapped = dense.load_encoder(copy, dtype="fp32")
    assert swapped.fingerprint != orig.fingerprint
    assert text.disk_cache_dir(swapped) != text.disk_cache_dir(orig)
    got = text.embed_texts(swapped, ["red circle"])
    torch.testing.assert_close(got, green, rtol=0, atol=1e-6)
    assert not torch.allclose(got, red, atol=1e-3)
    assert len(list(text.disk_cache_dir(swapped).rglob("*.safetensors"))) == 1  # computed and stored afresh


def test_the_fingerprint_covers_outputs_not_defaults(tmp_path):
    """Preprocessor and tokenizer-config changes change the fingerprint (and the feature cache's folder); a new
    calibration (defaults: thresholds, method) and a training note do not, so no feature is re-extracted."""
    from dense.cache import FeatureCache
    from dense.checkpoint import fingerprint, identity_files

    base = _copy_bundled("shapes-tiny", tmp_path / "base")
    fp = fingerprint(str(base))
    assert {n for n, _ in identity_files(str(base))} == {"model.safetensors", "config.json", "tokenizer.json",
                                                          "tokenizer_config.json", "preprocessor_config.json"}
    assert fingerprint(str(_copy_bundled("shapes-tiny", tmp_path / "same"))) == fp  # same bytes elsewhere

    def changed(name: str, edit) -> str:
        folder = _copy_bundled("shapes-tiny", tmp_path / f"edit-{name}")
        data = json.loads((folder / name).read_text())
        edit(data)
        (folder / name).write_text(json.dumps(data))
        return fingerprint(str(folder))

    assert changed("preprocessor_config.json", lambda d: d.update(image_mean=[0.4, 0.4, 0.4])) != fp
    assert changed("tokenizer_config.json", lambda d: d.update(padding_side="left")) != fp
    assert changed("dense_calibration.json", lambda d: d.update(background=0.123)) == fp
    assert changed("training.json", lambda d: d.update(note="re-measured")) == fp
    extra = _copy_bundled("shapes-tiny", tmp_path / "extra")
    (extra / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))  # a file that was absent
    assert fingerprint(str(extra)) != fp

    recal = _copy_bundled("shapes-tiny", tmp_path / "recal")
    calibration = json.loads((recal / "dense_calibration.json").read_text())
    calibration.update(background=0.3, box_threshold=0.6, method="map-value")  # re-measured thresholds and method
    (recal / "dense_calibration.json").write_text(json.dumps(calibration))
    a, b = dense.load_encoder(base), dense.load_encoder(recal)
    assert (a.calibration.background, b.calibration.background) == (0.4, 0.3)
    assert FeatureCache.for_encoder(tmp_path / "c", a).dir == FeatureCache.for_encoder(tmp_path / "c", b).dir
    calibration.update(max_patches=64)  # a calibrated token budget IS in the features' key, through max_patches
    (recal / "dense_calibration.json").write_text(json.dumps(calibration))
    c = dense.load_encoder(recal)
    assert c.fingerprint == fp and FeatureCache.for_encoder(tmp_path / "c", c).dir != \
        FeatureCache.for_encoder(tmp_path / "c", a).dir


# ---------------------------------------------------------------------------------------------------------------------
# One reader, one writer


def test_one_header_check_for_every_reader(tmp_path, fmaps):
    """probes.stream reads headers through the same format/version check as FeatureMap.load."""
    from safetensors.torch import save_file

    from dense._atomic import read_header, save_tensors
    from probes import LinearProbe
    from probes.stream import CachedSample

    fmap = fmaps["plain"]
    good = fmap.save(tmp_path / "good.safetensors")
    header, shapes = read_header(good, "dense.FeatureMap", 1, "FeatureMap")
    assert header["encoder"] == fmap.encoder_spec and shapes["tokens"] == list(fmap.tokens.shape)
    s = CachedSample.open("good", good, lambda: None)
    torch.testing.assert_close(s.read()[0], fmap.tokens, rtol=0, atol=0)

    future = tmp_path / "future.safetensors"
    save_tensors(future, {"tokens": fmap.tokens}, {"format": "dense.FeatureMap", "version": 99, "image_hw": [1, 1]})
    probe = LinearProbe(4, ["a"], encoder_spec={}).save(tmp_path / "probe.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"tokens": fmap.tokens.contiguous()}, str(foreign))  # a safetensors file without dense's header
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for path, match in ((future, "future.safetensors: unknown FeatureMap format 'dense.FeatureMap' v99"),
                        (probe, "probe.safetensors: unknown FeatureMap format 'dense.LinearProbe' v1"),
                        (foreign, "foreign.safetensors: not a dense FeatureMap file"),
                        (garbage, "garbage.safetensors: not a dense FeatureMap file")):
        for read in (FeatureMap.load, lambda p: CachedSample.open("k", p, lambda: None)):
            _refused(lambda read=read, path=path: read(path), match)


def test_writes_leave_no_temp_file_of_another_writer(tmp_path, fmaps, monkeypatch):
    """Every dense file is serialized in memory and written through one pid-named temp file: a write that fails
    half-way leaves the old file intact and no temp file."""
    import os

    from dense import _atomic

    fmap = fmaps["plain"]
    path = fmap.save(tmp_path / "entry.safetensors")
    before = path.read_bytes()
    real_fsync = os.fsync
    monkeypatch.setattr(_atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError, match="No space"):
        replace(fmap, tokens=fmap.tokens + 1).save(path)
    monkeypatch.setattr(_atomic.os, "fsync", real_fsync)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["entry.safetensors"]
