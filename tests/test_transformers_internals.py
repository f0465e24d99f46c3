"""The transformers internals dense calls directly, outside the models' public forward: each is checked by name, so a
transformers release that moves one fails here with one line saying what moved and who needs it, instead of deep in
an extraction. pyproject.toml pins ``transformers>=5.0,<6``, the major version these were written against."""

from __future__ import annotations

import inspect

import pytest
import torch

import dense


def _need(obj, path: str, who: str):
    """``obj.<path>`` (dotted), or a test failure naming the missing attribute and what uses it."""
    import transformers

    cur = obj
    for part in path.split("."):
        if not hasattr(cur, part):
            pytest.fail(f"transformers {transformers.__version__}: {type(obj).__name__} has no `{path}` (missing "
                        f"`{part}`), which {who} calls; dense is written against transformers 5.x (pyproject: <6)",
                        pytrace=False)
        cur = getattr(cur, part)
    return cur


def _accepts(fn, names: tuple[str, ...], who: str) -> None:
    import transformers

    params = inspect.signature(fn).parameters
    missing = [n for n in names if n not in params]
    if missing:
        pytest.fail(f"transformers {transformers.__version__}: {getattr(fn, '__qualname__', fn)} takes no "
                    f"{missing}, which {who} passes", pytrace=False)


def test_masking_utils_create_bidirectional_mask():
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError as e:
        pytest.fail(f"transformers.masking_utils.create_bidirectional_mask is gone ({e}); "
                    f"dense.batching.forward_tower masks padded keys with it", pytrace=False)
    _accepts(create_bidirectional_mask, ("config", "inputs_embeds", "attention_mask"), "dense.batching.forward_tower")


@pytest.mark.parametrize("spec", ["tiny-siglip", "tiny-siglip2"])
def test_vision_tower_parts_that_dense_calls(spec):
    enc = dense.random_encoder(spec, dtype="fp32")
    vision = enc.vision
    tower = "dense.batching.forward_tower"
    for path in ("config.patch_size", "config.num_hidden_layers", "embeddings", "encoder.layers", "post_layernorm"):
        _need(vision, path, tower)
    emb_args = ("pixel_values", "interpolate_pos_encoding") if enc.family == "siglip" else ("pixel_values",
                                                                                             "spatial_shapes")
    _accepts(type(vision.embeddings).forward, emb_args, "dense.batching.embed_patches")
    _accepts(type(vision.encoder.layers[0]).forward, ("hidden_states", "attention_mask"), tower)
    block = vision.encoder.layers[-1]
    for path in ("layer_norm1", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                 "self_attn.num_heads", "self_attn.scale"):
        _need(block, path, "dense.heatmap's clear-* methods")
    for path in ("head.probe", "head.attention.in_proj_weight", "head.attention.in_proj_bias",
                 "head.attention.out_proj", "head.layernorm", "head.mlp"):
        _need(vision, path, "dense.head (the MAP head's pieces)")
    assert isinstance(vision.head.attention, torch.nn.MultiheadAttention), \
        "dense.head reads the MAP head's q, k, v from nn.MultiheadAttention's in_proj_weight"


@pytest.mark.parametrize("spec", ["tiny-siglip", "tiny-siglip2"])
def test_the_parts_give_transformers_own_last_hidden_state(spec):
    """Calling the parts one by one (forward_tower) still equals the model's own forward."""
    from dense.preprocess import patchify

    enc = dense.random_encoder(spec, dtype="fp32")
    gh, gw, p = 3, 5, enc.patch_size
    px = torch.randn(3, gh * p, gw * p, generator=torch.Generator().manual_seed(0))
    ours = enc.forward_batch([px])[0]  # [gh*gw, D]
    with torch.no_grad():
        if enc.family == "siglip":
            out = enc.vision(pixel_values=px[None], interpolate_pos_encoding=True)
        else:
            out = enc.vision(pixel_values=patchify(px[None], p), spatial_shapes=torch.tensor([[gh, gw]]),
                             pixel_attention_mask=torch.ones(1, gh * gw, dtype=torch.int32))
    torch.testing.assert_close(ours, out.last_hidden_state[0], atol=1e-5, rtol=1e-5)
