"""The bundled ``shapes-tiny`` SigLIP loads offline through transformers and still knows its shapes (regression floors).

Held-out figures at training time are in ``dense/checkpoints/shapes-tiny/training.json`` (a record, not tested); the
floors here are set
well below them so that a numerically different CPU never fails the test, while a broken checkpoint or a broken
tokenizer (wrong padding side, no EOS, no lower-casing) does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dense.datasets as ds

FOLDER = Path(ds.__file__).parent / "checkpoints" / "shapes-tiny"
ZERO_SHOT_FLOOR = 0.85
POINTING_FLOOR = 0.35  # chance is about 0.1


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer, SiglipModel

    torch.manual_seed(0)
    model, info = SiglipModel.from_pretrained(FOLDER, local_files_only=True, output_loading_info=True)
    assert not any(info.values()), info  # strict: no missing, unexpected or mismatched keys
    tokenizer = AutoTokenizer.from_pretrained(FOLDER, local_files_only=True)
    return model.eval(), tokenizer


def _pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [B, H, W, 3] -> [B, 3, H, W], [-1, 1]


@torch.no_grad()
def _text(model, tokenizer, texts):
    ids = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    return F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)  # [T, D]


def test_folder_is_a_small_save_pretrained_folder():
    names = {p.name for p in FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training.json"} <= names
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 10 * 2**20
    cfg = json.loads((FOLDER / "config.json").read_text())
    assert cfg["model_type"] == "siglip"


def test_tokenizer_lowercases_appends_eos_pads_right(tiny):
    model, tokenizer = tiny
    assert tokenizer.is_fast
    length = model.config.text_config.max_position_embeddings
    ids = tokenizer(["The RED Circle", "the red circle"], padding="max_length", truncation=True)["input_ids"]
    assert ids[0] == ids[1] and len(ids[0]) == length
    assert ids[0][3] == tokenizer.eos_token_id and set(ids[0][4:]) == {tokenizer.pad_token_id}
    vocab = tokenizer.get_vocab()
    assert set(ds.REF_WORDS) <= set(vocab)  # every word of the referring expressions is a known token


@torch.no_grad()
def test_zero_shot_accuracy_floor(tiny):
    model, tokenizer = tiny
    rng = np.random.default_rng(2024)
    cats = np.repeat(np.arange(len(ds.CATEGORIES)), 6)  # 96 images, 6 per category
    images = np.empty((len(cats), 64, 64, 3), np.uint8)
    for i, c in enumerate(cats):
        cat = ds.CATEGORIES[c]
        objs = ds.sample_objects(rng, (64, 64), 1, radius_frac=(0.2, 0.34), categories=[(cat["colour"], cat["shape"])])
        images[i], _ = ds.render_scene(rng, (64, 64), objs)
    txt = _text(model, tokenizer, [c["name"] for c in ds.CATEGORIES])  # [16, D]
    img = F.normalize(model.get_image_features(pixel_values=_pixels(images)).pooler_output, dim=-1)  # [96, D]
    acc = float(((img @ txt.T).argmax(-1).numpy() == cats).mean())
    print(f"zero-shot {acc:.3f}")
    assert acc >= ZERO_SHOT_FLOOR, acc


@torch.no_grad()
@pytest.mark.slow
def test_map_value_pointing_beats_chance(tiny):
    """Patch tokens through the MAP head's value + out projections + MLP residual point at the named object."""
    model, tokenizer = tiny
    rng = np.random.default_rng(7)
    txt = _text(model, tokenizer, [c["name"] for c in ds.CATEGORIES])
    names = [c["name"] for c in ds.CATEGORIES]
    vm = model.vision_model
    D = vm.config.hidden_size
    hits = queries = 0
    for _ in range(40):
        objs = ds.sample_objects(rng, (64, 64), 3, radius_frac=(0.13, 0.24), min_visible=0.7, repeat_prob=0.0)
        image, masks = ds.render_scene(rng, (64, 64), objs)
        x = vm(pixel_values=_pixels(image[None])).last_hidden_state  # [1, 64, D]
        attn = vm.head.attention
        h = attn.out_proj(F.linear(x, attn.in_proj_weight[2 * D :], attn.in_proj_bias[2 * D :]))
        h = F.normalize(h + vm.head.mlp(vm.head.layernorm(h)), dim=-1)[0]  # [64, D]
        cats = [o.category for o in objs]
        for k, o in enumerate(objs):
            if cats.count(o.category) > 1:
                continue
            i, j = divmod(int((h @ txt[names.index(o.category)]).argmax()), 8)
            hits += bool(masks[k][i * 8 + 4, j * 8 + 4])  # patch centre inside the visible object
            queries += 1
    assert queries > 60
    print(f"pointing {hits / queries:.3f} over {queries}")
    assert hits / queries >= POINTING_FLOOR, hits / queries
