"""dense's own rules are pinned to their version constants, so that no rule changes without a bump.

``dense.features.RULES_VERSION`` is in every encoder spec (so in every feature-cache key and every probe's identity);
``dense.text.TEXT_RULES_VERSION`` names the text-embedding cache's folder. A cache keyed by a version serves whatever
was stored under it, so a rule that changes while its version stays would serve stale features or embeddings. These
tests compute reference outputs of each rule on fixed inputs and compare them with the outputs recorded for the
CURRENT version:

- pixels and tokens (``RULES_VERSION``): the grid choice over many sizes, budgets and patch sizes; how an image of
  annotated data is read (EXIF orientations 3, 6 and 8, square and not, against the stored and the upright size;
  from version 2); the resize and normalisation (``to_pixels``, two PIL filters, non-trivial mean/std); NaFlex
  patchifying; the tokens of the bundled ``shapes-tiny-v2`` (both blocks: raw block output and the last block after
  ``post_layernorm``); the aligned tokens of every heatmap method;
- text (``TEXT_RULES_VERSION``): token ids with padding, truncation and EOS for fixed strings on the bundled tokenizer;
  template-averaged text embeddings.

When a test here fails because you changed a rule on purpose: bump the version constant, run
``python tests/test_rules_version.py`` and add what it prints as the new version's entry. Never edit the entry of a
version that was released: caches on users' machines hold outputs made under it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# RULES_VERSION -> reference outputs. Exact rules (integers, PIL's integer resampling, elementwise IEEE maths) are
# pinned by sha256; model outputs by sampled values compared with a tolerance (fp32 sums differ across CPUs by ~1e-6).
PIXEL_RULES = {
    1: {
        "choose_grid": "cf00f602add09009b13dbd1c",
        "to_pixels": "6a5cc8282c6d3bceb491b0cd",
        "patchify": "88fa3f783c58f4f6a8cdc6bf",
        "tokens": [-0.77545, 1.23318, 0.7477, 1.00371, -0.5056, 1.23422, -0.45202, -0.81516],
        "aligned": {
            "raw": [0.00979, -0.00784, -0.0429, 0.12699, 0.17145, -0.07193],
            "map-value": [0.04334, -0.08898, 0.18127, 0.2229, -0.12314, 0.02084],
            "map-value-mlp": [0.02462, 0.00799, 0.09383, 0.29745, -0.17308, 0.0655],
            "attn-value": [-0.02657, 0.04973, 0.22307, 0.06765, -0.05925, 0.06258],
            "leave-one-out": [0.06566, 0.06451, 0.01379, 0.17989, -0.01922, 0.02707],
            "clear-map-value": [0.01452, 0.06881, 0.21059, 0.1901, -0.22535, 0.09961],
            "clear-map-value-mlp": [-0.10977, 0.00966, 0.15333, 0.27363, -0.24985, 0.10895],
            "raw+filter": [0.00979, -0.00784, -0.0429, 0.12699, 0.17145, -0.07193],
            "map-value+filter": [0.04334, -0.08898, 0.18127, 0.2229, -0.12314, 0.02084],
            "map-value-mlp+filter": [0.02462, 0.00799, 0.09383, 0.29745, -0.17308, 0.0655],
            "attn-value+filter": [-0.02657, 0.04973, 0.22307, 0.06765, -0.05925, 0.06258],
            "leave-one-out+filter": [0.06566, 0.06451, 0.01379, 0.17989, -0.01922, 0.02707],
            "clear-map-value+filter": [0.01452, 0.06881, 0.21059, 0.1901, -0.22535, 0.09961],
            "clear-map-value-mlp+filter": [-0.10977, 0.00966, 0.15333, 0.27363, -0.24985, 0.10895],
        },
        "filter": [-0.71909, 0.51232, 1.0, -0.81161, 2, 3, -0.71909, 0.51232, -0.25714, 0.10758, 2, 3, 4, 1],
    },
    2: {  # annotated data read in its annotation's geometry (EXIF orientation)
        "choose_grid": "cf00f602add09009b13dbd1c",
        "annotated": "2528a9291b605c640ea32955",
        "to_pixels": "6a5cc8282c6d3bceb491b0cd",
        "patchify": "88fa3f783c58f4f6a8cdc6bf",
        "tokens": [-0.77545, 1.23318, 0.74769, 1.00371, -0.5056, 1.23422, -0.45202, -0.81516],
        "aligned": {
            "raw": [0.00979, -0.00784, -0.0429, 0.12699, 0.17145, -0.07193],
            "map-value": [0.04334, -0.08898, 0.18127, 0.2229, -0.12314, 0.02084],
            "map-value-mlp": [0.02462, 0.00799, 0.09383, 0.29745, -0.17308, 0.0655],
            "clear-map-value": [0.01452, 0.06881, 0.21059, 0.1901, -0.22535, 0.09961],
            "clear-map-value-mlp": [-0.10977, 0.00966, 0.15333, 0.27363, -0.24985, 0.10895],
            "attn-value": [-0.02657, 0.04973, 0.22307, 0.06765, -0.05925, 0.06258],
            "leave-one-out": [0.06566, 0.0645, 0.0138, 0.1799, -0.01921, 0.02708],
            "raw+filter": [0.00979, -0.00784, -0.0429, 0.12699, 0.17145, -0.07193],
            "map-value+filter": [0.04334, -0.08898, 0.18127, 0.2229, -0.12314, 0.02084],
            "map-value-mlp+filter": [0.02462, 0.00799, 0.09383, 0.29745, -0.17308, 0.0655],
            "attn-value+filter": [-0.02657, 0.04973, 0.22307, 0.06765, -0.05925, 0.06258],
            "leave-one-out+filter": [0.06566, 0.0645, 0.0138, 0.1799, -0.01921, 0.02708],
            "clear-map-value+filter": [0.01452, 0.06881, 0.21059, 0.1901, -0.22535, 0.09961],
            "clear-map-value-mlp+filter": [-0.10977, 0.00966, 0.15333, 0.27363, -0.24985, 0.10895],
        },
        "filter": [-0.71909, 0.51232, 1.0, -0.81161, 2, 3, -0.71909, 0.51232, -0.25714, 0.10758, 2, 3, 4, 1],
    },
}

# TEXT_RULES_VERSION -> reference outputs.
TEXT_RULES = {
    # 1 (dense <= 0.2: lower-case only) is not recorded: 2 added the per-checkpoint canonicalization
    2: {
        "token_ids": "7783f7bb1e3d081affc79a07",
        "embeddings": [-0.08094, 0.04049, -0.01475, -0.07571, 0.0077, 0.0908, 0.01204, -0.01482],
        "canonical": "1750e8eb026db40d68ae69ba",
    },
}

TEMPLATES = ("{}", "a photo of a {}", "a picture of a {}", "an image of a {}", "this is a {}")  # the references'
ATOL = 2e-4  # float outputs of a 2-block fp32 model: far below any change of rule, far above CPU-to-CPU noise

STRINGS = ("Red Circle", "a photo of the big blue star on the left of the small green square", "", "zebra red",
           "  BLUE   star ")
AWKWARD = ("The man, in the RED shirt.", "hot_dog's \u201cbun\u201d", "R2-D2 \t 3.5 kg",  # canonicalized by every rule
           "Cr\u00e8me br\u00fbl\u00e9e!", "\u7ea2\u8272\u7684\u5706\u5708\u3002",
           "\u0627\u0644\u062f\u0627\u0626\u0631\u0629 \u0627\u0644\u062d\u0645\u0631\u0627\u0621",
           "\u041a\u0420\u0410\u0421\u041d\u042b\u0419 \u043a\u0440\u0443\u0433")
SIZES = ((1, 1), (5, 5), (1, 9), (37, 29), (64, 64), (90, 200), (333, 777), (480, 640), (1080, 1920), (5000, 20),
         (20, 5000), (4032, 3024))


def _sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def _image(h: int = 45, w: int = 70) -> np.ndarray:
    """A fixed non-square uint8 image by arithmetic (no RNG whose stream could change): gradients and two blocks."""
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rgb = np.stack([(i * 5 + j * 3) % 256, (i * 11 + 40) % 256, (j * 7 + i * j) % 256], axis=-1).astype(np.uint8)
    rgb[8:24, 10:30] = (220, 30, 30)
    rgb[20:40, 44:64] = (30, 40, 210)
    return rgb


def _sample(t: torch.Tensor, n: int = 8) -> list[float]:
    flat = t.detach().float().reshape(-1)
    idx = np.linspace(0, flat.numel() - 1, n).round().astype(int)
    return [round(float(flat[k]), 5) for k in idx]


@pytest.fixture(scope="module")
def v2():
    import dense

    return dense.load_encoder("shapes-tiny-v2", dtype="fp32")


def annotated_reads() -> str:
    """The pixels :func:`dense.preprocess.load_image` reads for tagged PNGs (lossless: the bytes are the same on every
    machine) given as annotated data whose annotation has the stored or the upright size."""
    import tempfile

    from dense.preprocess import annotated_path, load_image

    reads = []
    with tempfile.TemporaryDirectory() as tmp:
        for hw in ((6, 9), (7, 7)):
            rgb = _image(*hw)
            for tag in (3, 6, 8):
                exif = Image.Exif()
                exif[0x0112] = tag  # Orientation
                path = Path(tmp) / f"{hw[0]}x{hw[1]}-{tag}.png"
                Image.fromarray(rgb).save(path, exif=exif)
                upright_hw = hw[::-1] if tag in (6, 8) else hw
                reads += [load_image(annotated_path(path, hw)), load_image(annotated_path(path, upright_hw)),
                          load_image(path)]
    return _sha(*reads)


def pixel_outputs(encoder) -> dict:
    from dense.heatmap import EXPERIMENTAL_METHODS, METHODS, filter_distractors, with_aligned
    from dense.preprocess import PixelConfig, choose_grid, patchify, to_pixels

    grids = [choose_grid(hw, p, n) for hw in SIZES for p in (8, 14, 16) for n in (1, 64, 256, 729, 1024)]
    rgb = _image()
    pixels = []
    for resample in (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC):
        cfg = PixelConfig(patch_size=8, max_patches=64, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28),
                          resample=int(resample))
        for grid in ((5, 8), (6, 9), (2, 3)):  # down- and up-sampling, another aspect ratio
            pixels.append(to_pixels(rgb, grid, cfg).numpy())
    patches = patchify(torch.from_numpy(pixels[0])[None], 8).numpy()  # [1, gh*gw, p*p*3]
    tokens = encoder.extract(rgb, layers=(0, -1)).tokens  # [gh, gw, 2 * D]
    aligned = {m: _sample(with_aligned(encoder, rgb, m).aligned, 6) for m in [*METHODS, *EXPERIMENTAL_METHODS]}
    # the distractor filter of the "+filter" methods, on tokens with planted outliers (the image above has none)
    i, j, d = np.meshgrid(np.arange(6), np.arange(7), np.arange(16), indexing="ij")
    x = torch.from_numpy(np.cos(0.3 * i + 0.7 * j + 0.11 * d * (1 + i % 2))).float()  # [gh, gw, D]
    x[2, 3] *= 9.0  # a norm outlier
    x[4, 1] = torch.from_numpy(np.cos(3.1 * np.arange(16))).float()  # unlike its neighbours (the isolation cue)
    filtered = [filter_distractors(x, cues=cues) for cues in (("norm",), ("norm", "isolation"))]
    return {"choose_grid": _sha(np.asarray(grids, np.int64)), "annotated": annotated_reads(),
            "to_pixels": _sha(*pixels), "patchify": _sha(patches),
            "tokens": _sample(tokens, 8), "aligned": aligned,
            "filter": [v for f, _, mask in filtered for v in (*_sample(f[2, 3], 2), *_sample(f[4, 1], 2),
                                                               *mask.nonzero().reshape(-1).tolist())]}


def text_outputs(encoder) -> dict:
    from dense.text import TEXT_RULES as RULE_NAMES
    from dense.text import canonicalize, clear_cache, embed_texts, tokenize

    ids = tokenize(encoder, list(STRINGS))  # [T, L]
    clear_cache(encoder)
    old = os.environ.get("DENSE_TEXT_CACHE")
    os.environ["DENSE_TEXT_CACHE"] = "0"  # computed now, never read from a cache written under other rules
    try:
        emb = embed_texts(encoder, ["red circle", "blue star on the left"], templates=TEMPLATES)  # [2, E]
    finally:
        os.environ.pop("DENSE_TEXT_CACHE") if old is None else os.environ.__setitem__("DENSE_TEXT_CACHE", old)
    canonical = "\n".join(canonicalize(t, rule) for rule in RULE_NAMES for t in STRINGS + AWKWARD)
    return {"token_ids": _sha(ids.numpy().astype(np.int64)), "embeddings": _sample(emb, 8),
            "canonical": hashlib.sha256(canonical.encode()).hexdigest()[:24]}


def _compare(name: str, got, want, constant: str, module: str) -> None:
    bump = (f"dense's {name} changed: if on purpose, bump {module}.{constant} and record the new version's reference "
            f"outputs (python tests/test_rules_version.py prints them)")
    if isinstance(want, str):
        assert got == want, f"{bump}; got {got}, the reference of this version is {want}"
    else:
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=bump)


def test_pixel_and_token_rules_match_their_version(v2):
    from dense.features import RULES_VERSION

    assert RULES_VERSION in PIXEL_RULES, (f"no reference outputs for RULES_VERSION {RULES_VERSION}: add what "
                                          f"`python tests/test_rules_version.py` prints")
    want = PIXEL_RULES[RULES_VERSION]
    got = pixel_outputs(v2)
    for name in ("choose_grid", "to_pixels", "patchify", "tokens", "filter", *(["annotated"] if "annotated" in want
                                                                              else [])):
        _compare(name, got[name], want[name], "RULES_VERSION", "dense.features")
    assert set(got["aligned"]) == set(want["aligned"]), "the heatmap methods changed: bump RULES_VERSION"
    for method, values in want["aligned"].items():
        _compare(f"aligned tokens of {method!r}", got["aligned"][method], values, "RULES_VERSION", "dense.features")


def test_text_rules_match_their_version(v2):
    from dense.text import TEXT_RULES_VERSION

    assert TEXT_RULES_VERSION in TEXT_RULES, (f"no reference outputs for TEXT_RULES_VERSION {TEXT_RULES_VERSION}: add "
                                              f"what `python tests/test_rules_version.py` prints")
    want = TEXT_RULES[TEXT_RULES_VERSION]
    got = text_outputs(v2)
    for name in ("token_ids", "embeddings", "canonical"):
        _compare(name, got[name], want[name], "TEXT_RULES_VERSION", "dense.text")


def test_versions_are_in_every_key(v2, tmp_path, monkeypatch):
    """The constants reach the keys: the encoder spec (so the feature cache's folder and every FeatureMap) and the text
    cache's folder; a FeatureMap made under another RULES_VERSION is refused by its own encoder."""
    from dataclasses import replace

    from dense import heatmap, text
    from dense.cache import FeatureCache
    from dense.errors import MismatchError
    from dense.features import RULES_VERSION

    assert v2.spec()["rules"] == RULES_VERSION
    fmap = v2.extract(_image())
    assert fmap.encoder_spec["rules"] == RULES_VERSION
    monkeypatch.setenv("DENSE_TEXT_CACHE", "1")
    assert text.disk_cache_dir(v2).parent.name == f"v{text.TEXT_RULES_VERSION}"
    older = replace(fmap, encoder_spec={**fmap.encoder_spec, "rules": RULES_VERSION - 1})
    with pytest.raises(MismatchError, match=f"rules: {RULES_VERSION - 1}, not {RULES_VERSION}"):
        heatmap.patch_scores(v2, older, ["red circle"])
    cache = FeatureCache.for_encoder(tmp_path, v2)
    monkeypatch.setattr("dense.encoder.RULES_VERSION", RULES_VERSION + 1)  # a dense with the next rules
    assert FeatureCache.for_encoder(tmp_path, v2).dir != cache.dir


def _format(outputs: dict) -> str:
    """``outputs`` as the entry to paste into PIXEL_RULES / TEXT_RULES."""
    lines = ["{"]
    for k, v in outputs.items():
        if isinstance(v, dict):
            lines += [f'        "{k}": {{', *(f'            "{m}": {vals},' for m, vals in v.items()), "        },"]
        else:
            lines.append(f'        "{k}": {v!r},'.replace("'", '"'))
    return "\n".join([*lines, "    },"])


if __name__ == "__main__":  # print the reference outputs of the current versions, to record after a bump
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import dense
    from dense.features import RULES_VERSION
    from dense.text import TEXT_RULES_VERSION

    enc = dense.load_encoder("shapes-tiny-v2", dtype="fp32")
    print(f"PIXEL_RULES: {RULES_VERSION}: {_format(pixel_outputs(enc))}")
    print(f"TEXT_RULES: {TEXT_RULES_VERSION}: {_format(text_outputs(enc))}")
