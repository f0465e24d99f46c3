"""dense.text and the global embeddings: hand-computed token ids, padding side, templates, cache, parity with
transformers' SiglipModel / Siglip2Model logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_rgb

import dense
from dense import openvocab, text
from dense.preprocess import patchify, to_pixels

PAD, EOS = 1, 2  # conftest's tokenizer: <unk>=0, <pad>=1, </s>=2


def _vocab(enc) -> dict[str, int]:
    return enc.text_parts().tokenizer.get_vocab()


def test_tokenize_matches_hand_computed_ids(tiny_encoder):
    v = _vocab(tiny_encoder)
    ids = text.tokenize(tiny_encoder, ["Red CIRCLE", "a photo of the big blue star on the left top"])  # L = 8
    assert ids.dtype == torch.long and tuple(ids.shape) == (2, 8)
    # lower-cased, no BOS, EOS right after the words, then pad on the RIGHT
    assert ids[0].tolist() == [v["red"], v["circle"], EOS, PAD, PAD, PAD, PAD, PAD]
    # too long: the first L - 1 words, EOS kept in the last position ("sticky" EOS)
    words = "a photo of the big blue star".split()
    assert ids[1].tolist() == [v[w] for w in words] + [EOS]


def test_embedding_equals_text_tower_on_hand_built_ids_and_left_padding_differs(tiny_encoder):
    v = _vocab(tiny_encoder)
    model = tiny_encoder.text_parts().model
    right = torch.tensor([[v["blue"], v["square"], EOS] + [PAD] * 5])  # [1, 8]
    left = torch.tensor([[PAD] * 5 + [v["blue"], v["square"], EOS]])  # [1, 8]
    with torch.no_grad():
        ref_right = F.normalize(model(input_ids=right).pooler_output, dim=-1)[0]
        ref_left = F.normalize(model(input_ids=left).pooler_output, dim=-1)[0]
    got = text.embed_texts(tiny_encoder, "Blue Square")[0]
    torch.testing.assert_close(got, ref_right, atol=1e-6, rtol=1e-5)
    assert abs(got.norm().item() - 1) < 1e-5
    # the text tower pools the LAST position: left padding gives another vector
    assert F.cosine_similarity(got, ref_left, dim=0) < 0.999


def test_templates_average_in_embedding_space(tiny_encoder):
    templates = ("{}", "a photo of a {}", "the {} on the left")
    parts = [text.embed_texts(tiny_encoder, t.format("red star"))[0] for t in templates]
    expected = F.normalize(torch.stack(parts).mean(0), dim=0)
    got = text.embed_texts(tiny_encoder, ["red star"], templates=templates)[0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        text.embed_texts(tiny_encoder, "red star", templates=["no slot"])


def test_cache_per_query_and_templates(tiny_encoder, monkeypatch):
    text.clear_cache(tiny_encoder)
    calls = []
    real = text.embed_token_ids
    monkeypatch.setattr(text, "embed_token_ids", lambda enc, ids, **kw: calls.append(ids.shape[0]) or real(enc, ids))
    a = text.embed_texts(tiny_encoder, ["red circle", "blue star", "red circle"])
    b = text.embed_texts(tiny_encoder, ["blue star", "red circle"])
    assert calls == [2]  # duplicates and repeated queries encoded once
    torch.testing.assert_close(a[0], a[2])
    torch.testing.assert_close(a[[1, 0]], b)
    text.embed_texts(tiny_encoder, ["red circle"], templates=("the {}",))  # other templates: a new key
    assert calls == [2, 1]


def test_random_encoder_without_tokenizer_says_so():
    enc = dense.random_encoder("tiny-siglip")
    with pytest.raises(ValueError, match="no tokenizer"):
        text.embed_texts(enc, "a cat")
    ids = torch.full((2, 8), 1, dtype=torch.long)
    ids[:, 0] = torch.tensor([5, 6])
    ids[:, 1] = 3
    emb = text.embed_token_ids(enc, ids)  # token ids work without a tokenizer
    assert tuple(emb.shape) == (2, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_classify_matches_transformers_logits(family, tiny_siglip_dir, tiny_siglip2_dir, tiny_encoder, tiny_encoder2):
    import transformers as tf

    folder, enc = (tiny_siglip_dir, tiny_encoder) if family == "siglip" else (tiny_siglip2_dir, tiny_encoder2)
    labels = ["red circle", "a photo of a blue star", "cat"]
    images = [random_rgb(64, 64, seed=1), random_rgb(64, 64, seed=2)]
    ids = text.tokenize(enc, labels)  # [T, 8]
    rgb, grid = enc.prepare(images[0])
    pixels = torch.stack([to_pixels(im, grid, enc.pixels) for im in images])  # [2, 3, 64, 64]
    with torch.no_grad():
        if family == "siglip":
            model = tf.SiglipModel.from_pretrained(folder).eval()
            out = model(input_ids=ids, pixel_values=pixels, interpolate_pos_encoding=True)
        else:
            model = tf.Siglip2Model.from_pretrained(folder).eval()
            gh, gw = grid
            out = model(input_ids=ids, pixel_values=patchify(pixels, enc.patch_size),
                        pixel_attention_mask=torch.ones(2, gh * gw, dtype=torch.int32),
                        spatial_shapes=torch.tensor([[gh, gw]] * 2))
    ref = torch.sigmoid(out.logits_per_image)  # [B, T]
    got = dense.classify(enc, images, labels, templates=None)  # [B, T]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(openvocab.embed_images(enc, images), out.image_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(text.embed_texts(enc, labels), out.text_embeds, atol=1e-5, rtol=1e-4)
    assert tuple(dense.classify(enc, images[0], labels, templates=None).shape) == (3,)


def test_retrieve_known_ranking():
    img = F.normalize(torch.eye(4)[:3] + 0.1, dim=-1)  # [3 images, E=4]
    txt = F.normalize(torch.eye(4)[[2, 0]], dim=-1)  # text 0 matches image 2, text 1 matches image 0
    scores, idx = openvocab.retrieve(img, txt, k=2)
    assert idx[:, 0].tolist() == [2, 0] and tuple(scores.shape) == (2, 2)
    _, idx_img = openvocab.retrieve(img, txt, k=1, by="image")
    assert idx_img[[0, 2], 0].tolist() == [1, 0]  # image 0 <-> text 1, image 2 <-> text 0 (image 1: a tie)
    assert np.all(np.diff(scores.numpy(), axis=1) <= 0)


def test_put_cache_seeds_embeddings(tiny_encoder, monkeypatch):
    text.clear_cache(tiny_encoder)
    e = torch.zeros(1, 32)
    e[0, 3] = 2.0
    text.put_cache(tiny_encoder, ["zebra"], e, templates=("a {}",))
    monkeypatch.setattr(text, "embed_token_ids", lambda *a, **k: pytest.fail("cache not used"))
    got = text.embed_texts(tiny_encoder, ["zebra"], templates=("a {}",))
    torch.testing.assert_close(got, F.normalize(e, dim=-1))
